"""The ``triage orthanc ...`` commands and ``triage bench orthanc``."""
