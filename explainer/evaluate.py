"""Latent Shift counterfactual attributions measured beside Grad-CAM (``triage
evaluate-explanations``).

On a labelled phantom folder (finding masks ``masks/<sop>.npz``, anatomy ``masks/anatomy/``) the
served classifier is run once over a bounded set of images (:func:`select_images`), which gives
its probabilities and its Grad-CAM maps (the DenseNet's in-graph analytic CAM, equal to autograd
Grad-CAM, the maps the service serves); :class:`explainer.core.Explainer` then makes the Latent
Shift counterfactual of every finding that needs one (:func:`plan_cases`): each finding
predicted present on a predicted-positive image, and one finding (cycling over the labels) on
each negative image (nothing predicted, nothing present). Measures:

* **localisation** (:func:`localisation`): the top-p% IoU of each map with the finding's mask,
  p the mask's area (:func:`triage_common.evaluation.cam_iou_matrix`, the measure ``triage
  evaluate`` reports for Grad-CAM), per finding, where the finding is truly present and
  predicted;
* **faithfulness** (:func:`faithfulness`): the prediction drop the counterfactual reached and
  its image change (``sum |x_bound - x0| / sum |x0|``), median and mean per finding, for the
  predicted-positive explanations and, beside them, the negative checks (a counterfactual of a
  finding that is absent and not predicted should change little);
* **shortcut reveal** (:func:`shortcut`): on PORTABLE films, per finding predicted present, the
  share of each map's mass on the burned-in PORTABLE label (``text_portable``), on all burned-in
  text (``text``: the label and the laterality marker), on the marker alone and inside the lung
  fields, with each region's share of the image's area, at the training sites and at the
  held-out site(s);
* **true vs false positives** (:func:`tp_fp`), an automatic proxy of the paper's reader study:
  does the share of the map's mass where the finding should be separate true positives (the
  finding predicted and present) from false positives (predicted, absent)? AUROC, TPs positive;
* **timing**: seconds per counterfactual (median, max).

Choices:

* truth is the phantom's noise-free ``<label>_true`` columns (the findings the masks were drawn
  from), or the reported labels where a table has none; NaN (unknown) is left out;
* "predicted" is probability >= the bundle's served threshold of the finding;
* mass shares are :func:`triage_common.anatomy.mass_shares` (as ``triage evaluate``): a coarse
  Grad-CAM map is spread evenly over the model's grid, regions are area-averaged to it;
* a false positive has no finding mask, so the TP/FP score is the share of mass inside the
  finding's *plausible region*, :data:`PLAUSIBLE_REGION` (data: the heart for Cardiomegaly and
  an enlarged cardiomediastinum, the lung fields for every other finding,
  :data:`DEFAULT_PLAUSIBLE_REGION`). The primary score (``plausible_region``) scores TPs and FPs
  on that same region, so the AUROC compares like with like. The variant ``mask_for_tp`` scores
  TPs on their own finding mask instead (FPs still on the region); a mask is usually smaller
  than the region, which lowers TPs' shares, so that AUROC is biased towards 0.5 or below and is
  reported for reference only. The ``all`` row pools the findings, each on its own region;
* a counterfactual that did not move (an all-zero attribution) gets no IoU and no mass shares
  (NaN), rather than scores from tie-breaking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch

from explainer.core import Explainer
from models.training import classifier_outputs
from triage_common.anatomy import ANATOMY_KEYS, area_resize, mass_shares, read_anatomy
from triage_common.atomic import atomic_write_bytes
from triage_common.datasets import ImageTable, preprocessed_images
from triage_common.evaluation import cam_iou_matrix
from triage_common.metrics import auroc

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

LATENT_SHIFT: Final = "latent_shift"
GRADCAM: Final = "gradcam"
METHODS: Final = (LATENT_SHIFT, GRADCAM)

#: The anatomy regions mass is measured in: name -> the anatomy masks (union) it covers.
REGION_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "text_portable": ("text_portable",),
    "text": ("text",),
    "text_marker": ("text_marker",),
    "lungs": ("lungs",),
    "heart": ("heart",),
}
#: The regions of the shortcut reveal, in report order.
SHORTCUT_REGIONS: Final = ("text_portable", "text", "text_marker", "lungs")
#: Where a finding's evidence plausibly lies (a region of :data:`REGION_KEYS`): the TP/FP score
#: of a false positive, which has no finding mask.
PLAUSIBLE_REGION: Final[dict[str, str]] = {
    "Cardiomegaly": "heart",
    "Enlarged Cardiomediastinum": "heart",
    "Edema": "lungs",
    "Pleural Effusion": "lungs",
    "Pneumothorax": "lungs",
    "Consolidation": "lungs",
    "Atelectasis": "lungs",
    "Pneumonia": "lungs",
    "Lung Opacity": "lungs",
    "Lung Lesion": "lungs",
}
#: The plausible region of a finding :data:`PLAUSIBLE_REGION` does not name.
DEFAULT_PLAUSIBLE_REGION: Final = "lungs"

#: Shares of ``--max-images`` reserved for portable predicted-positive films at the training
#: sites and at the held-out site(s), and for negative images; the rest are predicted positive.
SELECTION_SHARES: Final[dict[str, float]] = {
    "portable_training": 0.15,
    "portable_heldout": 0.15,
    "negative": 0.2,
}
#: At most this many candidate images per selected one are run through the classifier.
CANDIDATES_PER_IMAGE: Final = 4
#: Images per batch of the classifier pass.
BATCH: Final = 64


def plausible_region(label: str) -> str:
    """The region (of :data:`REGION_KEYS`) where ``label``'s evidence plausibly lies."""
    return PLAUSIBLE_REGION.get(label, DEFAULT_PLAUSIBLE_REGION)


