"""Running a model bundle over a labelled set through the served path (no torch, no server).

Each DICOM file goes through the server's own pipeline (:class:`service.pipeline.TriagePipeline`):
:meth:`~service.pipeline.TriagePipeline.prepare` (in the server's decode workers: headers with
the ``decode.*`` budgets, the eligibility rules of ``triage serve``, the same reduced-resolution
decoding, the canonical preprocessing) and :meth:`~service.pipeline.TriagePipeline.infer`
(the micro-batcher on the model :func:`service.stages.inference.open_model` opens for the
serving configuration). The
result is what ``triage serve`` would return for each image, without gRPC; outputs do not depend
on how images are batched.

PNG/JPEG files of a CheXpert-style CSV cannot be sent to the service (it takes DICOM only);
they are read as display images and go through the same preprocessing and inference.

Files that the service would refuse (not decodable, not a frontal chest radiograph, too large)
are skipped and counted with their reason: the service never auto-reports them.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.bundle import Bundle
from service.config import DecodeConfig, EligibilityConfig, InferenceConfig, PolicyConfig
from service.core.errors import TriageError
from service.core.types import InferenceModel, ModelOutput
from service.pipeline import RequestOptions, RequestTrace, TriagePipeline
from service.stages.batcher import MicroBatcher
from service.stages.decode_pool import make_decoder
from service.stages.inference import open_model
from service.stages.policy import StaticPolicySource, policy_from_bundle
from triage_common.console import track
from triage_common.datasets import ImageTable
from triage_common.dicom_image import DicomDecodeError
from triage_common.preprocess import IMAGE_SUFFIXES, load_image_display
from triage_tools.calibration.calibrate import CalibrationSet

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
#: How long the batcher waits for more images after the first of a batch (loaders are busy).
_BATCH_WAIT_MS = 50.0


@dataclass(frozen=True)
class ServedOptions:
    """How the set is run: the serving configuration's decode/eligibility/inference, batching."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(providers=("CPU",)))
    batch_size: int = 16
    keep_cams: bool = False
    loaders: int = 0  # decoding threads; 0: one per CPU (at most 8)
    progress: bool = True
    #: Also run the bundle's evaluation graph (``evaluation.onnx``, when it has one) on the same
    #: preprocessed images: every baseline and both OOD guards land in ``CalibrationSet.extra``.
    evaluation: bool = False


@dataclass(frozen=True)
class ServedRun:
    """The calibration set (rows: images the service would triage) and what was skipped."""

    cal: CalibrationSet
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    providers: tuple[str, ...]
    heldout_sites: tuple[str, ...] = ()  # the labelled set's, from its dataset.json

    def skipped_reasons(self) -> dict[str, int]:
        """How many files were skipped for each reason."""
        return dict(Counter(reason for _, reason in self.skipped).most_common())


