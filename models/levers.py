"""Do the Grad-CAM maps tell the error model anything the probabilities do not? (the levers)

``triage bench error-levers`` runs this. For a classifier run it takes the classifier's outputs
on the error-model split (clean plus augmented views, plus every image of ``extra`` sets the
classifier never saw: the "more error-model data" lever) and fits, on identical examples,
error predictors that differ only in what they read:

``P``      the probabilities features alone (probability, margin to the threshold, entropy);
``G``      P plus the maps themselves (each map's shape divided by its peak, its log peak);
``R``      P plus each map's share of mass in the lung fields, the heart, outside the body, on
           the burned-in text and on the collimator borders (the phantoms' ground-truth anatomy
           masks: an upper bound for any predicted anatomy);
``C``      P plus seed 003's concentration features (map entropy, top-5 % mass, log total mass);
``RC``, ``GRC`` the combinations;
``DUP``    the classifier's pooled features alone (an image-only direct predictor).

Each is the same MLP (one hidden layer, early stopping on the inner validation patients),
averaged over ``seeds`` fits. On a separate evaluation folder it reports the AUROC of
predicting a study error at all, the training and the held-out sites, the paired differences
against ``P`` and against the same predictor fed maps permuted among studies with the same
predicted findings and similar probabilities, with patient-level bootstrap 95 % intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.runs import ClassifierRun, load_classifier_run, read_split, split_indices
from models.training import batches, classifier_outputs, seed_everything
from triage_common.anatomy import has_anatomy, load_regions, mass_shares
from triage_common.console import track
from triage_common.datasets import ImageTable, load_dataset, preprocessed_images
from triage_common.evaluation import similar_probability_permutation
from triage_common.metrics import auroc, study_errors

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
VARIANTS: dict[str, tuple[str, ...]] = {
    "P": (),
    "G": ("maps",),
    "R": ("regions",),
    "C": ("concentration",),
    "RC": ("regions", "concentration"),
    "GRC": ("maps", "regions", "concentration"),
    "DUP": ("pooled_only",),
}
REGION_GRID = 32


@dataclass(frozen=True)
class Scored:
    """Classifier outputs on one set of images (``views`` stacked in the first axis)."""

    probs: F32  # (V, N, L)
    cams: F32  # (V, N, L, h, w)
    pooled: F32  # (V, N, C)
    regions: F32 | None  # (N, R, g, g), ground truth
    labels: F64
    patients: tuple[str, ...]
    sites: tuple[str, ...]
    heldout: npt.NDArray[np.bool_]


def score_table(
    run: ClassifierRun, table: ImageTable, views: int, gen: torch.Generator | None
) -> Scored:
    """The classifier's outputs on ``table``: the clean pass and ``views`` augmented ones."""
    cache = table.root / ".cache" if table.root.is_dir() else None
    x = preprocessed_images(table, run.spec, cache)
    passes = [classifier_outputs(run.model, x)]
    passes += [classifier_outputs(run.model, x, gen=gen) for _ in range(views)]
    regions = None
    if has_anatomy(table.root, table.sop_uids):
        h = int(passes[0][1].shape[-1])  # the grid: the multiple of the map side nearest 32
        regions = load_regions(table.root, table.sop_uids, h * max(1, REGION_GRID // h))
    return Scored(
        probs=np.stack([p[0] for p in passes]),
        cams=np.stack([p[1] for p in passes]),
        pooled=np.stack([p[2] for p in passes]),
        regions=regions,
        labels=table.labels,
        patients=table.patient_ids,
        sites=table.sites,
        heldout=np.asarray(table.heldout, dtype=bool),
    )


def features(
    s: Scored, view: int, kinds: tuple[str, ...], thresholds: F64, perm: npt.NDArray[np.int64]
) -> F32:
    """The feature matrix of one view; ``perm`` reorders the maps (identity: no permutation)."""
    if "pooled_only" in kinds:
        pooled: F32 = s.pooled[view].astype(np.float32)
        return pooled
    p = np.clip(s.probs[view].astype(np.float64), 1e-6, 1 - 1e-6)
    cams = s.cams[view][perm].astype(np.float64)
    ent = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    out = [p, p - thresholds[None, :], ent]
    if "maps" in kinds:
        peak = cams.max(axis=(2, 3))
        out += [(cams / (peak[:, :, None, None] + 1e-6)).reshape(len(p), -1), np.log(peak + 1e-6)]
    if "regions" in kinds:
        if s.regions is None:
            raise ValueError("the R variants need phantom anatomy masks (masks/anatomy/)")
        shares = np.nan_to_num(mass_shares(cams.astype(np.float32), s.regions), nan=0.0)
        out.append(shares.reshape(len(p), -1))
    if "concentration" in kinds:
        c = cams.reshape(len(p), cams.shape[1], -1)
        total = c.sum(axis=-1, keepdims=True)
        q = c / np.maximum(total, 1e-12)
        entropy = -(q * np.log(np.maximum(q, 1e-12))).sum(-1) / math.log(max(c.shape[-1], 2))
        k = max(1, round(0.05 * c.shape[-1]))
        out += [entropy, np.sort(q, axis=-1)[..., -k:].sum(-1), np.log(total[..., 0] + 1e-6)]
    return np.concatenate(out, axis=1).astype(np.float32)


def fit_mlp(
    x: F32, y: F64, x_val: F32, y_val: F64, seed: int, hidden: int = 32, epochs: int = 150
) -> nn.Module:
    """One hidden-layer MLP on standardised features, early-stopped on validation AUROC."""
    torch.manual_seed(seed)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 1))
    model = nn.Sequential(_Standardise(mean, scale), net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()[:, None]
    rate = float(y.mean())
    pos_weight = torch.tensor([(1 - rate) / max(rate, 1e-3)])
    gen = torch.Generator().manual_seed(seed)
    best, stale = -1.0, 0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(epochs):
        model.train()
        for idx in batches(len(yt), 128, gen):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(xt[idx]), yt[idx], pos_weight=pos_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        value = auroc(y_val, predict(model, x_val))
        if value > best:
            best, stale = value, 0
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= 25:
                break
    model.load_state_dict(state)
    return model.eval()


class _Standardise(nn.Module):
    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: F32, scale: F32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@torch.no_grad()
def predict(model: nn.Module, x: F32) -> F64:
    """Scores of ``model`` (logits) as float64."""
    out: F64 = model(torch.from_numpy(x))[:, 0].double().numpy()
    return out


def paired_difference(
    y: F64, a: F64, b: F64, patients: tuple[str, ...], rows: npt.NDArray[np.bool_],
    resamples: int, seed: int,
) -> dict[str, float]:  # fmt: skip
    """AUROC(a) - AUROC(b) on ``rows`` with a patient-level bootstrap 95 % interval."""
    index = np.flatnonzero(rows)
    members: dict[str, list[int]] = {}
    for i in index:
        members.setdefault(patients[i], []).append(int(i))
    groups = [np.asarray(v) for v in members.values()]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = np.concatenate([groups[k] for k in rng.integers(0, len(groups), len(groups))])
        draws.append(auroc(y[pick], a[pick]) - auroc(y[pick], b[pick]))
    finite = [d for d in draws if math.isfinite(d)]
    lo, hi = np.percentile(finite, [2.5, 97.5]) if finite else (math.nan, math.nan)
    value = auroc(y[index], a[index]) - auroc(y[index], b[index])
    return {"difference": value, "low": float(lo), "high": float(hi)}


@dataclass(frozen=True)
class LeverOptions:
    """What ``triage bench error-levers`` takes."""

    data: Path
    classifier: Path
    evaluation: Path
    extra: tuple[Path, ...] = ()
    views: int = 4
    seeds: int = 3
    permutations: int = 3
    resamples: int = 400
    variants: tuple[str, ...] = tuple(VARIANTS)
    seed: int = 0


def run_levers(options: LeverOptions) -> dict[str, Any]:
    """Fit every variant and measure it on the evaluation folder (see the module docstring)."""
    gen = seed_everything(options.seed)
    run = load_classifier_run(options.classifier)
    thresholds = run.thresholds
    split = read_split(options.classifier)
    table = load_dataset(options.data, run.labels)
    err_table = table.subset(split_indices(table, split, "error_model"))
    train_sets = [score_table(run, err_table, options.views, gen)]
    train_sets += [score_table(run, load_dataset(p, run.labels), 0, None) for p in options.extra]
    evaluation = score_table(run, load_dataset(options.evaluation, run.labels), 0, None)
    rng = np.random.default_rng(options.seed)
    first = train_sets[0]
    unique = sorted(set(first.patients))
    val_patients = set(rng.choice(unique, size=max(1, len(unique) // 5), replace=False))
    is_val = np.array([p in val_patients for p in first.patients])
    y_eval = study_errors(evaluation.labels, evaluation.probs[0], thresholds)
    perms = [
        similar_probability_permutation(
            evaluation.probs[0].astype(np.float64), thresholds, np.random.default_rng(r)
        )
        for r in range(options.permutations)
    ]
    identity = np.arange(len(y_eval), dtype=np.int64)
    held = evaluation.heldout
    scores: dict[str, F64] = {}
    permuted: dict[str, F64] = {}
    validation: dict[str, float] = {}
    for name in track(options.variants, len(options.variants), "lever variants"):
        kinds = VARIANTS[name]
        xs, ys = [], []
        for k, s in enumerate(train_sets):
            keep = ~is_val if k == 0 else np.ones(len(s.patients), dtype=bool)
            for v in range(s.probs.shape[0]):
                own = np.arange(len(s.patients), dtype=np.int64)
                xs.append(features(s, v, kinds, thresholds, own)[keep])
                ys.append(study_errors(s.labels, s.probs[v], thresholds)[keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        own_first = np.arange(len(first.patients), dtype=np.int64)
        x_val = features(first, 0, kinds, thresholds, own_first)[is_val]
        y_val = study_errors(first.labels, first.probs[0], thresholds)[is_val]
        models = [fit_mlp(x, y, x_val, y_val, seed) for seed in range(options.seeds)]
        validation[name] = float(np.mean([auroc(y_val, predict(m, x_val)) for m in models]))
        x_eval = features(evaluation, 0, kinds, thresholds, identity)
        scores[name] = np.mean([predict(m, x_eval) for m in models], axis=0)
        if any(k in kinds for k in ("maps", "regions", "concentration")):
            permuted[name] = np.mean(
                [
                    predict(m, features(evaluation, 0, kinds, thresholds, perm))
                    for perm in perms
                    for m in models
                ],
                axis=0,
            )
    groups = {"all": np.ones(len(y_eval), dtype=bool), "training sites": ~held}
    if held.any():
        groups["held-out site"] = held
    result: dict[str, Any] = {
        "classifier": str(options.classifier),
        "cam_shape": list(evaluation.cams.shape[-2:]),
        "training_examples": int(sum(s.probs.shape[0] * len(s.patients) for s in train_sets)),
        "error_split_images": len(first.patients),
        "extra": [str(p) for p in options.extra],
        "evaluation": str(options.evaluation),
        "evaluation_studies": len(y_eval),
        "error_rate": {g: float(y_eval[m].mean()) for g, m in groups.items()},
        "variants": {},
    }
    for name, score in scores.items():
        entry: dict[str, Any] = {
            "validation_auroc": validation[name],
            "auroc": {g: auroc(y_eval[m], score[m]) for g, m in groups.items()},
        }
        if name != "P":
            entry["minus_P"] = {
                g: paired_difference(
                    y_eval, score, scores["P"], evaluation.patients, m, options.resamples, 1
                )
                for g, m in groups.items()
            }
        if name in permuted:
            entry["minus_permuted"] = {
                g: paired_difference(
                    y_eval, score, permuted[name], evaluation.patients, m, options.resamples, 2
                )
                for g, m in groups.items()
            }
        result["variants"][name] = entry
    return result