# --- choosing the images ---------------------------------------------------------------------


def candidate_rows(rows: int, max_images: int, seed: int) -> I64:
    """The table rows the classifier is run over: all of them, or (sorted) a seeded random
    :data:`CANDIDATES_PER_IMAGE` x ``max_images`` of them."""
    limit = CANDIDATES_PER_IMAGE * max_images
    if rows <= limit:
        return np.arange(rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out: I64 = np.sort(rng.choice(rows, size=limit, replace=False)).astype(np.int64)
    return out


@dataclass(frozen=True)
class Selection:
    """The images chosen for explanation (rows of the table given to :func:`select_images`)."""

    index: I64  # sorted rows
    negative: Bool  # per chosen row: a negative check (nothing predicted, nothing present)
    counts: dict[str, int]


def select_images(
    predicted: Bool,
    truth: F64,
    portable: F64 | None,
    heldout: Bool,
    max_images: int,
    seed: int,
) -> Selection:
    """Up to ``max_images`` rows, chosen deterministically (``seed``).

    Predicted-positive images (some finding at or above its threshold) are favoured; the
    quotas of :data:`SELECTION_SHARES` go first to portable predicted-positive films at the
    training sites and at the held-out site(s) and to negatives (no finding predicted, every
    finding known absent); the rest are predicted-positive images, then negatives if those run
    out. Other images (a finding present but none predicted) are not chosen.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    rng = np.random.default_rng(seed)
    positive: Bool = np.asarray(np.asarray(predicted, dtype=np.bool_).any(axis=1))
    negative: Bool = ~positive & (np.asarray(truth) == 0).all(axis=1)
    films: Bool = np.zeros(len(positive), np.bool_) if portable is None else portable == 1
    heldout = np.asarray(heldout, dtype=np.bool_)
    pools = {
        "portable_training": positive & films & ~heldout,
        "portable_heldout": positive & films & heldout,
        "negative": negative,
    }
    taken: Bool = np.zeros(len(positive), dtype=np.bool_)

    def take(pool: Bool, quota: int) -> None:
        free = np.flatnonzero(pool & ~taken)
        taken[rng.permutation(free)[: max(0, quota)]] = True

    for name, pool in pools.items():
        take(pool, round(SELECTION_SHARES[name] * max_images))
    take(positive, max_images - int(taken.sum()))
    take(negative, max_images - int(taken.sum()))
    index = np.flatnonzero(taken).astype(np.int64)
    counts = {
        "images": len(index),
        "positive_images": int(positive[index].sum()),
        "negative_images": int(negative[index].sum()),
        "portable_training": int(pools["portable_training"][index].sum()),
        "portable_heldout": int(pools["portable_heldout"][index].sum()),
        "heldout_images": int(heldout[index].sum()),
    }
    return Selection(index=index, negative=negative[index], counts=counts)


@dataclass(frozen=True)
class Case:
    """One counterfactual to make: image ``image`` (a selected row), finding ``finding``."""

    image: int
    finding: int
    positive: bool  # a finding predicted present (False: the negative check)


def plan_cases(predicted: Bool, negative: Bool) -> list[Case]:
    """Every finding predicted present on each image, and on each negative image one finding,
    cycling over the labels in image order (so every finding gets negative checks)."""
    labels = predicted.shape[1]
    cases: list[Case] = []
    k = 0
    for i in range(len(predicted)):
        if negative[i]:
            cases.append(Case(i, k % labels, positive=False))
            k += 1
        else:
            cases.extend(Case(i, int(j), positive=True) for j in np.flatnonzero(predicted[i]))
    return cases


# --- running the models ----------------------------------------------------------------------


@torch.no_grad()
def classify(explainer: Explainer, images: F32) -> tuple[F64, F32]:
    """Probabilities (N, L) and Grad-CAM maps (N, L, h, w) of model inputs (N, 1, S, S) in the
    bundle's preprocessing (the classifier's, :func:`explainer.core.load_explainer` checks), in
    batches: the analytic in-graph Grad-CAM (:func:`models.training.classifier_outputs`)."""
    if not len(images):
        labels = len(explainer.labels)
        return np.zeros((0, labels)), np.zeros((0, labels, 1, 1), dtype=np.float32)
    probs, cams, _ = classifier_outputs(explainer.classifier.model, images, batch_size=BATCH)
    return probs.astype(np.float64), cams


@dataclass(frozen=True)
class Explained:
    """The counterfactuals of a list of :class:`Case` beside the Grad-CAM maps (K cases)."""

    image: I64  # (K,) selected row
    finding: I64  # (K,) label index
    positive: Bool  # (K,)
    attribution: F32  # (K, S, S) Latent Shift
    gradcam: F32  # (K, h, w)
    probability: F64  # (K,) the classifier on the image
    reconstruction_probability: F64  # (K,) on D(E(x)), where the counterfactual starts
    prediction_drop: F64
    image_change: F64
    seconds: F64
    stop_rules: tuple[str, ...]

    def maps(self, method: str) -> F32:
        """The (K, h, w) maps of ``method`` (:data:`METHODS`)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        return self.attribution if method == LATENT_SHIFT else self.gradcam


