"""Import DenseNet weights saved by torchvision, CheXNet-style code or this project.

Accepted sources (a mapping, or a ``.pt``/``.pth``/``.pth.tar`` file read with
``torch.load(..., map_location="cpu", weights_only=True)``):

- a torchvision-layout state dict (``features.conv0.weight``, ..., ``classifier.weight``);
- the same with torchvision's old-style dense-layer names (``denselayer1.norm.1.weight``
  instead of ``denselayer1.norm1.weight``; renamed exactly as torchvision's
  ``_load_state_dict`` regex does);
- CheXNet-style training checkpoints: ``{"state_dict": {...}, ...}`` with keys such as
  ``module.densenet121.features.norm0.weight`` and a ``Sequential(Linear, Sigmoid)`` head
  (``module.densenet121.classifier.0.weight``);
- any of these with or without ``module.`` (DataParallel) prefixes.

Rules:

- ``fold_rgb=True`` lets a 3-channel ``features.conv0.weight`` load into a 1-channel model by
  summing over the input-channel axis. This is exact for inputs whose three channels are equal
  (a grayscale image replicated to RGB *after* any normalisation): ``sum_c w_c * g == (sum_c
  w_c) * g``. Without it a channel mismatch is an error.
- A label-count mismatch (or a source without a classifier) is refused by default
  (``head="refuse"``, a ``ValueError`` naming both counts); ``head="reinit"`` loads the backbone
  and re-initialises ``classifier`` for the model's labels, as a fresh model would.
- Missing or unexpected backbone keys and shape mismatches are errors naming the keys. Only
  ``num_batches_tracked`` buffers may be absent (old checkpoints lack them); the model keeps its
  own value for those.

Every refusal is a :class:`WeightsError` (a ``ValueError``). One that an option would lift carries
that option as a :class:`Remedy`: its message names the keyword argument, and
:meth:`WeightsError.for_cli` names the command-line flag instead (``--reinit-head``,
``--fold-rgb``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from models.densenet import DenseNet
from triage_common.logging import get_logger

__all__ = [
    "FOLD_RGB",
    "REINIT_HEAD",
    "LoadReport",
    "Remedy",
    "SourceFormat",
    "WeightsError",
    "load_weights",
    "normalise_state_dict",
]

SourceFormat = Literal["torchvision", "torchvision-legacy", "chexnet"]

_ANCHOR = "features.conv0.weight"
_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_WRAPPER_KEYS = ("state_dict", "model_state_dict")
_HEAD_KEYS = ("classifier.weight", "classifier.bias")
_SHOW = 5


@dataclass(frozen=True)
class Remedy:
    """The option that lifts a refusal: as a keyword argument and as a command-line flag."""

    keyword: str
    flag: str
    effect: str


REINIT_HEAD = Remedy(
    "head='reinit'", "--reinit-head", "keep the backbone and re-initialise the classifier"
)
FOLD_RGB = Remedy("fold_rgb=True", "--fold-rgb", "sum the RGB filters into one grayscale filter")


class WeightsError(ValueError):
    """Weights that cannot be imported as asked (one line; ``remedy`` names what would allow it)."""

    def __init__(self, problem: str, remedy: Remedy | None = None) -> None:
        self.problem = problem
        self.remedy = remedy
        super().__init__(self._text(remedy.keyword if remedy else ""))

    def _text(self, option: str) -> str:
        if self.remedy is None:
            return self.problem
        return f"{self.problem}; pass {option} to {self.remedy.effect}"

    def for_cli(self) -> str:
        """The message naming the command-line flag instead of the keyword argument."""
        return self._text(self.remedy.flag if self.remedy else "")


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did."""

    source_format: SourceFormat
    #: Model keys whose values came from the source (after renaming/folding).
    loaded: tuple[str, ...]
    #: Model keys re-initialised instead of loaded (the classifier with ``head="reinit"``).
    reinitialised: tuple[str, ...]
    #: Prefix removed from every source key, e.g. ``"module.densenet121."`` ("" if none).
    prefix_stripped: str
    #: Number of old-style dense-layer keys renamed (``norm.1`` -> ``norm1``).
    legacy_renamed: int
    #: Whether a 3-channel conv0 was folded into the 1-channel model.
    folded_rgb: bool
    #: Labels in the source head (``None`` if it had no classifier) and in the model.
    source_labels: int | None
    model_labels: int

    def __str__(self) -> str:
        """One line for logs: format, counts and what was re-initialised or folded."""
        parts = [f"{self.source_format}: {len(self.loaded)} tensors loaded"]
        if self.prefix_stripped:
            parts.append(f"prefix {self.prefix_stripped!r} stripped")
        if self.legacy_renamed:
            parts.append(f"{self.legacy_renamed} old-style names renamed")
        if self.folded_rgb:
            parts.append("RGB conv0 folded to 1 channel")
        if self.reinitialised:
            parts.append(
                f"classifier re-initialised ({self.source_labels} -> {self.model_labels} labels)"
            )
        return ", ".join(parts)


