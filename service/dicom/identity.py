"""Who made the result objects: the device, the algorithm and the series numbers they carry."""

from __future__ import annotations

from pydicom.uid import generate_uid

MANUFACTURER = "cxr-triage"
ALGORITHM_NAME = "cxr-triage DenseNet-121 with Grad-CAM error model"
#: The observer device of every SR (a fixed UID under the 2.25 root, the same on every replica).
DEVICE_UID = str(generate_uid(prefix=None, entropy_srcs=["cxr-triage observer device"]))
#: Series numbers of the objects (each kind in its own new series of the source study).
SR_SERIES_NUMBER = 9101
SC_SERIES_NUMBER = 9102
SEG_SERIES_NUMBER = 9103
KOS_SERIES_NUMBER = 9104