def explain_cases(
    explainer: Explainer,
    images: F32,
    cams: F32,
    cases: Sequence[Case],
    progress: Callable[[Sequence[Case]], Iterable[Case]] | None = None,
) -> Explained:
    """The Latent Shift counterfactual of every case (images (M, 1, S, S), Grad-CAM maps
    (M, L, h, w) of the same images), in order."""
    size = explainer.spec.size
    iterator = progress(cases) if progress is not None else cases
    found_all = [
        explainer.explain(images[c.image], [explainer.labels[c.finding]])[0] for c in iterator
    ]
    k = len(cases)
    h, w = cams.shape[2], cams.shape[3]

    def column(name: str) -> F64:
        return np.array([getattr(f, name) for f in found_all], dtype=np.float64)

    return Explained(
        image=np.array([c.image for c in cases], dtype=np.int64),
        finding=np.array([c.finding for c in cases], dtype=np.int64),
        positive=np.array([c.positive for c in cases], dtype=bool),
        attribution=(
            np.stack([f.attribution for f in found_all]).astype(np.float32)
            if k
            else np.zeros((0, size, size), dtype=np.float32)
        ),
        gradcam=(
            np.stack([cams[c.image, c.finding] for c in cases]).astype(np.float32)
            if k
            else np.zeros((0, h, w), dtype=np.float32)
        ),
        probability=column("probability"),
        reconstruction_probability=np.array(
            [f.predictions[0] for f in found_all], dtype=np.float64
        ),
        prediction_drop=column("prediction_drop"),
        image_change=column("image_change"),
        seconds=column("seconds"),
        stop_rules=tuple(str(f.stop_rule) for f in found_all),
    )