def _read_source(source: Path | str | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise WeightsError(f"{path} does not exist or is not a file")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise WeightsError(
                f"cannot read {path} as a weights-only torch checkpoint: {exc}"
            ) from exc
        if not isinstance(loaded, Mapping):
            raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state dict")
        return loaded
    return source


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    return obj


def _names(keys: Any) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOW])
    more = f" (and {len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return shown + more


@dataclass(frozen=True)
class _Normalised:
    state: dict[str, Tensor]
    source_format: SourceFormat
    prefix: str
    legacy_renamed: int


def _normalise(raw: Mapping[str, Any]) -> _Normalised:
    state = _unwrap(raw)
    anchors = [k for k in state if isinstance(k, str) and k.endswith(_ANCHOR)]
    if len(anchors) != 1:
        raise WeightsError(
            f"not a DenseNet state dict: expected exactly one key ending in {_ANCHOR!r}, "
            f"found {len(anchors)}; keys start with: {_names(list(state)[:_SHOW])}"
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    outside = [k for k in state if not str(k).startswith(prefix)]
    if outside:
        raise WeightsError(
            f"keys outside the common prefix {prefix!r}: {_names(map(str, outside))}"
        )
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise WeightsError(f"state dict entries that are not tensors: {_names(not_tensors)}")

    out: dict[str, Tensor] = {}
    renamed = 0
    for key, value in state.items():
        name = key[len(prefix) :]
        match = _LEGACY.match(name)
        if match:
            name = match.group(1) + match.group(2)
            renamed += 1
        if name in out:
            raise WeightsError(f"two source keys map to {name!r}")
        out[name] = value

    chexnet_head = False
    for suffix in ("weight", "bias"):
        old, new = f"classifier.0.{suffix}", f"classifier.{suffix}"
        if old in out:
            if new in out:
                raise WeightsError(f"source has both {old!r} and {new!r}")
            out[new] = out.pop(old)
            chexnet_head = True

    fmt: SourceFormat
    if chexnet_head or "densenet121." in prefix:
        fmt = "chexnet"
    elif renamed:
        fmt = "torchvision-legacy"
    else:
        fmt = "torchvision"
    return _Normalised(out, fmt, prefix, renamed)


def normalise_state_dict(source: Path | str | Mapping[str, Any]) -> dict[str, Tensor]:
    """The source's tensors under torchvision's current key names (no model needed)."""
    return _normalise(_read_source(source)).state


def load_weights(
    model: DenseNet,
    source: Path | str | Mapping[str, Any],
    *,
    fold_rgb: bool = False,
    head: Literal["refuse", "reinit"] = "refuse",
) -> LoadReport:
    """Load ``source`` into ``model`` in place, following the module docstring's rules."""
    if head not in ("refuse", "reinit"):
        raise WeightsError(f"head must be 'refuse' or 'reinit', got {head!r}")
    norm = _normalise(_read_source(source))
    src = norm.state
    target = model.state_dict()
    model_labels = model.config.num_labels

    backbone = {k for k in target if not k.startswith("classifier.")}
    optional = {k for k in backbone if k.endswith(".num_batches_tracked")}
    src_backbone = {k for k in src if not k.startswith("classifier.")}
    missing = backbone - src_backbone - optional
    unexpected = (src_backbone - backbone) | {
        k for k in src if k.startswith("classifier.") and k not in _HEAD_KEYS
    }
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing backbone keys: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
        raise WeightsError(
            f"source ({norm.source_format}) does not match the model architecture "
            f"({model.config}): " + "; ".join(parts)
        )

    new_state: dict[str, Tensor] = {}
    folded = False
    for key in sorted(src_backbone):
        value, want = src[key], target[key]
        if key == "features.conv0.weight" and value.shape != want.shape:
            value, folded = _fold_conv0(value, want, fold_rgb)
        if value.shape != want.shape:
            raise WeightsError(
                f"shape mismatch for {key}: source {tuple(value.shape)}, model {tuple(want.shape)}"
            )
        new_state[key] = value

    source_labels: int | None = None
    has_head = all(k in src for k in _HEAD_KEYS)
    if has_head:
        weight = src["classifier.weight"]
        if weight.ndim != 2 or weight.shape[1] != model.num_features:
            raise WeightsError(
                f"source classifier.weight has shape {tuple(weight.shape)}; the model's "
                f"head reads {model.num_features} features"
            )
        source_labels = int(weight.shape[0])
    elif any(k in src for k in _HEAD_KEYS):
        raise WeightsError(
            f"source has only part of the classifier: {_names(set(src) & set(_HEAD_KEYS))}"
        )

    reinit = not has_head or source_labels != model_labels
    if reinit and head == "refuse":
        found = "no classifier" if source_labels is None else f"{source_labels} labels"
        raise WeightsError(
            f"label-count mismatch: the source head has {found}, the model has "
            f"{model_labels} labels",
            REINIT_HEAD,
        )
    if not reinit:
        for key in _HEAD_KEYS:
            new_state[key] = src[key]

    merged = dict(target)
    merged.update(new_state)
    model.load_state_dict(merged, strict=True)
    reinitialised: tuple[str, ...] = ()
    if reinit:
        model.reset_classifier()
        reinitialised = _HEAD_KEYS

    report = LoadReport(
        source_format=norm.source_format,
        loaded=tuple(sorted(new_state)),
        reinitialised=reinitialised,
        prefix_stripped=norm.prefix,
        legacy_renamed=norm.legacy_renamed,
        folded_rgb=folded,
        source_labels=source_labels,
        model_labels=model_labels,
    )
    get_logger(__name__).info(
        "weights_loaded",
        source_format=report.source_format,
        loaded=len(report.loaded),
        reinitialised=list(report.reinitialised),
        folded_rgb=report.folded_rgb,
        prefix_stripped=report.prefix_stripped,
    )
    return report


def _fold_conv0(value: Tensor, want: Tensor, fold_rgb: bool) -> tuple[Tensor, bool]:
    src_ch, model_ch = value.shape[1] if value.ndim == 4 else -1, want.shape[1]
    if value.ndim == 4 and src_ch == 3 and model_ch == 1 and value.shape[0] == want.shape[0]:
        if not fold_rgb:
            raise WeightsError(
                "features.conv0.weight has 3 input channels but the model takes 1", FOLD_RGB
            )
        return value.to(want.dtype).sum(dim=1, keepdim=True), True
    if value.ndim == 4 and src_ch != model_ch:
        raise WeightsError(
            f"features.conv0.weight has {src_ch} input channels but the model takes "
            f"{model_ch}; only 3 channels can be folded into 1"
        )
    return value, False
