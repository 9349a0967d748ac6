"""``triage evaluate``: the defer policy measured against the baselines, per site, with intervals.

Runs the bundle over a labelled set through the served path (ONNX Runtime, no torch), then
writes to ``--out``:

* ``report.json``: every metric of :mod:`triage_tools.calibration.evaluate` for all studies, each
  site, and the training vs held-out site pools, with patient-level bootstrap 95 % intervals;
* ``risk_coverage_<group>.png`` (one curve per method) and ``per_site_*.png`` (bars per site);
* ``summary.md``: the same as Markdown tables.

The probabilities-only error model of ``triage train error-model`` is not in the bundle, so it
is not evaluated here; its figures are in that run's ``report.json`` (on the training run's
test split), which the summary quotes when the run folder is readable.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.bundle import Bundle
from triage_common.console import print_table, track, write_json
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
    "error_model": "Grad-CAM error model",
    "softmax_response": "softmax response",
    "entropy": "entropy",
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
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    add_served_arguments(parser)


def _policy(args: argparse.Namespace, bundle: Bundle) -> ev.PolicyView:
    if args.policy is None:
        return ev.PolicyView(bundle.defer_cost, bundle.ood_threshold, Recalibration("identity"))
    from triage_common.policy_format import read_policy

    policy = read_policy(args.policy, bundle.bundle_id)
    return ev.PolicyView(
        policy.defer_cost,
        policy.ood_threshold,
        policy.recalibration,
        version=policy.policy_id,
        source=str(args.policy),
    )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _probs_only(bundle: Bundle) -> dict[str, Any]:
    """The probabilities-only baseline's figures from the error-model run, when readable."""
    run = bundle.manifest.get("provenance", {}).get("error_model", {}).get("run")
    note = (
        "not in the bundle (it is a train-time baseline); not evaluated on this set. "
        "Its figures come from `triage train error-model`'s report.json"
    )
    out: dict[str, Any] = {"status": note, "training_report": None, "training_figures": {}}
    if not run:
        return out
    path = Path(str(run)) / "report.json"
    out["training_report"] = str(path)
    try:
        groups = json.loads(path.read_text()).get("groups", [])
    except (OSError, ValueError):
        return out
    for group in groups:
        found = group.get("error_detection", {}).get("probabilities_only")
        if found:
            out["training_figures"][str(group.get("group"))] = found
    return out


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


