from service._proto.triage.v1 import triage_pb2 as _triage_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATE_UNSPECIFIED: _ClassVar[ItemState]
    QUEUED: _ClassVar[ItemState]
    CLAIMED: _ClassVar[ItemState]
    COMPLETED: _ClassVar[ItemState]
    SUPERSEDED: _ClassVar[ItemState]

class ExplanationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLANATION_STATE_UNSPECIFIED: _ClassVar[ExplanationState]
    EXPLANATION_PENDING: _ClassVar[ExplanationState]
    EXPLANATION_DONE: _ClassVar[ExplanationState]
    EXPLANATION_FAILED: _ClassVar[ExplanationState]
ITEM_STATE_UNSPECIFIED: ItemState
QUEUED: ItemState
CLAIMED: ItemState
COMPLETED: ItemState
SUPERSEDED: ItemState
EXPLANATION_STATE_UNSPECIFIED: ExplanationState
EXPLANATION_PENDING: ExplanationState
EXPLANATION_DONE: ExplanationState
EXPLANATION_FAILED: ExplanationState

class FinalLabel(_message.Message):
    __slots__ = ("label", "present", "not_assessed")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    NOT_ASSESSED_FIELD_NUMBER: _ClassVar[int]
    label: str
    present: bool
    not_assessed: bool
    def __init__(self, label: _Optional[str] = ..., present: _Optional[bool] = ..., not_assessed: _Optional[bool] = ...) -> None: ...

