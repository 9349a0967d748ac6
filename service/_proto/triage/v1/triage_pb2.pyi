from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    AUTO_REPORT: _ClassVar[Decision]
    DEFER: _ClassVar[Decision]

class DeferReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEFER_REASON_UNSPECIFIED: _ClassVar[DeferReason]
    P_ERROR_ABOVE_COST: _ClassVar[DeferReason]
    OUT_OF_DISTRIBUTION: _ClassVar[DeferReason]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    ROUTINE: _ClassVar[Priority]
    URGENT: _ClassVar[Priority]
    STAT: _ClassVar[Priority]
DECISION_UNSPECIFIED: Decision
AUTO_REPORT: Decision
DEFER: Decision
DEFER_REASON_UNSPECIFIED: DeferReason
P_ERROR_ABOVE_COST: DeferReason
OUT_OF_DISTRIBUTION: DeferReason
PRIORITY_UNSPECIFIED: Priority
ROUTINE: Priority
URGENT: Priority
STAT: Priority

class TriageRequest(_message.Message):
    __slots__ = ("instances", "defer_cost", "include_overlay", "calling_ae_title", "include_dicom_objects")
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    DEFER_COST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DICOM_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    instances: _containers.RepeatedScalarFieldContainer[bytes]
    defer_cost: float
    include_overlay: bool
    calling_ae_title: str
    include_dicom_objects: bool
    def __init__(self, instances: _Optional[_Iterable[bytes]] = ..., defer_cost: _Optional[float] = ..., include_overlay: _Optional[bool] = ..., calling_ae_title: _Optional[str] = ..., include_dicom_objects: _Optional[bool] = ...) -> None: ...

class StudyChunk(_message.Message):
    __slots__ = ("instance", "data", "defer_cost", "include_overlay", "calling_ae_title", "include_dicom_objects")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DEFER_COST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DICOM_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    instance: int
    data: bytes
    defer_cost: float
    include_overlay: bool
    calling_ae_title: str
    include_dicom_objects: bool
    def __init__(self, instance: _Optional[int] = ..., data: _Optional[bytes] = ..., defer_cost: _Optional[float] = ..., include_overlay: _Optional[bool] = ..., calling_ae_title: _Optional[str] = ..., include_dicom_objects: _Optional[bool] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("height", "width", "values")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("label", "probability", "present", "heatmap", "threshold", "p_error", "overlay_png")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    P_ERROR_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    present: bool
    heatmap: Heatmap
    threshold: float
    p_error: float
    overlay_png: bytes
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ..., present: _Optional[bool] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ..., threshold: _Optional[float] = ..., p_error: _Optional[float] = ..., overlay_png: _Optional[bytes] = ...) -> None: ...

class IgnoredInstance(_message.Message):
    __slots__ = ("sop_instance_uid", "reason")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    reason: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "queue_ms", "inference_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class DicomObject(_message.Message):
    __slots__ = ("kind", "sop_class_uid", "sop_instance_uid", "transfer_syntax_uid", "data")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes
    def __init__(self, kind: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., transfer_syntax_uid: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class TriageResult(_message.Message):
    __slots__ = ("study_instance_uid", "decision", "p_error", "defer_cost", "findings", "worklist", "model_version", "defer_reasons", "priority", "ood_score", "ood_threshold", "sop_instance_uid", "ignored_instances", "timings", "policy_version", "p_error_raw", "worklist_item_id", "replayed", "defer_cost_set_by", "caller", "site", "dicom_objects")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    P_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEFER_COST_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    WORKLIST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFER_REASONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    OOD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    IGNORED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    P_ERROR_RAW_FIELD_NUMBER: _ClassVar[int]
    WORKLIST_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    DEFER_COST_SET_BY_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    DICOM_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    decision: Decision
    p_error: float
    defer_cost: float
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    worklist: str
    model_version: str
    defer_reasons: _containers.RepeatedScalarFieldContainer[DeferReason]
    priority: Priority
    ood_score: float
    ood_threshold: float
    sop_instance_uid: str
    ignored_instances: _containers.RepeatedCompositeFieldContainer[IgnoredInstance]
    timings: StageTimings
    policy_version: str
    p_error_raw: float
    worklist_item_id: str
    replayed: bool
    defer_cost_set_by: str
    caller: str
    site: str
    dicom_objects: _containers.RepeatedCompositeFieldContainer[DicomObject]
    def __init__(self, study_instance_uid: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., p_error: _Optional[float] = ..., defer_cost: _Optional[float] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., worklist: _Optional[str] = ..., model_version: _Optional[str] = ..., defer_reasons: _Optional[_Iterable[_Union[DeferReason, str]]] = ..., priority: _Optional[_Union[Priority, str]] = ..., ood_score: _Optional[float] = ..., ood_threshold: _Optional[float] = ..., sop_instance_uid: _Optional[str] = ..., ignored_instances: _Optional[_Iterable[_Union[IgnoredInstance, _Mapping]]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., policy_version: _Optional[str] = ..., p_error_raw: _Optional[float] = ..., worklist_item_id: _Optional[str] = ..., replayed: _Optional[bool] = ..., defer_cost_set_by: _Optional[str] = ..., caller: _Optional[str] = ..., site: _Optional[str] = ..., dicom_objects: _Optional[_Iterable[_Union[DicomObject, _Mapping]]] = ...) -> None: ...