# --- masks and regions -----------------------------------------------------------------------


def load_named_regions(
    root: Path,
    sop_uids: Sequence[str],
    size: int,
    regions: Mapping[str, Sequence[str]] = REGION_KEYS,
) -> F32:
    """(N, R, size, size) soft masks of ``regions`` (name -> anatomy keys, united) of the images
    of a phantom folder, area-averaged to ``size``; ``FileNotFoundError`` names the first image
    without an anatomy file."""
    unknown = sorted({k for keys in regions.values() for k in keys} - set(ANATOMY_KEYS))
    if unknown:
        raise ValueError(f"unknown anatomy key(s) {unknown}: {ANATOMY_KEYS}")
    out = np.empty((len(sop_uids), len(regions), size, size), dtype=np.float32)
    for i, sop in enumerate(sop_uids):
        masks = read_anatomy(root, sop)
        for r, keys in enumerate(regions.values()):
            union = np.logical_or.reduce([masks[k].astype(bool) for k in keys])
            out[i, r] = area_resize(union, size)
    return out


def finding_mask(masks_dir: Path, sop_uid: str, label: str, size: int) -> F32 | None:
    """The finding's phantom mask area-averaged to ``size`` (None: no file, no mask, empty)."""
    path = masks_dir / f"{sop_uid}.npz"
    if not sop_uid or not path.is_file():
        return None
    with np.load(path) as masks:
        if label not in masks.files:
            return None
        mask = masks[label]
    if mask.ndim != 2 or not mask.any():
        return None
    return area_resize(mask, size)


def shares_in(maps: F32, regions: F32) -> F64:
    """(K, R) share of each map's mass (K, h, w) inside each of its regions (K, R, s, s),
    ``s`` a multiple of ``h``: :func:`triage_common.anatomy.mass_shares` (NaN: no mass)."""
    if len(maps) == 0:
        return np.zeros((0, regions.shape[1]))
    out: F64 = mass_shares(maps[:, None].astype(np.float32), regions)[:, 0, :]
    return out


# --- summaries -------------------------------------------------------------------------------