class WorklistItem(_message.Message):
    __slots__ = ("item_id", "study_instance_uid", "worklist", "priority", "state", "result", "claimed_by", "lease_expires_unix", "created_unix", "updated_unix", "final_labels", "superseded_by", "needs_review", "review_reason", "latest_result")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    WORKLIST_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_BY_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABELS_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_BY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REVIEW_FIELD_NUMBER: _ClassVar[int]
    REVIEW_REASON_FIELD_NUMBER: _ClassVar[int]
    LATEST_RESULT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    study_instance_uid: str
    worklist: str
    priority: _triage_pb2.Priority
    state: ItemState
    result: _triage_pb2.TriageResult
    claimed_by: str
    lease_expires_unix: float
    created_unix: float
    updated_unix: float
    final_labels: _containers.RepeatedCompositeFieldContainer[FinalLabel]
    superseded_by: str
    needs_review: bool
    review_reason: str
    latest_result: _triage_pb2.TriageResult
    def __init__(self, item_id: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., worklist: _Optional[str] = ..., priority: _Optional[_Union[_triage_pb2.Priority, str]] = ..., state: _Optional[_Union[ItemState, str]] = ..., result: _Optional[_Union[_triage_pb2.TriageResult, _Mapping]] = ..., claimed_by: _Optional[str] = ..., lease_expires_unix: _Optional[float] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., final_labels: _Optional[_Iterable[_Union[FinalLabel, _Mapping]]] = ..., superseded_by: _Optional[str] = ..., needs_review: _Optional[bool] = ..., review_reason: _Optional[str] = ..., latest_result: _Optional[_Union[_triage_pb2.TriageResult, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("worklist", "states", "min_priority", "limit", "needs_review")
    WORKLIST_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEEDS_REVIEW_FIELD_NUMBER: _ClassVar[int]
    worklist: str
    states: _containers.RepeatedScalarFieldContainer[ItemState]
    min_priority: _triage_pb2.Priority
    limit: int
    needs_review: bool
    def __init__(self, worklist: _Optional[str] = ..., states: _Optional[_Iterable[_Union[ItemState, str]]] = ..., min_priority: _Optional[_Union[_triage_pb2.Priority, str]] = ..., limit: _Optional[int] = ..., needs_review: _Optional[bool] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WorklistItem]
    def __init__(self, items: _Optional[_Iterable[_Union[WorklistItem, _Mapping]]] = ...) -> None: ...

class ClaimRequest(_message.Message):
    __slots__ = ("item_id", "worklist", "reader", "lease_seconds")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    WORKLIST_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    worklist: str
    reader: str
    lease_seconds: float
    def __init__(self, item_id: _Optional[str] = ..., worklist: _Optional[str] = ..., reader: _Optional[str] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("item_id", "reader")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reader: str
    def __init__(self, item_id: _Optional[str] = ..., reader: _Optional[str] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("item_id", "reader", "final_labels")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABELS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reader: str
    final_labels: _containers.RepeatedCompositeFieldContainer[FinalLabel]
    def __init__(self, item_id: _Optional[str] = ..., reader: _Optional[str] = ..., final_labels: _Optional[_Iterable[_Union[FinalLabel, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("worklist", "after_seq")
    WORKLIST_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    worklist: str
    after_seq: int
    def __init__(self, worklist: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WorklistEvent(_message.Message):
    __slots__ = ("kind", "item", "seq", "at_unix", "actor", "from_state", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    item: WorklistItem
    seq: int
    at_unix: float
    actor: str
    from_state: ItemState
    detail: str
    def __init__(self, kind: _Optional[str] = ..., item: _Optional[_Union[WorklistItem, _Mapping]] = ..., seq: _Optional[int] = ..., at_unix: _Optional[float] = ..., actor: _Optional[str] = ..., from_state: _Optional[_Union[ItemState, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class AmendRequest(_message.Message):
    __slots__ = ("item_id", "reader", "final_labels", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    FINAL_LABELS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reader: str
    final_labels: _containers.RepeatedCompositeFieldContainer[FinalLabel]
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., reader: _Optional[str] = ..., final_labels: _Optional[_Iterable[_Union[FinalLabel, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("item_id",)
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    def __init__(self, item_id: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WorklistEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[WorklistEvent, _Mapping]]] = ...) -> None: ...

class GetExplanationRequest(_message.Message):
    __slots__ = ("item_id", "include_images")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    include_images: bool
    def __init__(self, item_id: _Optional[str] = ..., include_images: _Optional[bool] = ...) -> None: ...

class Counterfactual(_message.Message):
    __slots__ = ("label", "probability", "lambdas", "predictions", "lambda_reached", "prediction_drop", "stop_rule", "image_change", "attribution", "gif", "strip_png", "seconds")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LAMBDAS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_REACHED_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_DROP_FIELD_NUMBER: _ClassVar[int]
    STOP_RULE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    GIF_FIELD_NUMBER: _ClassVar[int]
    STRIP_PNG_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    lambdas: _containers.RepeatedScalarFieldContainer[float]
    predictions: _containers.RepeatedScalarFieldContainer[float]
    lambda_reached: float
    prediction_drop: float
    stop_rule: str
    image_change: float
    attribution: _triage_pb2.Heatmap
    gif: bytes
    strip_png: bytes
    seconds: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ..., lambdas: _Optional[_Iterable[float]] = ..., predictions: _Optional[_Iterable[float]] = ..., lambda_reached: _Optional[float] = ..., prediction_drop: _Optional[float] = ..., stop_rule: _Optional[str] = ..., image_change: _Optional[float] = ..., attribution: _Optional[_Union[_triage_pb2.Heatmap, _Mapping]] = ..., gif: _Optional[bytes] = ..., strip_png: _Optional[bytes] = ..., seconds: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("item_id", "study_instance_uid", "state", "model_version", "explainer", "method", "counterfactuals", "error", "attempts", "created_unix", "updated_unix", "sop_instance_uid")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPLAINER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COUNTERFACTUALS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    study_instance_uid: str
    state: ExplanationState
    model_version: str
    explainer: str
    method: str
    counterfactuals: _containers.RepeatedCompositeFieldContainer[Counterfactual]
    error: str
    attempts: int
    created_unix: float
    updated_unix: float
    sop_instance_uid: str
    def __init__(self, item_id: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., state: _Optional[_Union[ExplanationState, str]] = ..., model_version: _Optional[str] = ..., explainer: _Optional[str] = ..., method: _Optional[str] = ..., counterfactuals: _Optional[_Iterable[_Union[Counterfactual, _Mapping]]] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., sop_instance_uid: _Optional[str] = ...) -> None: ...
