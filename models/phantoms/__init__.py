"""Synthetic chest-radiograph phantoms: anatomy, findings, sites and confounders, DICOM output."""
