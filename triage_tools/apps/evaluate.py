"""``triage evaluate``: the defer policy and every baseline, on the evaluation set itself.

Runs the bundle over a labelled set through the served path (ONNX Runtime, no torch), and the
bundle's evaluation graph (``evaluation.onnx``) over the same preprocessed images, so every
baseline is scored on the same studies: the Grad-CAM error model, the probabilities-only
network of the same head, the image-only direct (DUP-style) predictor, softmax response,
entropy, CAM concentration, random and the oracle. The permutation ablation is built in: the
Grad-CAM error model is fed maps permuted among studies with the same predicted findings and
similar probabilities (``--permutations`` draws, their P(error) averaged), through
``error_head.onnx``. Writes to ``--out``:

* ``report.json``: every metric of :mod:`triage_tools.calibration.evaluate` for all studies,
  each site (and the training vs held-out pools), each view, sex and age band, with
  patient-level bootstrap 95 % intervals (paired differences included);
* ``risk_coverage_<group>.png`` (one curve per method) and ``per_site_*.png`` (bars per group);
* ``summary.md``: the same as Markdown tables.

A bundle exported before the evaluation graph existed gets the served model and the
label-free baselines only (the summary says which baselines are missing and why).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle
from triage_common.console import print_table, track, write_json
from triage_common.evaluation import PERMUTATION_BLOCK, similar_probability_permutation
from triage_common.policy_format import Recalibration
from triage_tools.calibration import evaluate as ev
from triage_tools.calibration.calibrate import CalibrationSet
from triage_tools.calibration.cli_common import (
    DATA_HELP,
    add_served_arguments,
    data_summary,
    drop_unscored,
    jsonable,
    open_bundle,
    run_labelled,
)

METHOD_TITLES = {
    "error_model": "served error model",
    "gradcam": "Grad-CAM error model",
    "gradcam_permuted": "Grad-CAM, maps permuted",
    "probs_only": "probabilities-only network",
    "direct": "image-only (DUP-style)",
    "softmax_response": "softmax response",
    "entropy": "entropy",
    "cam_entropy": "CAM entropy",
    "cam_top5": "CAM top-5 % mass",
    "random": "random",
    "oracle": "oracle",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage evaluate``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--data", type=Path, required=True, help=DATA_HELP)
    parser.add_argument("--out", type=Path, required=True, help="report folder (created)")
    parser.add_argument(
        "--policy",
        type=Path,
        help="calibrated policy file (`triage calibrate`); default: the bundle's defer cost, "
        "no recalibration, the bundle's OOD threshold",
    )
    parser.add_argument(
        "--resamples", type=int, default=200, help="patient-level bootstrap resamples (200)"
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=5,
        help="draws of the similar-probability map permutation, averaged (5; 0: no ablation)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and permutation seed (0)")
    add_served_arguments(parser)


def _policy(args: argparse.Namespace, bundle: Bundle) -> ev.PolicyView:
    single = (bundle.manifest.get("ood") or {}).get("single_layer_threshold")
    single_threshold = math.nan if single is None else float(single)
    if args.policy is None:
        return ev.PolicyView(
            bundle.defer_cost,
            bundle.ood_threshold,
            Recalibration("identity"),
            single_layer_threshold=single_threshold,
        )
    from triage_common.policy_format import read_policy

    policy = read_policy(args.policy, bundle.bundle_id)
    target = policy.selection.get("target_risk")
    return ev.PolicyView(
        policy.defer_cost,
        policy.ood_threshold,
        policy.recalibration,
        version=policy.policy_id,
        source=str(args.policy),
        single_layer_threshold=single_threshold,
        target_risk=math.nan if target is None else float(target),
    )


def permuted_scores(
    bundle: Bundle, cal: CalibrationSet, draws: int, seed: int
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The Grad-CAM error model's P(error) averaged over ``draws`` similar-probability
    permutations of the maps (:func:`triage_common.evaluation.similar_probability_permutation`)."""
    from triage_tools.calibration.served import error_head_scores

    assert cal.cams is not None
    rng = np.random.default_rng(seed)
    total = np.zeros(len(cal))
    for _ in range(draws):
        perm = similar_probability_permutation(cal.probabilities, cal.thresholds, rng)
        total += error_head_scores(bundle, cal.probabilities, cal.cams[perm])
    averaged: np.ndarray[Any, np.dtype[np.float64]] = total / draws
    return averaged


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(metrics: dict[str, Any], key: str, value: Any, digits: int = 3) -> str:
    lo, hi = ev.interval(metrics, key)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return _f(value, digits)
    return f"{_f(value, digits)} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _methods(groups: dict[str, Any]) -> list[str]:
    first = next(iter(groups.values()))
    return [m for m in (*ev.METHOD_ORDER, "random", "oracle") if m in first["error_detection"]]