def describe(values: npt.ArrayLike) -> dict[str, float]:
    """``n``, ``mean`` and ``median`` of the finite values (NaN statistics for none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0, "mean": math.nan, "median": math.nan}
    return {"n": len(v), "mean": float(v.mean()), "median": float(np.median(v))}


def _groups(finding: I64, labels: Sequence[str], keep: Bool) -> dict[str, Bool]:
    """``all`` and one group per finding (of the cases ``keep`` selects)."""
    out = {"all": keep}
    for j, label in enumerate(labels):
        out[label] = keep & (finding == j)
    return out


def case_iou(
    explained: Explained,
    labels: Sequence[str],
    sop_uids: Sequence[str],
    masks_dir: Path,
    truth: F64,
) -> dict[str, F64]:
    """Per method, (K,) top-p% IoU of each case's map with its finding's mask, for the cases
    predicted and truly present (NaN elsewhere, and for a map with no mass)."""
    present = explained.positive & (truth[explained.image, explained.finding] == 1)
    iou = {m: np.full(len(present), np.nan) for m in METHODS}
    for j, label in enumerate(labels):
        rows = np.flatnonzero(present & (explained.finding == j))
        sops = [sop_uids[explained.image[k]] for k in rows]
        for method in METHODS:
            maps = explained.maps(method)[rows]
            scored = cam_iou_matrix(maps[:, None], (label,), sops, masks_dir)[:, 0]
            # a map with no mass (a counterfactual that did not move) ranks no pixel first
            scored[~(maps.sum(axis=(1, 2)) > 0)] = np.nan
            iou[method][rows] = scored
    return iou


def pick_examples(
    explained: Explained,
    iou: F64,
    regions: F32,
    portable: F64 | None,
    region_names: Sequence[str] = tuple(REGION_KEYS),
) -> dict[str, int]:
    """Two cases to show: ``true_positive``, the true positive whose Latent Shift attribution
    overlaps its finding's mask best (IoU), and ``shortcut``, the portable film predicted
    positive whose attribution puts the largest share of its mass on the burned-in PORTABLE
    label (either may be missing)."""
    out: dict[str, int] = {}
    if np.isfinite(iou).any():
        out["true_positive"] = int(np.nanargmax(iou))
    if portable is not None and len(explained.image):
        films = explained.positive & (portable[explained.image] == 1)
        label_box = regions[explained.image][:, [region_names.index("text_portable")]]
        share = shares_in(explained.attribution, label_box)[:, 0]
        share[~films] = np.nan
        if np.isfinite(share).any():
            out["shortcut"] = int(np.nanargmax(share))
    return out


def localisation(
    explained: Explained,
    labels: Sequence[str],
    sop_uids: Sequence[str],
    masks_dir: Path,
    truth: F64,
) -> dict[str, dict[str, Any]]:
    """Per finding (and ``all``), over the cases predicted and truly present: the top-p% IoU of
    each method's map with the finding's mask (per method: ``n`` maps scored, mean, median; a
    map with no mass is not scored) and, over the ``n`` cases both scored, the share where Latent
    Shift's IoU is higher."""
    present = explained.positive & (truth[explained.image, explained.finding] == 1)
    iou = case_iou(explained, labels, sop_uids, masks_dir, truth)
    out: dict[str, dict[str, Any]] = {}
    for name, keep in _groups(explained.finding, labels, present).items():
        both = keep & np.isfinite(iou[LATENT_SHIFT]) & np.isfinite(iou[GRADCAM])
        higher = iou[LATENT_SHIFT][both] > iou[GRADCAM][both]
        out[name] = {
            "n": int(both.sum()),
            **{m: describe(iou[m][keep]) for m in METHODS},
            "latent_shift_higher": float(higher.mean()) if both.any() else math.nan,
        }
    return out


def faithfulness(explained: Explained, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``positive`` (findings predicted present) and ``negative`` (the negative checks): per
    finding (and ``all``) the probability on the image and on its reconstruction ``D(E(x))``
    (where the counterfactual starts: the drop is measured from it), the prediction drop reached
    and the image change (n, mean, median) and how often each stop rule ended the search."""
    rules = np.asarray(explained.stop_rules, dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for role, keep in (("positive", explained.positive), ("negative", ~explained.positive)):
        part: dict[str, Any] = {}
        for name, rows in _groups(explained.finding, labels, keep).items():
            names, counts = np.unique(rules[rows], return_counts=True)
            part[name] = {
                "n": int(rows.sum()),
                "probability": describe(explained.probability[rows]),
                "reconstruction_probability": describe(explained.reconstruction_probability[rows]),
                "prediction_drop": describe(explained.prediction_drop[rows]),
                "image_change": describe(explained.image_change[rows]),
                "stop_rules": {str(r): int(c) for r, c in zip(names, counts, strict=True)},
            }
        out[role] = part
    return out


def shortcut(
    explained: Explained,
    regions: F32,
    portable: F64 | None,
    heldout: Bool,
    region_names: Sequence[str] = tuple(REGION_KEYS),
) -> dict[str, dict[str, Any]]:
    """On portable films, per finding predicted present, at the training sites and at the
    held-out site(s): mean share of each method's mass in each of :data:`SHORTCUT_REGIONS`, and
    the regions' mean share of the image area (``regions``: (M, R, s, s) of the selected
    images, in the order of ``region_names``)."""
    index = [region_names.index(r) for r in SHORTCUT_REGIONS]
    per_case = regions[explained.image][:, index] if len(explained.image) else regions[:0, index]
    films = (
        np.zeros(len(explained.image), dtype=bool)
        if portable is None
        else portable[explained.image] == 1
    )
    share = {m: shares_in(explained.maps(m), per_case) for m in METHODS}
    area = per_case.mean(axis=(2, 3)) if len(per_case) else np.zeros((0, len(index)))
    out: dict[str, dict[str, Any]] = {}
    for name, site in (("training_sites", ~heldout), ("heldout_sites", heldout)):
        keep = explained.positive & films & site[explained.image]
        out[name] = {
            "n": int(keep.sum()),
            "images": len(set(explained.image[keep].tolist())),
            "area": _mean_by_region(area[keep]),
            **{m: _mean_by_region(share[m][keep]) for m in METHODS},
        }
    return out


def _mean_by_region(values: F64) -> dict[str, float]:
    """Mean over rows of (K, R) shares, per region of :data:`SHORTCUT_REGIONS` (NaN: none)."""
    out = {}
    for r, name in enumerate(SHORTCUT_REGIONS):
        column = values[:, r][np.isfinite(values[:, r])] if len(values) else values[:0, 0]
        out[name] = float(column.mean()) if len(column) else math.nan
    return out


def separation(score: F64, is_tp: Bool) -> dict[str, float]:
    """AUROC of ``score`` separating TPs (positive) from FPs, and each group's mean score."""
    ok = np.isfinite(score)
    s, tp = score[ok], is_tp[ok]
    return {
        "auroc": auroc(tp.astype(np.float64), s),
        "tp_mean": float(s[tp].mean()) if tp.any() else math.nan,
        "fp_mean": float(s[~tp].mean()) if (~tp).any() else math.nan,
    }


