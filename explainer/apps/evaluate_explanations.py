"""``triage evaluate-explanations``: Latent Shift counterfactuals measured beside Grad-CAM.

On a labelled phantom folder (``triage synth``: finding masks and anatomy), with the bundle the
service serves, the classifier run it was exported from and an autoencoder run: localisation
(top-p% IoU with the finding mask), faithfulness (prediction drop and image change, positives
beside negatives), the shortcut reveal on portable films (mass on the burned-in PORTABLE label
and inside the lungs, training sites vs the held-out site), whether the map's mass separates
true from false positives (AUROC), and the seconds per counterfactual. See
:mod:`explainer.evaluate` for the measures and the choices behind them. Bounded by
``--max-images`` (chosen deterministically with ``--seed``). Writes ``report.json`` (plain JSON:
NaN, nothing to measure, is null) and ``summary.md`` to ``--out`` and prints the same tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explainer.apps.settings_args import add_model_args, settings_from

PROG = "triage evaluate-explanations"
Table = tuple[str, list[str], list[list[object]]]
METHOD_NAMES = {"latent_shift": "Latent Shift", "gradcam": "Grad-CAM"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage evaluate-explanations``."""
    add_model_args(parser)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a labelled phantom folder with finding and anatomy masks (`triage synth`)",
    )
    parser.add_argument("--out", type=Path, required=True, help="report folder (created)")
    parser.add_argument(
        "--max-images",
        type=int,
        default=100,
        help="images to explain at most (100: ~150 counterfactuals, ~40 s at 128 px on 2 cores)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice (0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: one-image counterfactuals gain little from more)",
    )


def _refuse(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _check_paths(args: argparse.Namespace) -> str | None:
    """Why the flags cannot work (None: they may)."""
    if args.max_images < 1:
        return f"--max-images must be at least 1, got {args.max_images}"
    if args.threads < 1:
        return f"--threads must be at least 1, got {args.threads}"
    data: Path = args.data
    if not (data / "labels.csv").is_file():
        return f"--data {data} is not a phantom folder (no labels.csv)"
    if not (data / "masks" / "anatomy").is_dir():
        return f"--data {data} has no masks/anatomy/ (finding and anatomy masks: `triage synth`)"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} exists and is not a folder"
    return None


def served_thresholds(
    bundle: Path, labels: Sequence[str], fallback: Sequence[float]
) -> list[float]:
    """The bundle manifest's threshold per label (the classifier run's where it has none)."""
    recorded = json.loads((bundle / "manifest.json").read_text()).get("thresholds") or {}
    if isinstance(recorded, dict) and all(label in recorded for label in labels):
        return [float(recorded[label]) for label in labels]
    return [float(t) for t in fallback]


