"""``triage calibrate``: choose the defer cost on a labelled set and write the policy file.

The set is run through the served path (``triage_tools.calibration.served``: the serving decode,
eligibility and preprocessing stages, then ONNX Runtime on the bundle; never PyTorch), or read
from a labelled worklist export. Then:

1. P(error) is recalibrated (isotonic or Platt, chosen by held-out log loss); ECE and Brier
   score before and after are printed;
2. a grid of defer costs is swept (deferral rate, error rate of auto-reported studies,
   per-finding sensitivity/specificity of auto-reported studies, expected cost per study:
   one unit per undetected error plus the cost per deferral); a readable subset is printed,
   every row goes to the JSON file;
3. the cost is selected by exactly one rule: ``--defer-cost`` (explicit),
   ``--max-defer-rate`` (radiologist capacity: the lowest cost whose deferral rate is at most
   R), or ``--target-risk R --delta D`` (Learn-then-Test fixed-sequence testing with exact
   binomial p-values: the lowest deferral whose auto-report error rate is at most R with
   probability at least 1 - D). A set too small to certify the target is refused with the
   number of studies it would need (exit status 1);
4. the policy (cost, recalibration map, the bundle's OOD threshold, the operating point, a data
   summary, the date and the bundle id) is written atomically; ``triage serve --policy FILE``
   loads it and reloads it on SIGHUP.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle
from triage_common.console import print_table, write_json
from triage_common.policy_format import CalibratedPolicy, write_policy
from triage_tools.calibration.calibrate import (
    CalibrationSet,
    Selection,
    recalibrate,
    select_cost,
    sweep,
)
from triage_tools.calibration.cli_common import (
    DATA_HELP,
    add_served_arguments,
    data_summary,
    drop_unscored,
    jsonable,
    open_bundle,
    run_labelled,
)
from triage_tools.calibration.curves import aurc, e_aurc, risk_coverage

#: Costs shown in the printed table (every grid row goes to the JSON file).
TABLE_STEP = 0.05


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (got {value})")
    return value


def _open_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1 (got {value})")
    return value


def _step(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be in (0, 0.5] (got {value})")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage calibrate``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help=DATA_HELP)
    source.add_argument(
        "--worklist-export",
        type=Path,
        help="JSON lines written by `triage worklist export --labelled` (radiologists' final "
        "reads of served studies); lines made by another bundle are refused",
    )
    parser.add_argument("--out", type=Path, required=True, help="policy file to write (JSON)")
    parser.add_argument(
        "--plot", type=Path, help="PNG: risk-coverage curve and cost sweep (default: OUT.png)"
    )
    parser.add_argument(
        "--json", type=Path, help="full sweep and selection as JSON (default: OUT.sweep.json)"
    )
    rule = parser.add_mutually_exclusive_group(required=True)
    rule.add_argument("--defer-cost", type=_fraction, help="use this defer cost")
    rule.add_argument(
        "--max-defer-rate",
        type=_fraction,
        help="radiologist capacity: the lowest cost deferring at most this share of studies",
    )
    rule.add_argument(
        "--target-risk",
        type=_open_fraction,
        help="certify an auto-report error rate of at most this (with --delta): Learn-then-Test",
    )
    parser.add_argument(
        "--delta",
        type=_open_fraction,
        default=None,
        help="with --target-risk: allowed probability that the guarantee fails (0.05)",
    )
    parser.add_argument(
        "--grid-step", type=_step, default=0.005, help="spacing of the cost grid (0.005)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split (0)")
    add_served_arguments(parser)


def cost_grid(step: float) -> tuple[float, ...]:
    """0, step, 2 step, ... 1 (1 always included), rounded to avoid float drift."""
    values = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    grid = sorted({float(min(1.0, v)) for v in values} | {1.0})
    return tuple(grid)


def _table_rows(
    rows: list[dict[str, Any]], labels: tuple[str, ...], chosen: float
) -> list[tuple[object, ...]]:
    shown = []
    for row in rows:
        cost = row["defer_cost"]
        on_step = abs(cost / TABLE_STEP - round(cost / TABLE_STEP)) < 1e-6
        if not (on_step or math.isclose(cost, chosen, abs_tol=1e-9)):
            continue
        marker = "◀ chosen" if math.isclose(cost, chosen, abs_tol=1e-9) else ""
        cells: list[object] = [
            f"{cost:.3f}",
            row["deferral_rate"],
            row["auto_reported"],
            row["auto_error_rate"],
            row["expected_cost"],
        ]
        for label in labels:
            sens, spec = row[f"sensitivity/{label}"], row[f"specificity/{label}"]
            cells.append(f"{_fmt(sens)}/{_fmt(spec)}")
        cells.append(marker)
        shown.append(tuple(cells))
    return shown


def _fmt(value: float) -> str:
    return "  -  " if not math.isfinite(value) else f"{value:.3f}"


def _load(args: argparse.Namespace) -> tuple[Bundle, CalibrationSet, dict[str, Any]]:
    bundle = open_bundle(args.bundle)
    extra: dict[str, Any] = {}
    if args.data is not None:
        run = run_labelled(bundle, args)
        extra = {
            "kind": "labelled images (served path)",
            "skipped": len(run.skipped),
            "skipped_reasons": run.skipped_reasons(),
            "providers": list(run.providers),
        }
        cal = run.cal
    else:
        from triage_tools.calibration.worklist_export import read_worklist_export

        read = read_worklist_export(args.worklist_export, bundle)
        if read.refused:
            print(
                f"refused {read.refused} line(s) of {args.worklist_export} made by another "
                "bundle: " + ", ".join(f"{b} ({n})" for b, n in read.other_bundles.items()),
                file=sys.stderr,
            )
        extra = {"kind": "worklist export (final reads)", "refused_other_bundles": read.refused}
        cal = read.cal
    cal, dropped = drop_unscored(cal)
    if dropped:
        extra["dropped_without_p_error"] = dropped
    return bundle, cal, extra


def run(args: argparse.Namespace) -> int:
    """Calibrate; exit 0 with the policy written, 1 on a refusal, 2 on bad input."""
    from service.config import ConfigError
    from triage_common.bundle_format import BundleError
    from triage_tools.calibration.worklist_export import ExportError

    if args.delta is not None and args.target_risk is None:
        print("triage calibrate: --delta only goes with --target-risk", file=sys.stderr)
        return 2
    delta = 0.05 if args.delta is None else args.delta
    try:
        bundle, cal, extra = _load(args)
    except (BundleError, ConfigError, ExportError, ValueError, OSError) as exc:
        print(f"triage calibrate: {exc}", file=sys.stderr)
        return 2
    ood_threshold = bundle.ood_threshold
    recal, cal_metrics = recalibrate(cal, seed=args.seed)
    p_error = recal(cal.p_error_raw)
    wrong = cal.wrong
    print_table(
        f"P(error) recalibration ({recal.method}) on {len(cal)} studies",
        ["", "ECE (15 bins)", "Brier"],
        [
            ("raw", cal_metrics["ece_before"], cal_metrics["brier_before"]),
            (recal.method, cal_metrics["ece_after"], cal_metrics["brier_after"]),
        ],
    )
    grid = cost_grid(args.grid_step)
    rows = sweep(cal, p_error, ood_threshold, grid)
    selection: Selection | None = None
    refusal: str | None = None
    try:
        selection = select_cost(
            cal,
            p_error,
            ood_threshold,
            defer_cost=args.defer_cost,
            max_defer_rate=args.max_defer_rate,
            target_risk=args.target_risk,
            delta=delta,
            grid=grid,
        )
    except ValueError as exc:  # NotEnoughData, or no cost meets --max-defer-rate
        refusal = str(exc)
    chosen_cost = selection.cost if selection is not None else math.nan
    print_table(
        f"cost sweep (every {TABLE_STEP:g}; all {len(rows)} rows in the JSON): "
        "auto-reported studies' error rate, sensitivity/specificity per finding",
        [
            "cost",
            "deferral",
            "auto n",
            "auto error",
            "exp. cost",
            *(f"{label} sens/spec" for label in cal.labels),
            "",
        ],
        _table_rows(rows, cal.labels, chosen_cost),
    )
    coverage, risk = risk_coverage(cal.p_error_raw, wrong)
    summary = data_summary(cal, ood_threshold, **extra)
    metrics = {
        **cal_metrics,
        "recalibration": recal.method,
        "aurc": aurc(cal.p_error_raw, wrong),
        "e_aurc": e_aurc(cal.p_error_raw, wrong),
    }
    json_path = args.json or args.out.with_name(args.out.stem + ".sweep.json")
    payload: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "data": summary,
        "metrics": metrics,
        "recalibration": recal.to_dict(),
        "ood_threshold": ood_threshold,
        "grid_step": args.grid_step,
        "sweep": rows,
    }
    if selection is None:
        payload["refused"] = refusal
        write_json(json_path, jsonable(payload))
        print(f"triage calibrate: refused: {refusal}", file=sys.stderr)
        print(f"sweep written to {json_path}", file=sys.stderr)
        return 1
    operating = sweep(cal, p_error, ood_threshold, [selection.cost])[0]
    policy = CalibratedPolicy(
        bundle_id=bundle.bundle_id,
        defer_cost=selection.cost,
        recalibration=recal,
        ood_threshold=ood_threshold,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        selection=jsonable({"method": selection.method, **selection.details}),
        operating_point=jsonable(operating),
        data=jsonable(summary),
        metrics=jsonable(metrics),
    )
    write_policy(args.out, policy)
    payload["selection"] = {"method": selection.method, "cost": selection.cost, **selection.details}
    payload["operating_point"] = operating
    payload["policy_id"] = policy.policy_id
    write_json(json_path, jsonable(payload))
    plot_path = args.plot or args.out.with_suffix(".png")
    from triage_tools.plots import plot_calibration

    plot_calibration(plot_path, coverage, risk, rows, operating, args.target_risk)
    _print_selection(selection, operating, policy, cal.labels)
    print(f"policy {policy.policy_id} written to {args.out}")
    print(f"sweep: {json_path}   plot: {plot_path}")
    return 0


def _print_selection(
    selection: Selection,
    operating: dict[str, Any],
    policy: CalibratedPolicy,
    labels: tuple[str, ...],
) -> None:
    d = selection.details
    rows: list[tuple[object, ...]] = [
        ("rule", selection.method),
        ("defer cost", selection.cost),
        ("deferral rate", operating["deferral_rate"]),
        ("auto-reported studies", operating["auto_reported"]),
        ("auto-report error rate", operating["auto_error_rate"]),
        ("expected cost per study", operating["expected_cost"]),
    ]
    for label in labels:
        rows.append(
            (
                f"{label} sens/spec (auto)",
                f"{_fmt(operating[f'sensitivity/{label}'])}/"
                f"{_fmt(operating[f'specificity/{label}'])}",
            )
        )
    if selection.method == "target-risk":
        rows += [
            ("procedure", d["procedure"]),
            ("guarantee", d["guarantee"]),
            ("p-value (H: risk > target)", d["p_value"]),
            ("kept / errors", f"{d['kept']} / {d['errors']}"),
        ]
    rows.append(("policy id", policy.policy_id))
    print_table("selected operating point", ["", "value"], rows)