def tp_fp(
    explained: Explained,
    labels: Sequence[str],
    sop_uids: Sequence[str],
    masks_dir: Path,
    regions: F32,
    truth: F64,
    region_names: Sequence[str] = tuple(REGION_KEYS),
) -> dict[str, Any]:
    """True vs false positives by where the map's mass is (see the module docstring): per
    finding (and ``all``) ``n_tp``, ``n_fp`` and per method :func:`separation`, scored on the
    plausible region (``plausible_region``) and on a TP's own mask (``mask_for_tp``)."""
    known = truth[explained.image, explained.finding]
    judged = explained.positive & np.isfinite(known)
    is_tp = known == 1
    k = len(explained.image)
    size = regions.shape[-1]
    plausible = np.zeros((k, 1, size, size), dtype=np.float32)
    own = np.zeros((k, 1, size, size), dtype=np.float32)
    for c in range(k):
        label = labels[explained.finding[c]]
        plausible[c, 0] = regions[explained.image[c], region_names.index(plausible_region(label))]
        mask = finding_mask(masks_dir, sop_uids[explained.image[c]], label, size)
        own[c, 0] = mask if (mask is not None and is_tp[c]) else plausible[c, 0]
    scores = {
        "plausible_region": {m: shares_in(explained.maps(m), plausible)[:, 0] for m in METHODS},
        "mask_for_tp": {m: shares_in(explained.maps(m), own)[:, 0] for m in METHODS},
    }
    out: dict[str, Any] = {"regions": {label: plausible_region(label) for label in labels}}
    for variant, by_method in scores.items():
        part: dict[str, Any] = {}
        for name, keep in _groups(explained.finding, labels, judged).items():
            part[name] = {
                "n_tp": int((keep & is_tp).sum()),
                "n_fp": int((keep & ~is_tp).sum()),
                **{m: separation(by_method[m][keep], is_tp[keep]) for m in METHODS},
            }
        out[variant] = part
    return out


def timing(explained: Explained) -> dict[str, float]:
    """Counterfactuals made, median and max seconds per counterfactual, and their total."""
    s = explained.seconds
    return {
        "counterfactuals": len(s),
        "median_seconds": float(np.median(s)) if len(s) else math.nan,
        "max_seconds": float(s.max()) if len(s) else math.nan,
        "total_seconds": float(s.sum()),
    }


# --- the whole evaluation --------------------------------------------------------------------


