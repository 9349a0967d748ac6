"""Serve-time code: DICOM decoding and validation, inference, defer policy, routing, gRPC, CLI.

Nothing under this package imports torch or the ``models`` package at serve time.
"""