def _pairs(groups: dict[str, Any]) -> list[tuple[str, str]]:
    first = next(iter(groups.values()))["error_detection"]
    return [(a, b) for a, b in ev.PAIRS if a in first and b in first]


def _diff(g: dict[str, Any], a: str, b: str, metric: str, digits: int = 3) -> str:
    d = g["error_detection"]
    va, vb = d[a][metric], d[b][metric]
    value = va - vb if va is not None and vb is not None else math.nan  # None: NaN via JSON
    return _ci(g, f"{a}-{b}.{metric}", value, digits)


def _outside(share: float | None) -> float:
    """The share outside a region from the share inside (None: NaN through JSON)."""
    return math.nan if share is None else 1.0 - share


def summary_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a report (``summary.md``)."""
    groups: dict[str, Any] = report["groups"]
    labels: list[str] = report["labels"]
    pol = report["policy"]
    methods = _methods(groups)
    scored = [m for m in methods if m not in ("random", "oracle")]
    parts = [
        "# Defer-policy evaluation",
        "",
        f"Bundle `{report['bundle_id']}` (served error model: {report['served_error_model']}), "
        f"data `{report['data']['source']}` "
        f"({report['data']['studies']} studies, {report['data']['patients']} patients). "
        f"Policy: {pol['source']} (cost {pol['defer_cost']:.3f}, recalibration "
        f"{pol['recalibration']}, OOD threshold {_f(pol['ood_threshold'], 3)}"
        + (f", id `{pol['version']}`" if pol["version"] else "")
        + "). A study is an error when any finding's thresholded prediction differs from the "
        "reported label. Brackets: patient-level bootstrap 95 % intervals "
        f"({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}); "
        f"the map permutation: {report['permutation']['draws']} draws among studies with the "
        "same predicted findings and similar probabilities (blocks of "
        f"{report['permutation']['block']}).",
        "",
        "## Failure detection: AUROC for predicting a study error",
        "",
        _md_table(
            ["group", "studies", "error rate", *(METHOD_TITLES[m] for m in scored)],
            [
                [
                    name,
                    str(g["studies"]),
                    _f(g["study_error_rate"]),
                    *(_ci(g, f"{m}.auroc", g["error_detection"][m]["auroc"]) for m in scored),
                ]
                for name, g in groups.items()
            ],
        ),
    ]
    pairs = _pairs(groups)
    if pairs:
        parts += [
            "",
            "## Paired differences of error-detection AUROC (a − b)",
            "",
            _md_table(
                ["group", *(f"{METHOD_TITLES[a]} − {METHOD_TITLES[b]}" for a, b in pairs)],
                [
                    [name, *(_diff(g, a, b, "auroc") for a, b in pairs)]
                    for name, g in groups.items()
                ],
            ),
        ]
    parts += [
        "",
        "## Risk-coverage: AURC and AUGRC (lower is better)",
        "",
        _md_table(
            ["group", *(f"{METHOD_TITLES[m]} AURC / AUGRC" for m in methods)],
            [
                [
                    name,
                    *(
                        f"{_ci(g, f'{m}.aurc', g['error_detection'][m]['aurc'], 4)} / "
                        f"{_ci(g, f'{m}.augrc', g['error_detection'][m]['augrc'], 4)}"
                        for m in methods
                    ),
                ]
                for name, g in groups.items()
            ],
        ),
        "",
        "## Accuracy of auto-reported studies at fixed deferral",
        "",
    ]
    rows = []
    for name, g in groups.items():
        for m in methods:
            acc = g["error_detection"][m]["accuracy_at_deferral"]
            rows.append([name, METHOD_TITLES[m], *(_f(acc[f"{d:g}"]) for d in ev.DEFERRALS)])
    parts.append(
        _md_table(["group", "method", *(f"{int(d * 100)} % deferred" for d in ev.DEFERRALS)], rows)
    )
    target = pol.get("target_risk")
    parts += [
        "",
        f"## The policy in force (cost {pol['defer_cost']:.3f}"
        + (f", certified target {target:g}" if target is not None else "")
        + "): realised risk and deferral",
        "",
        _md_table(
            [
                "group",
                "deferral rate",
                "auto-reported (wrong)",
                "realised risk (auto-reported error rate)",
                "accuracy (all)",
                "macro AUROC (all / auto)",
                "OOD flagged (multi-layer / single-layer)",
            ],
            [
                [
                    name,
                    _ci(g, "policy.deferral_rate", g["policy"]["deferral_rate"]),
                    f"{g['policy']['auto_reported']} ({g['policy']['auto_errors']})",
                    _ci(g, "policy.risk_auto", g["policy"]["risk_auto"]),
                    _ci(g, "policy.accuracy_all", g["policy"]["accuracy_all"]),
                    f"{_f(g['policy']['macro_auroc_all'])} / {_f(g['policy']['macro_auroc_auto'])}",
                    f"{_f(g['ood_flag_rate'])} / {_f(g['ood_flag_rate_single_layer'])}",
                ]
                for name, g in groups.items()
            ],
        ),
        "",
        "## Classifier: AUROC per finding",
        "",
        _md_table(
            ["group", *labels, "macro"],
            [
                [
                    name,
                    *(_f(g["auroc"][label]) for label in labels),
                    _ci(g, "macro_auroc", g["macro_auroc"]),
                ]
                for name, g in groups.items()
            ],
        ),
    ]
    if any(g.get("cam_iou") for g in groups.values()):
        parts += ["", "## CAM localisation: top-p % IoU with the phantom masks (mean, n)", ""]
        parts.append(
            _md_table(
                ["group", *labels],
                [
                    [
                        name,
                        *(
                            f"{g['cam_iou'][label]['mean']:.3f} ({g['cam_iou'][label]['n']})"
                            if label in g.get("cam_iou", {})
                            else "–"
                            for label in labels
                        ),
                    ]
                    for name, g in groups.items()
                ],
            )
        )
    if "map_mass" in groups.get("all", {}):
        parts += [
            "",
            "## Where the maps put their mass (phantom anatomy masks), predicted-present findings",
            "",
            "Share of the map's mass on the burned-in text and outside the lung fields, for calls"
            " the reported label confirms (right) and contradicts (wrong); n in brackets.",
            "",
        ]
        rows = []
        for name, g in groups.items():
            for label, item in g["map_mass"].items():
                right, wrong = item["right"], item["wrong"]
                rows.append(
                    [
                        name,
                        label,
                        f"{_f(right['text'])} / {_f(wrong['text'])}",
                        f"{_f(_outside(right['lungs']))} / {_f(_outside(wrong['lungs']))}",
                        f"{right['n']} / {wrong['n']}",
                    ]
                )
        parts.append(
            _md_table(["group", "finding", "on text (right / wrong)", "outside lungs", "n"], rows)
        )
    missing = report["baselines_missing"]
    parts += ["", "## Not evaluated here", ""]
    if missing:
        parts.append(f"- {missing}")
    parts += [
        "- Random deferral: expected values (AUROC 0.5; AUPR, AURC and every selective risk equal"
        " to the error rate), not one random draw.",
        "",
    ]
    return "\n".join(parts)


def _figures(
    out: Path, cal: CalibrationSet, masks: dict[str, Any], report: dict[str, Any]
) -> list[Path]:
    from triage_tools.plots import plot_group_bars, plot_risk_coverage

    written = []
    methods = _methods(report["groups"])
    for name, mask in masks.items():
        if not (name == "all" or name.startswith("site")):
            continue
        sub = cal.subset(mask)
        if len(sub) < 2:
            continue
        g = report["groups"][name]
        path = out / f"risk_coverage_{_slug(name)}.png"
        curves = ev.curves(sub)
        plot_risk_coverage(
            path,
            f"risk-coverage: {name} ({len(sub)} studies)",
            {m: curves[m] for m in methods if m in curves},
            {m: g["error_detection"][m]["aurc"] for m in methods},
        )
        written.append(path)
    names = list(report["groups"])
    groups = report["groups"]
    scored = [m for m in methods if m not in ("random", "oracle")]
    for key, title, ylabel, shown in (
        ("auroc", "error detection AUROC per group", "AUROC", scored),
        ("aurc", "AURC per group (lower is better)", "AURC", methods),
    ):
        path = out / f"per_site_{key}.png"
        plot_group_bars(
            path,
            title,
            names,
            {
                METHOD_TITLES[m]: [groups[n]["error_detection"][m][key] for n in names]
                for m in shown
            },
            ylabel,
            {
                METHOD_TITLES[m]: [ev.interval(groups[n], f"{m}.{key}") for n in names]
                for m in scored
            },
        )
        written.append(path)
    path = out / "per_site_policy.png"
    plot_group_bars(
        path,
        "study accuracy: auto-reported vs all studies",
        names,
        {
            "all studies": [groups[n]["policy"]["accuracy_all"] for n in names],
            "auto-reported": [groups[n]["policy"]["accuracy_auto"] for n in names],
        },
        "accuracy",
        {
            "all studies": [ev.interval(groups[n], "policy.accuracy_all") for n in names],
            "auto-reported": [ev.interval(groups[n], "policy.accuracy_auto") for n in names],
        },
    )
    written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    """Evaluate; exit 0 with the report written, 2 on bad input."""
    from service.config import ConfigError
    from triage_common.bundle_format import BundleError
    from triage_common.policy_format import PolicyFileError

    try:
        for flag, path in (("--bundle", args.bundle), ("--data", args.data)):
            if not path.exists():
                raise FileNotFoundError(f"{flag} {path} does not exist")
        bundle = open_bundle(args.bundle)
        policy = _policy(args, bundle)
        served = run_labelled(bundle, args, keep_cams=True, evaluation=True)
        heldout = served.heldout_sites
    except (BundleError, ConfigError, PolicyFileError, ValueError, OSError) as exc:
        print(f"triage evaluate: {exc}", file=sys.stderr)
        return 2
    cal, dropped = drop_unscored(served.cal)
    missing = ""
    if "p_error_gradcam" in cal.extra and args.permutations > 0:
        permuted = permuted_scores(bundle, cal, args.permutations, args.seed)
        cal = replace(cal, extra={**cal.extra, "p_error_gradcam_permuted": permuted})
    elif "p_error_gradcam" not in cal.extra:
        missing = (
            "the Grad-CAM error model, its permuted-maps ablation, the probabilities-only network "
            "and the image-only predictor: the bundle has no evaluation graph (export it again "
            "from a run of `triage train error-model` made by this version)"
        )
    masks_dir = args.data / "masks" if args.data.is_dir() else None
    groups = ev.evaluate(
        cal,
        policy,
        heldout_sites=heldout,
        masks_dir=masks_dir if masks_dir is not None and masks_dir.is_dir() else None,
        resamples=max(0, args.resamples),
        seed=args.seed,
        progress=lambda names: track(names, len(names), f"metrics + {args.resamples} bootstraps"),
        anatomy_root=args.data if args.data.is_dir() else None,
    )
    recal = policy.recalibrate
    report: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "served_error_model": (bundle.manifest.get("error_model") or {}).get("served", "gradcam"),
        "labels": list(bundle.labels),
        "policy": {
            "source": policy.source,
            "version": policy.version,
            "defer_cost": policy.defer_cost,
            "ood_threshold": policy.ood_threshold,
            "single_layer_ood_threshold": policy.single_layer_threshold,
            "target_risk": policy.target_risk,
            "recalibration": getattr(recal, "method", "identity"),
        },
        "data": data_summary(
            cal,
            policy.ood_threshold,
            skipped=len(served.skipped),
            skipped_reasons=served.skipped_reasons(),
            dropped_without_p_error=dropped,
            heldout_sites=list(heldout),
            providers=list(served.providers),
        ),
        "bootstrap": {
            "unit": "patient",
            "resamples": args.resamples,
            "seed": args.seed,
            "level": 0.95,
            "method": "percentile",
        },
        "permutation": {
            "draws": args.permutations if "p_error_gradcam_permuted" in cal.extra else 0,
            "block": PERMUTATION_BLOCK,
            "rule": "maps shuffled within blocks of studies with the same predicted findings, "
            "sorted by summed logits; P(error) averaged over the draws",
        },
        "groups": groups,
        "baselines_missing": missing,
        "definitions": {
            "study_error": "any finding's thresholded prediction differs from the reported label",
            "accuracy": "share of studies with every finding right",
            "risk_auto": "error rate of the auto-reported studies (the policy's realised risk)",
            "error_model_score": "raw P(error) (recalibration is monotone: same ranking)",
            "augrc": "area under the generalized risk-coverage curve (Traub et al. 2024)",
            "random": "expected values of deferring at random",
            "oracle": "errors deferred first",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json", jsonable(report))
    figures = _figures(args.out, cal, ev.subgroups(cal, heldout), report)
    (args.out / "summary.md").write_text(summary_markdown(jsonable(report)) + "\n")
    _print(report)
    print(
        f"report: {args.out / 'report.json'}, {args.out / 'summary.md'}, "
        f"{len(figures)} figures in {args.out}"
    )
    return 0


def _print(report: dict[str, Any]) -> None:
    groups = report["groups"]
    methods = [m for m in _methods(groups) if m not in ("random", "oracle")]
    print_table(
        "failure detection per group: AUROC of predicting a study error [95 % interval]",
        ["group", "studies", "error rate", *(METHOD_TITLES[m] for m in methods)],
        [
            (
                name,
                g["studies"],
                g["study_error_rate"],
                *(_ci(g, f"{m}.auroc", g["error_detection"][m]["auroc"]) for m in methods),
            )
            for name, g in groups.items()
        ],
    )
    pairs = _pairs(groups)
    if pairs:
        print_table(
            "paired AUROC differences (a − b) [95 % interval]",
            ["group", *(f"{METHOD_TITLES[a]} − {METHOD_TITLES[b]}" for a, b in pairs)],
            [(name, *(_diff(g, a, b, "auroc") for a, b in pairs)) for name, g in groups.items()],
        )
    print_table(
        f"policy at cost {report['policy']['defer_cost']:.3f}: realised risk of auto-reported "
        "studies [95 % interval]",
        ["group", "deferral", "auto n (wrong)", "realised risk", "accuracy all", "OOD flagged"],
        [
            (
                name,
                g["policy"]["deferral_rate"],
                f"{g['policy']['auto_reported']} ({g['policy']['auto_errors']})",
                _ci(g, "policy.risk_auto", g["policy"]["risk_auto"]),
                g["policy"]["accuracy_all"],
                g["ood_flag_rate"],
            )
            for name, g in groups.items()
        ],
    )
