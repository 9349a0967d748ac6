"""Defer-cost calibration maths (numpy only): recalibration, risk control, risk-coverage curves."""
