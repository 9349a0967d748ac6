"""``triage calibrate``: choose the defer cost on a labelled set and write the policy file.

The set is run through the served path (``triage_tools.calibration.served``: the serving decode,
eligibility and preprocessing stages, then ONNX Runtime on the bundle; never PyTorch), or read
from a labelled worklist export. Then:

0. guard-rails: a set with fewer than ``--min-studies`` labelled studies, fewer than
   ``--min-errors`` errors (or correct studies), or fewer studies than the requested
   certificate needs even without an error, is refused (exit status 1, one line);
1. the set is split by patient: ``--recalibration-share`` of the patients fit the P(error)
   recalibration (isotonic or Platt, chosen by held-out log loss), the others (disjoint) are
   where the sweep, the cost and its certificate are measured; ECE and Brier score before and
   after are printed on that second part;
2. a grid of defer costs is swept (deferral rate, error rate of auto-reported studies,
   per-finding sensitivity/specificity of auto-reported studies, expected cost per study:
   one unit per undetected error plus the cost per deferral), each figure with its sample size;
   a readable subset is printed, every row goes to the JSON file;
3. the cost is selected by exactly one rule: ``--defer-cost`` (explicit),
   ``--max-defer-rate`` (radiologist capacity: the lowest cost whose deferral rate is at most
   R), or ``--target-risk R --delta D`` (Learn-then-Test fixed-sequence testing, by default with
   patient-level betting p-values that respect the correlation of one patient's studies; the
   lowest deferral whose auto-report error rate is at most R with probability at least 1 - D;
   ``--per-site`` certifies every site of the set at once). A set too small to certify the
   target is refused with the number of studies it would need (exit status 1);
4. for each of ``routing.critical_findings`` (from ``--config``; default Pneumothorax) the
   sensitivity among the auto-reported studies is printed with its sample size and exact
   interval; below ``--min-critical-sensitivity`` the policy is refused (exit status 1) unless
   ``--allow-low-critical-sensitivity`` is given, which the policy file then records;
5. the policy (cost, recalibration map, the bundle's OOD threshold, the operating point, a data
   summary, the guard-rails, the monitoring reference, the date and the bundle id) is written
   atomically; ``triage serve --policy FILE`` loads it and reloads it on SIGHUP.

Exit status: 0 policy written, 1 refused (the data does not support the policy asked for),
2 bad input (a missing file, a bad flag).
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
    TooLittleData,
    check_minimums,
    critical_sensitivity,
    monitoring_reference,
    recalibrate,
    select_cost,
    split_by_patient,
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
from triage_tools.calibration.curves import augrc, aurc, e_aurc, risk_coverage
from triage_tools.calibration.risk_control import METHODS

#: Defaults of the guard-rails (see the module docstring).
MIN_STUDIES = 100
MIN_ERRORS = 10
MIN_CRITICAL_SENSITIVITY = 0.9
RECALIBRATION_SHARE = 0.3

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


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (got {value})")
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
    parser.add_argument(
        "--certificate",
        choices=METHODS,
        default="cluster",
        help="with --target-risk: the test behind the guarantee: 'cluster' (patients are the "
        "unit; valid when one patient's studies are correlated) or 'binomial' (studies as "
        "independent, as before) (cluster)",
    )
    parser.add_argument(
        "--per-site",
        action="store_true",
        help="with --target-risk: certify the target at every site of the set at once (one "
        "cost, each site tested at delta / sites)",
    )
    parser.add_argument(
        "--recalibration-share",
        type=_share,
        default=RECALIBRATION_SHARE,
        help="share of the patients that fit the P(error) recalibration; the cost is chosen and "
        "certified on the others (0: no recalibration, every patient certifies) "
        f"({RECALIBRATION_SHARE})",
    )
    parser.add_argument(
        "--min-studies",
        type=int,
        default=MIN_STUDIES,
        help=f"refuse a set with fewer labelled studies ({MIN_STUDIES})",
    )
    parser.add_argument(
        "--min-errors",
        type=int,
        default=MIN_ERRORS,
        help=f"refuse a set with fewer studies with an error, or without one ({MIN_ERRORS})",
    )
    parser.add_argument(
        "--min-critical-sensitivity",
        type=_fraction,
        default=MIN_CRITICAL_SENSITIVITY,
        help="refuse a policy whose sensitivity for a critical finding (routing."
        "critical_findings of --config) among auto-reported studies is below this "
        f"({MIN_CRITICAL_SENSITIVITY})",
    )
    parser.add_argument(
        "--allow-low-critical-sensitivity",
        action="store_true",
        help="write the policy even under --min-critical-sensitivity (recorded in the policy)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the patient split and the test's orders (0)"
    )
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
            _with_n(row["auto_error_rate"], row["auto_reported"]),
            row["expected_cost"],
        ]
        for label in labels:
            cells.append(
                f"{_with_n(row[f'sensitivity/{label}'], row[f'positives/{label}'])} / "
                f"{_with_n(row[f'specificity/{label}'], row[f'negatives/{label}'])}"
            )
        cells.append(marker)
        shown.append(tuple(cells))
    return shown


def _fmt(value: float) -> str:
    return "  -  " if not math.isfinite(value) else f"{value:.3f}"


def _with_n(value: float, n: int) -> str:
    """A rate with the number of studies it is a share of."""
    return f"{_fmt(value)} (n={n})"


def _exists(path: Path, flag: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path} does not exist")


def _load(args: argparse.Namespace) -> tuple[Bundle, CalibrationSet, dict[str, Any]]:
    _exists(args.bundle, "--bundle")
    if args.data is not None:
        _exists(args.data, "--data")
    else:
        _exists(args.worklist_export, "--worklist-export")
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


def _critical_findings(args: argparse.Namespace) -> tuple[str, ...]:
    """``routing.critical_findings`` of the serving configuration (``--config``)."""
    from triage_tools.calibration.cli_common import serving_config

    return tuple(serving_config(args.bundle, args.config).routing.critical_findings)


def _refuse(message: str) -> int:
    print(f"triage calibrate: refused: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Calibrate; exit 0 with the policy written, 1 on a refusal, 2 on bad input."""
    from service.config import ConfigError
    from triage_common.bundle_format import BundleError
    from triage_tools.calibration.worklist_export import ExportError

    for flag in ("delta", "per_site"):
        if getattr(args, flag) not in (None, False) and args.target_risk is None:
            name = "--" + flag.replace("_", "-")
            print(f"triage calibrate: {name} only goes with --target-risk", file=sys.stderr)
            return 2
    delta = 0.05 if args.delta is None else args.delta
    try:
        critical = _critical_findings(args)
        bundle, cal, extra = _load(args)
    except (BundleError, ConfigError, ExportError, ValueError, OSError) as exc:
        print(f"triage calibrate: {exc}", file=sys.stderr)
        return 2
    try:
        check_minimums(
            cal,
            min_studies=args.min_studies,
            min_errors=args.min_errors,
            target_risk=args.target_risk,
            delta=delta,
        )
    except TooLittleData as exc:
        return _refuse(f"{exc}: --data {args.data or args.worklist_export}")
    ood_threshold = bundle.ood_threshold
    fit_part, cert = split_by_patient(cal, args.recalibration_share, args.seed)
    if args.recalibration_share > 0 and min(len(fit_part), len(cert)) < 2:
        return _refuse(
            f"the patient split leaves {len(fit_part)} studies to recalibrate on and "
            f"{len(cert)} to certify on: use more studies or --recalibration-share 0"
        )
    recal, cal_metrics = recalibrate(fit_part, cert, seed=args.seed)
    p_error = recal(cert.p_error_raw)
    wrong = cert.wrong
    print(
        f"P(error) recalibration fitted on {len(fit_part)} studies "
        f"({len(set(fit_part.patient_ids))} patients); the cost is chosen on the other "
        f"{len(cert)} ({len(set(cert.patient_ids))} patients)"
    )
    print_table(
        f"P(error) recalibration ({recal.method})",
        ["", "ECE (15 bins)", "Brier", "n"],
        [
            ("raw", cal_metrics["ece_before"], cal_metrics["brier_before"], len(cert)),
            (recal.method, cal_metrics["ece_after"], cal_metrics["brier_after"], len(cert)),
        ],
    )
    grid = cost_grid(args.grid_step)
    rows = sweep(cert, p_error, ood_threshold, grid)
    selection: Selection | None = None
    refusal: str | None = None
    try:
        selection = select_cost(
            cert,
            p_error,
            ood_threshold,
            defer_cost=args.defer_cost,
            max_defer_rate=args.max_defer_rate,
            target_risk=args.target_risk,
            delta=delta,
            grid=grid,
            method=args.certificate,
            per_site=args.per_site,
            seed=args.seed,
        )
    except ValueError as exc:  # NotEnoughData, or no cost meets --max-defer-rate
        refusal = str(exc)
    chosen_cost = selection.cost if selection is not None else math.nan
    print_table(
        f"cost sweep on {len(cert)} studies (every {TABLE_STEP:g}; all {len(rows)} rows in the "
        "JSON): auto-reported studies' error rate, sensitivity / specificity per finding "
        "(n: studies each rate is a share of)",
        [
            "cost",
            "deferral",
            "auto n",
            "auto error",
            "exp. cost",
            *(f"{label} sens / spec" for label in cert.labels),
            "",
        ],
        _table_rows(rows, cert.labels, chosen_cost),
    )
    coverage, risk = risk_coverage(cert.p_error_raw, wrong)
    summary = data_summary(cal, ood_threshold, **extra)
    summary["recalibration_part"] = {
        "studies": len(fit_part),
        "patients": len(set(fit_part.patient_ids)),
        "share_of_patients": args.recalibration_share,
    }
    summary["certification_part"] = {
        "studies": len(cert),
        "patients": len(set(cert.patient_ids)),
        "study_error_rate": float(wrong.mean()) if len(cert) else math.nan,
    }
    metrics = {
        **cal_metrics,
        "recalibration": recal.method,
        "measured_on": "certification part",
        "aurc": aurc(cert.p_error_raw, wrong),
        "e_aurc": e_aurc(cert.p_error_raw, wrong),
        "augrc": augrc(cert.p_error_raw, wrong),
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
        print(f"sweep written to {json_path}", file=sys.stderr)
        return _refuse(str(refusal))
    operating = sweep(cert, p_error, ood_threshold, [selection.cost])[0]
    sensitivity = critical_sensitivity(cert, p_error, ood_threshold, selection.cost, critical)
    low = sorted(
        label
        for label, item in sensitivity.items()
        if math.isfinite(item["sensitivity"])
        and item["sensitivity"] < args.min_critical_sensitivity
    )
    guard_rails: dict[str, Any] = {
        "min_studies": args.min_studies,
        "min_errors": args.min_errors,
        "labelled_studies": len(cal),
        "errors": int(cal.wrong.sum()),
        "critical_findings": list(critical),
        "critical_sensitivity_auto_reported": sensitivity,
        "min_critical_sensitivity": args.min_critical_sensitivity,
        "below_floor": low,
        "allowed_below_floor": bool(low) and args.allow_low_critical_sensitivity,
    }
    payload["guard_rails"] = guard_rails
    _print_critical(sensitivity, args.min_critical_sensitivity)
    if low and not args.allow_low_critical_sensitivity:
        payload["refused"] = "critical sensitivity below the floor"
        write_json(json_path, jsonable(payload))
        item = sensitivity[low[0]]
        return _refuse(
            f"sensitivity for critical finding {low[0]} among auto-reported studies is "
            f"{item['sensitivity']:.3f} ({item['detected']} of {item['positives']}), below "
            f"--min-critical-sensitivity {args.min_critical_sensitivity:g}; pass "
            "--allow-low-critical-sensitivity to write it anyway (recorded in the policy)"
        )
    if low:
        print(
            f"warning: critical sensitivity below {args.min_critical_sensitivity:g} for "
            f"{', '.join(low)}; written because --allow-low-critical-sensitivity was given "
            "(recorded in the policy)",
            file=sys.stderr,
        )
    all_p = recal(cal.p_error_raw)
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
        guard_rails=jsonable(guard_rails),
        monitoring=monitoring_reference(cal, all_p, ood_threshold, selection.cost),
    )
    write_policy(args.out, policy)
    payload["selection"] = {"method": selection.method, "cost": selection.cost, **selection.details}
    payload["operating_point"] = operating
    payload["policy_id"] = policy.policy_id
    write_json(json_path, jsonable(payload))
    plot_path = args.plot or args.out.with_suffix(".png")
    from triage_tools.plots import plot_calibration

    plot_calibration(plot_path, coverage, risk, rows, operating, args.target_risk)
    _print_selection(selection, operating, policy, cert.labels, len(cert))
    print(f"policy {policy.policy_id} written to {args.out}")
    print(f"sweep: {json_path}   plot: {plot_path}")
    return 0


