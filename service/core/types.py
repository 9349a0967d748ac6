"""The values the stages hand each other, in the order data flows (a leaf module).

decode (headers)  -> :class:`InstanceHeader` per instance
eligibility       -> :class:`Selection` (the chosen header, :class:`Ignored` others)
decode (pixels)   -> :class:`DecodedImage`, preprocessed: :class:`DecodedStudy`
inference         -> :class:`ModelOutput`
policy            -> :class:`PolicyDecision`
conclude          -> :class:`StudyResult` with :class:`FindingResult` per label, routed

Plain dataclasses of numpy arrays, strings, numbers and the enums of :mod:`service.core.enums`:
nothing here imports gRPC, a database or any stage, so every stage and both front doors can
share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from service.core.enums import Decision, DeferReason, Priority

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
#: Bytes of a Part-10 file as a front door holds them (a bytes object or a view on an arena).
BytesLike = bytes | bytearray | memoryview


@dataclass(frozen=True)
class InstanceHeader:
    """The header facts of one instance (no pixel data, no patient data)."""

    index: int
    sop_instance_uid: str
    study_instance_uid: str
    modality: str
    body_part: str
    view_position: str
    photometric: str
    rows: int
    columns: int
    samples_per_pixel: int
    frames: int
    instance_number: int | None
    has_pixel_data: bool
    transfer_syntax: str
    institution: str = ""  # InstitutionName: the site, for routing rules (not patient data)
    #: Where the header parse stopped (the PixelData element, when there is one) and the parsed
    #: header itself: the decode stage reuses both for the chosen instance, parsing it once.
    pixel_offset: int = field(default=0, compare=False, repr=False)
    dataset: Dataset | None = field(default=None, compare=False, repr=False)
    #: A deflated file's data set inflated (the bytes ``pixel_offset`` refers to), else None.
    inflated: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def pixels(self) -> int:
        """Decoded samples the header declares (Rows x Columns x SamplesPerPixel x frames)."""
        return self.rows * self.columns * self.samples_per_pixel * self.frames


@dataclass(frozen=True)
class Ignored:
    """An instance that was not read, and why."""

    index: int
    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """The chosen frontal image and what was ignored."""

    chosen: InstanceHeader
    ignored: tuple[Ignored, ...]
    notes: tuple[str, ...]  # e.g. "BodyPartExamined missing (allowed)"


@dataclass(frozen=True)
class DecodedImage:
    """The display image of the chosen instance, in [0, 1] (bright = attenuating)."""

    display: F32
    reduce_level: int  # JPEG 2000 resolution level used (0: full resolution or not J2K)
    box: int = 1  # k of the k x k block averaging of stored values (1: none)


@dataclass(frozen=True)
class DecodedStudy:
    """A study made ready for the model: its UID, what was chosen and the model input."""

    study_instance_uid: str
    selection: Selection  # headers without their parsed data sets (they stay where parsed)
    reduce_level: int  # JPEG 2000 resolution level used (0: full resolution or not J2K)
    box: int  # k of the k x k block averaging (1: none)
    image: F32  # (1, S, S): the canonical preprocessing's output
    display: F32 | None  # the display image, when the request asked for overlays
    #: CPU milliseconds of each step where it ran: header, decode, preprocess.
    cpu_ms: dict[str, float] = field(default_factory=dict)
    wall_ms: float = 0.0  # from the first header to the model input


class InferenceModel(Protocol):
    """What runs the bundle's graph: ``run(batch [B, 1, S, S] float32) -> {output: array}``."""

    def run(self, batch: F32) -> dict[str, F32]: ...


@dataclass(frozen=True)
class ModelOutput:
    """The model's outputs for one image, with its queueing and inference times."""

    probabilities: F64  # (L,)
    cams: F32  # (L, h, w)
    ood_score: float
    p_error: float
    p_error_labels: F64  # (L,)
    queue_ms: float
    inference_ms: float
    batch_size: int
    inference_cpu_ms: float = 0.0  # the batch's CPU in the batcher thread, shared per image


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome of the policy stage."""

    decision: Decision
    reasons: tuple[DeferReason, ...]
    defer_cost: float
    p_error: float  # after recalibration
    p_error_raw: float
    ood_score: float
    ood_threshold: float
    policy_version: str


@dataclass(frozen=True)
class FindingResult:
    """One label of the result."""

    label: str
    probability: float
    threshold: float
    present: bool
    p_error: float
    cam: F32  # (h, w), CAM resolution
    overlay_png: bytes = b""


@dataclass(frozen=True)
class Timings:
    """Per-stage wall times in milliseconds."""

    decode_ms: float
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float


@dataclass(frozen=True)
class StudyResult:
    """The triage result of one study (plain values; a front door converts it to its wire)."""

    study_instance_uid: str
    sop_instance_uid: str
    decision: Decision
    defer_reasons: tuple[DeferReason, ...]
    p_error: float
    p_error_raw: float
    defer_cost: float
    ood_score: float
    ood_threshold: float
    policy_version: str
    findings: tuple[FindingResult, ...]
    model_version: str
    ignored: tuple[Ignored, ...]
    timings: Timings
    worklist: str
    priority: Priority
    calling_ae_title: str = ""  # for routing rules
    modality: str = ""  # of the image read
    site: str = ""  # InstitutionName of the image read (routing rules)
    model_input: F32 | None = field(default=None, repr=False, compare=False)  # (1, S, S)
