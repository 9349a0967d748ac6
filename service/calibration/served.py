"""Running a model bundle over a labelled set through the served path (no torch, no server).

Each DICOM file goes through the serving stages themselves: ``decode.read_header`` (with the
``decode.max_pixels`` limit), ``eligibility.select_frontal`` (the same rules as ``triage
serve``), ``decode.decode_instance`` (same reduced-resolution decoding), the canonical
``triage_common.preprocess.preprocess``, then ONNX Runtime on the bundle's ``triage.onnx`` in
batches. The result is what ``triage serve`` would return for each image, without gRPC or the
micro-batcher (which only groups images; outputs do not depend on the batch).

PNG/JPEG files of a CheXpert-style CSV cannot be sent to the service (it takes DICOM only);
they are read as display images and go through the same preprocessing.

Files that the service would refuse (not decodable, not a frontal chest radiograph, too large)
are skipped and counted with their reason: the service never auto-reports them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.batcher import InferenceModel
from service.bundle import Bundle
from service.calibration.calibrate import CalibrationSet
from service.calibration.labelled import LabelledSet
from service.config import DecodeConfig, EligibilityConfig
from service.decode import DecodeOptions, decode_instance, read_header
from service.eligibility import select_frontal
from service.errors import TriageError
from service.runtime import ProviderSettings
from triage_common.console import track
from triage_common.dicom_image import DicomDecodeError
from triage_common.preprocess import IMAGE_SUFFIXES, load_image_display, preprocess

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ServedOptions:
    """How the set is run: the serving configuration's decode/eligibility rules, batching."""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eligibility: EligibilityConfig = field(default_factory=EligibilityConfig)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    batch_size: int = 16
    keep_cams: bool = False
    loaders: int = 0  # decoding threads; 0: one per CPU (at most 8)
    intra_op_threads: int = 0
    progress: bool = True
    provider_settings: ProviderSettings | None = None  # the server's GPU provider options


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


def decode_options(bundle: Bundle, decode: DecodeConfig) -> DecodeOptions:
    """The decode stage's options exactly as ``TriagePipeline`` builds them."""
    return DecodeOptions.from_config(decode, bundle.spec.size)


def model_input(
    path: Path, bundle: Bundle, options: DecodeOptions, eligibility: EligibilityConfig
) -> F32:
    """One file through the serving stages to the model input ``(1, S, S)``.

    Raises :class:`service.errors.TriageError` (or ``DicomDecodeError``/``OSError``) when the
    service would refuse the file.
    """
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return preprocess(load_image_display(path), bundle.spec)
    data = path.read_bytes()
    header = read_header(data, 0, options.max_pixels)
    chosen = select_frontal([header], eligibility).chosen
    decoded = decode_instance(data, chosen, options)
    return preprocess(decoded.display, bundle.spec)


def open_model(bundle: Bundle, options: ServedOptions) -> InferenceModel:
    """An ONNX Runtime session on the bundle's model (the providers that load, CPU last)."""
    from service.runtime import OnnxRuntimeModel

    return OnnxRuntimeModel(
        bundle.model_file,
        providers=options.providers,
        intra_op_threads=options.intra_op_threads,
        allow_spinning=False,
        settings=options.provider_settings,
    )


def _load(
    path: Path, bundle: Bundle, options: DecodeOptions, eligibility: EligibilityConfig
) -> F32 | str:
    try:
        return model_input(path, bundle, options, eligibility)
    except (TriageError, DicomDecodeError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def run_served(
    bundle: Bundle,
    data: LabelledSet,
    options: ServedOptions | None = None,
    model: InferenceModel | None = None,
) -> ServedRun:
    """Run every image of ``data``; returns outputs and truth for the images the service takes."""
    options = options or ServedOptions()
    if tuple(data.label_names) != bundle.labels:
        raise ValueError(
            f"the set's labels {data.label_names} are not the bundle's {bundle.labels}"
        )
    model = model or open_model(bundle, options)
    providers = tuple(getattr(model, "providers", ["injected"]))
    dec = decode_options(bundle, options.decode)
    loaders = options.loaders or min(8, os.cpu_count() or 1)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    outputs: dict[str, list[npt.NDArray[Any]]] = {k: [] for k in ("p", "cam", "ood", "err")}
    batches = _chunks(len(data), max(1, options.batch_size))
    iterator: Iterable[range] = batches
    if options.progress:
        iterator = track(batches, len(batches), f"served model on {len(data)} images")
    with ThreadPoolExecutor(max_workers=loaders, thread_name_prefix="calib-load") as pool:
        for chunk in iterator:
            loaded = list(
                pool.map(lambda i: _load(data.paths[i], bundle, dec, options.eligibility), chunk)
            )
            images = [x for x in loaded if not isinstance(x, str)]
            for i, x in zip(chunk, loaded, strict=True):
                if isinstance(x, str):
                    skipped.append((str(data.paths[i]), _reason(x)))
                else:
                    kept.append(i)
            if not images:
                continue
            out = model.run(np.stack(images).astype(np.float32))
            outputs["p"].append(np.asarray(out["probabilities"], dtype=np.float64))
            outputs["ood"].append(np.asarray(out["ood_score"], dtype=np.float64).reshape(-1))
            outputs["err"].append(np.asarray(out["p_error"], dtype=np.float64).reshape(-1))
            if options.keep_cams:
                outputs["cam"].append(np.asarray(out["cams"], dtype=np.float32))
    n_labels = len(bundle.labels)

    def cat(key: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        parts = outputs[key]
        return np.concatenate(parts) if parts else np.empty(shape)

    idx = np.asarray(kept, dtype=np.int64)
    cams = cat("cam", (0, n_labels, *bundle.cam_shape)).astype(np.float32)
    cal = CalibrationSet(
        labels=bundle.labels,
        thresholds=np.asarray(bundle.thresholds, dtype=np.float64),
        probabilities=cat("p", (0, n_labels)),
        p_error_raw=cat("err", (0,)),
        ood_score=cat("ood", (0,)),
        truth=data.truth[idx],
        sites=tuple(data.sites[i] for i in kept),
        source=str(data.description.get("path", data.root)),
        patient_ids=tuple(data.patient_ids[i] for i in kept),
        sop_uids=tuple(data.sop_uids[i] for i in kept),
        cams=cams if options.keep_cams else None,
    )
    return ServedRun(cal, tuple(skipped), providers, data.heldout_sites)


def _reason(message: str) -> str:
    """``Type: reason`` without the parenthesised, file-specific details (for counting)."""
    kind, _, detail = message.partition(": ")
    return f"{kind}: {detail.split(' (')[0][:120]}"