def run(args: argparse.Namespace) -> int:
    """Explain, measure, print and write the report; exit 2 on a refused flag or input."""
    started = time.perf_counter()
    try:
        settings = settings_from(args)
    except ValueError as exc:
        return _refuse(str(exc))
    problem = _check_paths(args)
    if problem is not None:
        return _refuse(problem)

    import torch

    from explainer.core import ExplainerMismatch, load_explainer
    from explainer.evaluate import evaluate_explanations
    from triage_common.console import print_table, track, write_json
    from triage_common.datasets import load_dataset

    torch.set_num_threads(args.threads)
    try:
        explainer = load_explainer(args.bundle, args.classifier, args.autoencoder, settings)
        table = load_dataset(args.data, explainer.labels, uncertain="ignore")
        thresholds = served_thresholds(
            args.bundle, explainer.labels, explainer.classifier.thresholds.tolist()
        )
    except (FileNotFoundError, ExplainerMismatch, ValueError, KeyError) as exc:
        return _refuse(str(exc))
    if len(table) == 0:
        return _refuse(f"--data {args.data} has no frontal images")
    try:
        report = evaluate_explanations(
            explainer,
            table,
            np.asarray(thresholds, dtype=np.float64),
            max_images=args.max_images,
            seed=args.seed,
            cache_dir=args.data / ".cache",
            progress=lambda cases: track(cases, len(cases), "latent shift"),
            examples_dir=args.out / "examples",
        )
    except FileNotFoundError as exc:  # an image without its anatomy file
        return _refuse(str(exc))
    wall = time.perf_counter() - started
    report["timing"]["wall_seconds"] = wall
    payload: dict[str, Any] = {
        "command": "evaluate-explanations",
        "bundle_id": explainer.bundle_id,
        "explainer_id": explainer.explainer_id,
        "data": str(args.data),
        "settings": dataclasses.asdict(settings),
        **report,
    }
    tables = report_tables(payload)
    for title, columns, rows in tables:
        print_table(title, columns, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json", plain_json(payload))
    (args.out / "summary.md").write_text(summary_markdown(payload, tables))
    for name, example in report.get("examples", {}).items():
        where = "the held-out site" if example["heldout_site"] else "a training site"
        film = ", portable" if example["portable"] else ""
        print(f"example {name}: {example['finding']} at {where}{film}: {example['strip']}")
    print(f"wall time {wall:.1f} s; wrote {args.out / 'report.json'} and summary.md")
    return 0


LOCALISATION_COLUMNS = ["finding", "n", "LS mean", "LS median", "GC mean", "GC median"]
FAITHFULNESS_COLUMNS = ["finding", "role", "n", "p median", "p(D(E(x))) median"]
FAITHFULNESS_COLUMNS += ["drop median", "drop mean"]
FAITHFULNESS_COLUMNS += ["change median", "change mean", "stop rules"]
TP_FP_COLUMNS = ["finding", "region", "n TP", "n FP", "LS AUROC", "LS TP mean", "LS FP mean"]
TP_FP_COLUMNS += ["GC AUROC", "GC TP mean", "GC FP mean", "LS AUROC (TP mask)"]
TP_FP_COLUMNS += ["GC AUROC (TP mask)"]
TIMING_COLUMNS = ["counterfactuals", "median s", "max s", "total s", "wall s"]


def _stats(part: dict[str, Any], keys: Sequence[str], stats: Sequence[str]) -> list[object]:
    """``part[key][stat]`` for every key, then every stat."""
    return [float(part[key][stat]) for key in keys for stat in stats]


def report_tables(report: dict[str, Any]) -> list[Table]:
    """The report as (title, columns, rows) tables, for the console and the summary."""
    methods = list(METHOD_NAMES)
    loc_rows: list[list[object]] = [
        [name, part["n"], *_stats(part, methods, ("mean", "median")), part["latent_shift_higher"]]
        for name, part in report["localisation"].items()
    ]
    faith_rows: list[list[object]] = []
    for role, by_finding in report["faithfulness"].items():
        for name, part in by_finding.items():
            rules = ", ".join(f"{r} {c}" for r, c in part["stop_rules"].items())
            p0 = _stats(part, ("probability", "reconstruction_probability"), ("median",))
            moved = _stats(part, ("prediction_drop", "image_change"), ("median", "mean"))
            faith_rows.append([name, role, part["n"], *p0, *moved, rules])
    regions = list(next(iter(report["shortcut"].values()))["area"])
    short_rows: list[list[object]] = []
    for group, part in report["shortcut"].items():
        for key, title in (("area", "area share"), *METHOD_NAMES.items()):
            short_rows.append([group, title, part["n"], *(part[key][r] for r in regions)])
    tp_rows: list[list[object]] = []
    for name, part in report["tp_fp"]["plausible_region"].items():
        own = report["tp_fp"]["mask_for_tp"][name]
        region = report["tp_fp"]["regions"].get(name, "per finding")
        scores = _stats(part, methods, ("auroc", "tp_mean", "fp_mean"))
        own_auroc = _stats(own, methods, ("auroc",))
        tp_rows.append([name, region, part["n_tp"], part["n_fp"], *scores, *own_auroc])
    t = report["timing"]
    timing_row: list[object] = [t["counterfactuals"], t["median_seconds"], t["max_seconds"]]
    timing_row += [t["total_seconds"], t.get("wall_seconds", math.nan)]
    return [
        (
            "Localisation: top-p% IoU with the finding mask (present and predicted)",
            [*LOCALISATION_COLUMNS, "LS higher"],
            loc_rows,
        ),
        ("Faithfulness of the Latent Shift counterfactual", FAITHFULNESS_COLUMNS, faith_rows),
        (
            "Shortcut: share of the map's mass, portable films predicted positive",
            ["sites", "map", "n", *regions],
            short_rows,
        ),
        (
            "True vs false positives: mass in the plausible region (AUROC, TP positive)",
            TP_FP_COLUMNS,
            tp_rows,
        ),
        ("Timing", TIMING_COLUMNS, [timing_row]),
    ]


def plain_json(value: Any) -> Any:
    """``value`` with NaN and infinities as null (plain JSON, as ``triage evaluate`` writes)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _md_cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def summary_markdown(report: dict[str, Any], tables: Sequence[Table]) -> str:
    """``summary.md``: what was run and the tables of :func:`report_tables`."""
    sel = report["selection"]
    lines = [
        "# Latent Shift counterfactuals beside Grad-CAM",
        "",
        f"Bundle `{report['bundle_id']}`, autoencoder `{report['explainer_id']}`, data "
        f"`{report['data']}` (truth: `{report['truth']}`). {sel['images']} images of "
        f"{sel['candidates']} candidates (seed {sel['seed']}): {sel['positive_images']} "
        f"predicted positive, {sel['negative_images']} negative; portable predicted-positive "
        f"films {sel['portable_training']} at training sites, {sel['portable_heldout']} held "
        f"out; {sel['counterfactuals']} counterfactuals ({sel['negative_checks']} negative "
        "checks).",
        "",
        "LS = Latent Shift attribution, GC = Grad-CAM. TP/FP: TPs and FPs scored on the "
        "finding's plausible region; 'TP mask' scores TPs on their own finding mask (smaller "
        "than the region: biased low, for reference).",
    ]
    for title, columns, rows in tables:
        lines += ["", f"## {title}", ""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