def _print_critical(sensitivity: dict[str, dict[str, Any]], floor: float) -> None:
    if not sensitivity:
        return
    print_table(
        "critical findings among the auto-reported studies (routing.critical_findings)",
        ["finding", "sensitivity", "detected / positives", "95 % interval", "floor"],
        [
            (
                label,
                item["sensitivity"],
                f"{item['detected']} / {item['positives']} "
                f"(of {item['auto_reported']} auto-reported)",
                "  -  "
                if not math.isfinite(item["interval"][0])
                else f"[{item['interval'][0]:.3f}, {item['interval'][1]:.3f}]",
                floor,
            )
            for label, item in sensitivity.items()
        ],
    )


def _print_selection(
    selection: Selection,
    operating: dict[str, Any],
    policy: CalibratedPolicy,
    labels: tuple[str, ...],
    studies: int,
) -> None:
    d = selection.details
    auto = operating["auto_reported"]
    rows: list[tuple[object, ...]] = [
        ("rule", selection.method),
        ("defer cost", selection.cost),
        ("deferral rate", f"{_fmt(operating['deferral_rate'])} (n={studies})"),
        ("auto-reported studies", auto),
        ("auto-report error rate", _with_n(operating["auto_error_rate"], auto)),
        ("expected cost per study", f"{_fmt(operating['expected_cost'])} (n={studies})"),
    ]
    for label in labels:
        rows.append(
            (
                f"{label} sens / spec (auto)",
                f"{_with_n(operating[f'sensitivity/{label}'], operating[f'positives/{label}'])}"
                " / "
                f"{_with_n(operating[f'specificity/{label}'], operating[f'negatives/{label}'])}",
            )
        )
    if selection.method == "target-risk":
        rows += [
            ("procedure", d["procedure"]),
            ("guarantee", d["guarantee"]),
            ("kept / errors", f"{d['kept']} / {d['errors']}"),
        ]
        if d.get("per_site"):
            for site, item in d["sites"].items():
                rows.append(
                    (
                        f"site {site}",
                        f"certified up to {item['certified_cost']:.3f} "
                        f"(p = {item['p_value']:.3g}; {item['kept']} kept, "
                        f"{item['errors']} wrong)",
                    )
                )
        else:
            rows.append(("p-value (H: risk > target)", d["p_value"]))
    rows.append(("policy id", policy.policy_id))
    print_table("selected operating point", ["", "value"], rows)