def _one(pipeline: TriagePipeline, path: Path) -> tuple[ModelOutput, F32] | str:
    """One file through prepare and infer (with the model input it was given); a refusal comes
    back as ``Type: reason``."""
    options = RequestOptions()
    trace = RequestTrace()
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = pipeline.preprocess(load_image_display(path))
        else:
            image = pipeline.prepare([path.read_bytes()], options, trace).image
    except (TriageError, DicomDecodeError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return pipeline.infer(image, options, trace), image


#: Largest difference allowed between the served graph's and the evaluation graph's outputs
#: on the same inputs (they are exported from the same modules; float32 rounding only).
EVALUATION_AGREEMENT = 1e-3


def evaluation_scores(
    bundle: Bundle, images: F32, batch_size: int = 32, progress: bool = False
) -> dict[str, npt.NDArray[np.float64]]:
    """The evaluation graph's outputs (all but the maps) for preprocessed ``images``; empty
    when the bundle has no evaluation graph."""
    section = bundle.manifest.get("evaluation") or {}
    if not section.get("file") or len(images) == 0:
        return {}
    from triage_common.onnx_runtime import CPU, OnnxRuntimeModel

    session = OnnxRuntimeModel(bundle.path / str(section["file"]), providers=[CPU])
    chunks: dict[str, list[npt.NDArray[np.float32]]] = {}
    starts: Iterable[int] = range(0, len(images), batch_size)
    if progress:
        starts = track(starts, math.ceil(len(images) / batch_size), "evaluation graph")
    for start in starts:
        for name, value in session.run(images[start : start + batch_size]).items():
            if name != "cams":
                chunks.setdefault(name, []).append(value)
    return {k: np.concatenate(v).astype(np.float64) for k, v in chunks.items()}


def error_head_scores(bundle: Bundle, probabilities: npt.NDArray[np.float64], cams: F32) -> F64:
    """The Grad-CAM error model's P(error) for given probabilities and maps (``error_head.onnx``:
    the permutation ablation feeds it other studies' maps)."""
    section = (bundle.manifest.get("evaluation") or {}).get("error_head") or {}
    if not section.get("file"):
        raise ValueError(f"bundle {bundle.path} has no error head (export it again)")
    from triage_common.onnx_runtime import CPU, OnnxRuntimeModel

    session = OnnxRuntimeModel(bundle.path / str(section["file"]), providers=[CPU]).session
    out = []
    for start in range(0, len(cams), 256):
        (p,) = session.run(
            None,
            {
                "probabilities": probabilities[start : start + 256].astype(np.float32),
                "cams": cams[start : start + 256].astype(np.float32),
            },
        )
        out.append(p)
    scores: F64 = np.concatenate(out).astype(np.float64)
    return scores


def run_served(
    bundle: Bundle,
    data: ImageTable,
    options: ServedOptions | None = None,
    model: InferenceModel | None = None,
) -> ServedRun:
    """Run every image of ``data``; returns outputs and truth for the images the service takes.

    The truth is ``data.labels``: the reported labels, NaN where unknown (read them with the
    ``ignore`` policy), never the phantom's noise-free ``data.true_labels``.
    """
    options = options or ServedOptions()
    if tuple(data.label_names) != bundle.labels:
        raise ValueError(
            f"the set's labels {data.label_names} are not the bundle's {bundle.labels}"
        )
    providers: tuple[str, ...] = ("injected",)
    if model is None:
        opened = open_model(bundle, options.inference, streams=1)
        model, providers = opened.model, tuple(opened.providers)
    loaders = options.loaders or min(8, os.cpu_count() or 1)
    batch = max(1, options.batch_size)
    batcher = MicroBatcher(
        model, max_batch=batch, max_wait_ms=_BATCH_WAIT_MS, capacity=max(64, 4 * loaders)
    )
    decoder = make_decoder(options.decode, options.eligibility, bundle.spec)
    pipeline = TriagePipeline(
        bundle, batcher, StaticPolicySource(policy_from_bundle(bundle, PolicyConfig())), decoder
    )
    decoder.start()
    batcher.start()
    try:
        with ThreadPoolExecutor(max_workers=loaders, thread_name_prefix="calib-load") as pool:
            results: Iterable[tuple[ModelOutput, F32] | str] = pool.map(
                lambda p: _one(pipeline, p), data.paths
            )
            if options.progress:
                results = track(results, len(data), f"served model on {len(data)} images")
            outputs = list(results)
    finally:
        batcher.stop(timeout=10.0)
        decoder.stop()
    kept = [i for i, out in enumerate(outputs) if not isinstance(out, str)]
    skipped = tuple(
        (str(data.paths[i]), _reason(out)) for i, out in enumerate(outputs) if isinstance(out, str)
    )
    rows = [out[0] for out in outputs if not isinstance(out, str)]
    extra: dict[str, npt.NDArray[np.float64]] = {}
    if options.evaluation:
        images = np.stack([out[1] for out in outputs if not isinstance(out, str)]) if rows else None
        if images is not None:
            extra = evaluation_scores(bundle, images, progress=options.progress)
        del images
    n_labels = len(bundle.labels)
    idx = np.asarray(kept, dtype=np.int64)
    probabilities = np.array([o.probabilities for o in rows], dtype=np.float64)
    cams = np.array([o.cams for o in rows], dtype=np.float32)
    cal = CalibrationSet(
        labels=bundle.labels,
        thresholds=np.asarray(bundle.thresholds, dtype=np.float64),
        probabilities=probabilities.reshape(len(rows), n_labels),
        p_error_raw=np.array([o.p_error for o in rows], dtype=np.float64),
        ood_score=np.array([o.ood_score for o in rows], dtype=np.float64),
        truth=data.labels[idx],
        sites=tuple(data.sites[i] for i in kept),
        source=str(data.description.get("path", data.root)),
        patient_ids=tuple(data.patient_ids[i] for i in kept),
        sop_uids=tuple(data.sop_uids[i] for i in kept),
        cams=cams.reshape(len(rows), n_labels, *bundle.cam_shape) if options.keep_cams else None,
        views=tuple(data.views[i] for i in kept),
        sexes=tuple(data.sexes[i] for i in kept) if data.sexes else (),
        ages=None if data.ages is None else data.ages[idx],
        portable=None if data.portable is None else data.portable[idx],
        extra={k: v for k, v in extra.items() if k != "probabilities"},
    )
    if "probabilities" in extra:
        gap = float(np.abs(extra["probabilities"] - cal.probabilities).max(initial=0.0))
        if gap > EVALUATION_AGREEMENT:
            raise ValueError(
                f"bundle {bundle.path}: the evaluation graph's probabilities differ from the "
                f"served graph's by {gap:.3g} on the same images"
            )
    return ServedRun(cal, skipped, providers, data.heldout_sites)


def _reason(message: str) -> str:
    """``Type: reason`` without the parenthesised, file-specific details (for counting)."""
    kind, _, detail = message.partition(": ")
    return f"{kind}: {detail.split(' (')[0][:120]}"