def summary_markdown(report: dict[str, Any]) -> str:
    """The Markdown summary of a report (``summary.md``)."""
    groups: dict[str, Any] = report["groups"]
    labels: list[str] = report["labels"]
    pol = report["policy"]
    parts = [
        "# Defer-policy evaluation",
        "",
        f"Bundle `{report['bundle_id']}`, data `{report['data']['source']}` "
        f"({report['data']['studies']} studies, {report['data']['patients']} patients). "
        f"Policy: {pol['source']} (cost {pol['defer_cost']:.3f}, recalibration "
        f"{pol['recalibration']}, OOD threshold {_f(pol['ood_threshold'], 2)}"
        + (f", id `{pol['version']}`" if pol["version"] else "")
        + "). A study is an error when any finding's thresholded prediction differs from the "
        "reported label. Brackets: patient-level bootstrap 95 % intervals "
        f"({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}).",
        "",
        "## Failure detection: AUROC for predicting a study error",
        "",
    ]
    scored = ev.SCORED_METHODS
    parts.append(
        _md_table(
            [
                "group",
                "studies",
                "error rate",
                *(METHOD_TITLES[m] for m in scored),
                "error model − softmax response",
            ],
            [
                [
                    name,
                    str(g["studies"]),
                    _f(g["study_error_rate"]),
                    *(_ci(g, f"{m}.auroc", g["error_detection"][m]["auroc"]) for m in scored),
                    _ci(
                        g,
                        "error_model-softmax_response.auroc",
                        g["error_detection"]["error_model"]["auroc"]
                        - g["error_detection"]["softmax_response"]["auroc"],
                    ),
                ]
                for name, g in groups.items()
            ],
        )
    )
    parts += ["", "## Risk-coverage: AURC (lower is better) and E-AURC", ""]
    parts.append(
        _md_table(
            [
                "group",
                *(f"{METHOD_TITLES[m]} AURC" for m in ev.METHODS),
                "error model E-AURC",
                "softmax E-AURC",
            ],
            [
                [
                    name,
                    *(
                        _ci(g, f"{m}.aurc", g["error_detection"][m]["aurc"], 4)
                        if m in scored
                        else _f(g["error_detection"][m]["aurc"], 4)
                        for m in ev.METHODS
                    ),
                    _ci(g, "error_model.e_aurc", g["error_detection"]["error_model"]["e_aurc"], 4),
                    _ci(
                        g,
                        "softmax_response.e_aurc",
                        g["error_detection"]["softmax_response"]["e_aurc"],
                        4,
                    ),
                ]
                for name, g in groups.items()
            ],
        )
    )
    parts += ["", "## AUPR of the error class", ""]
    parts.append(
        _md_table(
            ["group", *(METHOD_TITLES[m] for m in ev.METHODS)],
            [
                [name, *(_f(g["error_detection"][m]["aupr_error"]) for m in ev.METHODS)]
                for name, g in groups.items()
            ],
        )
    )
    parts += ["", "## Accuracy of auto-reported studies at fixed deferral", ""]
    rows = []
    for name, g in groups.items():
        for m in ev.METHODS:
            acc = g["error_detection"][m]["accuracy_at_deferral"]
            rows.append([name, METHOD_TITLES[m], *(_f(acc[f"{d:g}"]) for d in ev.DEFERRALS)])
    parts.append(
        _md_table(["group", "method", *(f"{int(d * 100)} % deferred" for d in ev.DEFERRALS)], rows)
    )
    parts += [
        "",
        f"## The policy in force (cost {pol['defer_cost']:.3f}): auto-reported vs all studies",
        "",
    ]
    parts.append(
        _md_table(
            [
                "group",
                "deferral rate",
                "accuracy (all)",
                "accuracy (auto)",
                "macro AUROC (all)",
                "macro AUROC (auto)",
                "OOD flagged",
            ],
            [
                [
                    name,
                    _ci(g, "policy.deferral_rate", g["policy"]["deferral_rate"]),
                    _ci(g, "policy.accuracy_all", g["policy"]["accuracy_all"]),
                    _ci(g, "policy.accuracy_auto", g["policy"]["accuracy_auto"]),
                    _ci(g, "macro_auroc", g["policy"]["macro_auroc_all"]),
                    _ci(g, "policy.macro_auroc_auto", g["policy"]["macro_auroc_auto"]),
                    _f(g["ood_flag_rate"]),
                ]
                for name, g in groups.items()
            ],
        )
    )
    parts += ["", "## Classifier: AUROC per finding", ""]
    parts.append(
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
        )
    )
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
    probs = report["probabilities_only"]
    parts += [
        "",
        "## Not evaluated here",
        "",
        f"- Probabilities-only error model: {probs['status']}",
    ]
    if probs["training_report"]:
        parts[-1] += f" (`{probs['training_report']}`)."
    for group, fig in probs["training_figures"].items():
        parts.append(
            f"  - training report, {group}: AUROC {_f(fig.get('auroc'))}, "
            f"AUPR-error {_f(fig.get('aupr_error'))}"
        )
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
    for name, mask in masks.items():
        sub = cal.subset(mask)
        if len(sub) < 2:
            continue
        g = report["groups"][name]
        path = out / f"risk_coverage_{_slug(name)}.png"
        plot_risk_coverage(
            path,
            f"risk-coverage: {name} ({len(sub)} studies)",
            ev.curves(sub),
            {m: g["error_detection"][m]["aurc"] for m in ev.METHODS},
        )
        written.append(path)
    names = list(report["groups"])
    groups = report["groups"]
    for key, title, ylabel, methods in (
        ("auroc", "error detection AUROC per group", "AUROC", ev.SCORED_METHODS),
        ("aurc", "AURC per group (lower is better)", "AURC", ev.METHODS),
    ):
        path = out / f"per_site_{key}.png"
        plot_group_bars(
            path,
            title,
            names,
            {
                METHOD_TITLES[m]: [groups[n]["error_detection"][m][key] for n in names]
                for m in methods
            },
            ylabel,
            {
                METHOD_TITLES[m]: [ev.interval(groups[n], f"{m}.{key}") for n in names]
                for m in ev.SCORED_METHODS
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
        bundle = open_bundle(args.bundle)
        policy = _policy(args, bundle)
        served = run_labelled(bundle, args, keep_cams=True)
        heldout = served.heldout_sites
    except (BundleError, ConfigError, PolicyFileError, ValueError, OSError) as exc:
        print(f"triage evaluate: {exc}", file=sys.stderr)
        return 2
    cal, dropped = drop_unscored(served.cal)
    masks_dir = args.data / "masks" if args.data.is_dir() else None
    groups = ev.evaluate(
        cal,
        policy,
        heldout_sites=heldout,
        masks_dir=masks_dir if masks_dir is not None and masks_dir.is_dir() else None,
        resamples=max(0, args.resamples),
        seed=args.seed,
        progress=lambda names: track(names, len(names), f"metrics + {args.resamples} bootstraps"),
    )
    recal = policy.recalibrate
    report: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "labels": list(bundle.labels),
        "policy": {
            "source": policy.source,
            "version": policy.version,
            "defer_cost": policy.defer_cost,
            "ood_threshold": policy.ood_threshold,
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
        "groups": groups,
        "probabilities_only": _probs_only(bundle),
        "definitions": {
            "study_error": "any finding's thresholded prediction differs from the reported label",
            "accuracy": "share of studies with every finding right",
            "error_model_score": "raw P(error) (recalibration is monotone: same ranking)",
            "random": "expected values of deferring at random",
            "oracle": "errors deferred first",
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json", jsonable(report))
    figures = _figures(args.out, cal, ev.site_groups(cal, heldout), report)
    (args.out / "summary.md").write_text(summary_markdown(report) + "\n")
    _print(report)
    print(
        f"report: {args.out / 'report.json'}, {args.out / 'summary.md'}, "
        f"{len(figures)} figures in {args.out}"
    )
    return 0


def _print(report: dict[str, Any]) -> None:
    groups = report["groups"]
    print_table(
        "failure detection per group: AUROC / AURC (lower AURC is better)",
        ["group", "studies", "error rate", *(METHOD_TITLES[m] for m in ev.METHODS)],
        [
            (
                name,
                g["studies"],
                g["study_error_rate"],
                *(
                    f"{_f(g['error_detection'][m]['auroc'])} / "
                    f"{_f(g['error_detection'][m]['aurc'], 4)}"
                    for m in ev.METHODS
                ),
            )
            for name, g in groups.items()
        ],
    )
    print_table(
        f"policy at cost {report['policy']['defer_cost']:.3f}: auto-reported vs all",
        [
            "group",
            "deferral",
            "accuracy all",
            "accuracy auto",
            "macro AUROC all",
            "macro AUROC auto",
        ],
        [
            (
                name,
                g["policy"]["deferral_rate"],
                g["policy"]["accuracy_all"],
                g["policy"]["accuracy_auto"],
                g["policy"]["macro_auroc_all"],
                g["policy"]["macro_auroc_auto"],
            )
            for name, g in groups.items()
        ],
    )
