"""The DICOM side of the service: the Storage SCP front door, the result writers, the sender."""