def truth_of(table: ImageTable) -> tuple[F64, str]:
    """The truth (N, L) the measures use and its name: a phantom's noise-free ``true_labels``,
    else the reported ``labels`` (NaN: unknown)."""
    if table.true_labels is not None:
        return table.true_labels, "true_labels"
    return table.labels, "labels"


def evaluate_explanations(
    explainer: Explainer,
    table: ImageTable,
    thresholds: F64,
    *,
    max_images: int = 100,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[Sequence[Case]], Iterable[Case]] | None = None,
    examples_dir: Path | None = None,
) -> dict[str, Any]:
    """Choose the images, explain them, and measure (the report's sections, timing without the
    wall time). ``table`` is a phantom folder's table with the classifier's labels; finding
    masks and anatomy are read from ``table.root / "masks"``."""
    labels = explainer.labels
    candidates = table.subset(candidate_rows(len(table), max_images, seed))
    images = preprocessed_images(candidates, explainer.spec, cache_dir)
    probabilities, cams = classify(explainer, images)
    predicted = probabilities >= np.asarray(thresholds, dtype=np.float64)[None, :]
    truth, truth_name = truth_of(candidates)
    selection = select_images(
        predicted, truth, candidates.portable, candidates.heldout, max_images, seed
    )
    chosen = candidates.subset(selection.index)
    truth = truth[selection.index]
    cases = plan_cases(predicted[selection.index], selection.negative)
    explained = explain_cases(
        explainer, images[selection.index], cams[selection.index], cases, progress
    )
    masks_dir = table.root / "masks"
    regions = load_named_regions(table.root, chosen.sop_uids, explainer.spec.size)
    examples: dict[str, Any] = {}
    if examples_dir is not None:
        iou = case_iou(explained, labels, chosen.sop_uids, masks_dir, truth)[LATENT_SHIFT]
        for name, k in pick_examples(explained, iou, regions, chosen.portable).items():
            examples[name] = write_example(
                explainer, images[selection.index][explained.image[k]],
                labels[explained.finding[k]], examples_dir / name,
            )  # fmt: skip
            label_box = regions[explained.image[k], [tuple(REGION_KEYS).index("text_portable")]]
            share = shares_in(explained.attribution[k : k + 1], label_box[None])[0, 0]
            examples[name].update(
                latent_shift_portable_label_share=float(share),
                portable_label_area_share=float(label_box.mean()),
                site=chosen.sites[explained.image[k]],
                heldout_site=bool(chosen.heldout[explained.image[k]]),
                portable=bool(chosen.portable is not None and chosen.portable[explained.image[k]]),
                latent_shift_iou=float(iou[k]),
            )
    return {
        "labels": list(labels),
        "thresholds": dict(zip(labels, map(float, thresholds), strict=True)),
        "truth": truth_name,
        "selection": {
            "max_images": max_images,
            "seed": seed,
            "candidates": len(candidates),
            **selection.counts,
            "counterfactuals": len(cases),
            "negative_checks": int((~explained.positive).sum()),
        },
        "localisation": localisation(explained, labels, chosen.sop_uids, masks_dir, truth),
        "faithfulness": faithfulness(explained, labels),
        "shortcut": shortcut(explained, regions, chosen.portable, chosen.heldout),
        "tp_fp": tp_fp(explained, labels, chosen.sop_uids, masks_dir, regions, truth),
        "timing": timing(explained),
        "examples": examples,
    }


def write_example(explainer: Explainer, image: F32, label: str, stem: Path) -> dict[str, Any]:
    """Explain one image's finding again and write ``stem.gif`` and ``stem.png`` (the strip)."""
    from explainer.render import gif_bytes, strip_png

    (found,) = explainer.explain(image, [label])
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(stem.with_suffix(".gif"), gif_bytes(found))
    atomic_write_bytes(stem.with_suffix(".png"), strip_png(found))
    return {
        "finding": label,
        "probability": found.probability,
        "prediction_drop": found.prediction_drop,
        "lambda_reached": found.lambda_reached,
        "stop_rule": found.stop_rule.value,
        "gif": str(stem.with_suffix(".gif")),
        "strip": str(stem.with_suffix(".png")),
    }
