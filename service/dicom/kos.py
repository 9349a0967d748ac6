"""A Key Object Selection flagging the source image of a deferred or critical study (highdicom).

Only written for a study that was deferred to a radiologist or placed at STAT priority (a
critical finding): document title DCM 113000 "Of Interest", the observer the triage device, a
description naming why, and the source image as the one key object. A PACS that shows key images
then shows the radiograph the AI wants read first.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes

from service.core.enums import Decision
from service.core.types import StudyResult
from service.dicom import codes
from service.dicom.identity import ALGORITHM_NAME, DEVICE_UID, KOS_SERIES_NUMBER, MANUFACTURER


def wants_key_object(result: StudyResult, priority: str) -> bool:
    """True for a deferred study or one placed at STAT priority."""
    return result.decision == Decision.DEFER or priority == "STAT"


def build_key_object(result: StudyResult, source: Dataset, priority: str) -> Dataset:
    """The Key Object Selection of ``result`` (call only when :func:`wants_key_object`)."""
    why = []
    if result.decision == Decision.DEFER:
        reasons = ", ".join(r.name for r in result.defer_reasons) or "deferred"
        why.append(f"deferred to a radiologist ({reasons})")
    if priority == "STAT":
        why.append("STAT priority")
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=ALGORITHM_NAME, manufacturer_name=MANUFACTURER
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.KEY_OBJECTS_OF_INTEREST,
        referenced_objects=[source],
        observer_device_context=observer,
        description=f"AI triage: {'; '.join(why)}"[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[source],
        content=content,
        series_instance_uid=hd.UID(),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    kos.SeriesDescription = "AI triage key image"
    return kos
