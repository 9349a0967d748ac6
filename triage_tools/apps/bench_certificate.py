"""``triage bench certificate``: does the certified risk hold out of sample?

For ``--pairs`` pairs of fresh phantom sets (a calibration set and a separate test set, each
from its own seed: new patients), the bench calibrates a policy on the calibration set for each
``--target-risk`` at ``--delta``, applies it to the test set exactly as the service would
(recalibrated P(error) at most the cost, not OOD) and counts the pairs whose realised
auto-report error rate on the test set exceeds the target, overall and per site. Procedures:

``today``     the certificate before cluster-awareness: P(error) recalibrated on the whole
              calibration set, exact binomial tests over studies (as if independent) on the
              same studies;
``cluster``   ``triage calibrate``'s default: recalibration fitted on 30 % of the patients, the
              certificate on the others with patient-level betting tests;
``per-site``  ``cluster`` with ``--per-site``: every site certified at once.

Sets are written with ``triage synth`` (child processes) under ``--out``/sets and reused when
present; the served model's outputs are cached per set and bundle. A certified target allows
``delta`` of the pairs to exceed it (plus the test set's own sampling noise), so with 16 pairs
at delta 0.1 about 1.6 are expected and at most 3 is the bar (issue 15).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import Bundle
from triage_common.console import print_table, track, write_json
from triage_common.datasets import load_dataset
from triage_common.policy_format import Recalibration
from triage_tools.calibration.calibrate import (
    DEFAULT_GRID,
    CalibrationSet,
    recalibrate,
    select_cost,
    split_by_patient,
)
from triage_tools.calibration.cli_common import open_bundle
from triage_tools.calibration.served import ServedOptions, run_served

PROCEDURES = ("today", "cluster", "per-site")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage bench certificate``."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for sets and results")
    parser.add_argument("--pairs", type=int, default=16, help="calibration/test pairs (16)")
    parser.add_argument(
        "--calibration-studies", type=int, default=1500, help="studies per calibration set"
    )
    parser.add_argument("--test-studies", type=int, default=2500, help="studies per test set")
    parser.add_argument("--seed", type=int, default=20000, help="seed of the first set (20000)")
    parser.add_argument("--size", type=int, default=256, help="phantom size in pixels (256)")
    parser.add_argument("--scenario", default="confounded", help="phantom scenario (confounded)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (2)")
    parser.add_argument(
        "--target-risk", type=float, nargs="+", default=[0.25, 0.2], help="targets (0.25 0.2)"
    )
    parser.add_argument("--delta", type=float, default=0.1, help="allowed failure rate (0.1)")
    parser.add_argument(
        "--procedures",
        nargs="+",
        choices=PROCEDURES,
        default=list(PROCEDURES),
        help="which certificates to compare (all)",
    )


def _synth(folder: Path, studies: int, seed: int, args: argparse.Namespace) -> None:
    if (folder / "labels.csv").exists():
        return
    cmd = [sys.executable, "-m", "triage_tools.cli", "synth", str(folder)]
    cmd += ["--studies", str(studies), "--seed", str(seed), "--size", str(args.size)]
    cmd += ["--scenario", args.scenario, "--workers", str(args.workers)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def served_set(bundle: Bundle, folder: Path) -> CalibrationSet:
    """The served model's outputs on a phantom folder, cached beside it per bundle."""
    cache = folder / f".served-{bundle.bundle_id}.npz"
    if cache.exists():
        with np.load(cache) as d:
            return CalibrationSet(
                labels=bundle.labels,
                thresholds=np.asarray(bundle.thresholds, dtype=np.float64),
                probabilities=d["probabilities"],
                p_error_raw=d["p_error_raw"],
                ood_score=d["ood_score"],
                truth=d["truth"],
                sites=tuple(str(s) for s in d["sites"]),
                source=str(folder),
                patient_ids=tuple(str(s) for s in d["patients"]),
            )
    data = load_dataset(folder, bundle.labels, uncertain="ignore")
    cal = run_served(bundle, data, ServedOptions(progress=False)).cal
    np.savez(
        cache,
        probabilities=cal.probabilities,
        p_error_raw=cal.p_error_raw,
        ood_score=cal.ood_score,
        truth=cal.truth,
        sites=np.asarray(cal.sites),
        patients=np.asarray(cal.patient_ids),
    )
    return cal


def calibrate(
    cal: CalibrationSet, procedure: str, target: float, delta: float, ood: float
) -> tuple[float, Recalibration] | None:
    """The cost and recalibration map ``procedure`` certifies on ``cal`` (None: refused)."""
    grid = DEFAULT_GRID
    if procedure == "today":
        recal, _ = recalibrate(cal)
        cert, method = replace(cal, patient_ids=()), "binomial"  # studies as the units
    else:
        fit, cert = split_by_patient(cal, 0.3, 0)
        recal, _ = recalibrate(fit, cert)
        method = "cluster"
    try:
        chosen = select_cost(
            cert,
            recal(cert.p_error_raw),
            ood,
            target_risk=target,
            delta=delta,
            grid=grid,
            method=method,  # type: ignore[arg-type]
            per_site=procedure == "per-site",
        )
    except ValueError:
        return None
    return chosen.cost, recal


def realised(
    test: CalibrationSet, cost: float, recal: Recalibration, ood: float
) -> dict[str, dict[str, float]]:
    """Realised risk and deferral of a policy on the test set, overall and per site."""
    auto = (recal(test.p_error_raw) <= cost) & (test.ood_score <= ood)
    wrong = test.wrong.astype(bool)
    sites = np.asarray(test.sites, dtype=object)
    out = {}
    for name, rows in [("all", np.ones(len(test), dtype=bool))] + [
        (str(s), sites == s) for s in sorted(set(test.sites))
    ]:
        kept = auto & rows
        out[name] = {
            "risk": float(wrong[kept].mean()) if kept.any() else math.nan,
            "deferral": 1.0 - float(kept.sum() / max(rows.sum(), 1)),
            "auto_reported": int(kept.sum()),
        }
    return out


def run(args: argparse.Namespace) -> int:
    """Run the pairs; print the table and write ``results.json``."""
    if not args.bundle.exists():
        print(f"triage bench certificate: --bundle {args.bundle} does not exist", file=sys.stderr)
        return 2
    bundle = open_bundle(args.bundle)
    ood = bundle.ood_threshold
    sets = args.out / "sets"
    results: list[dict[str, Any]] = []
    for i in track(range(args.pairs), args.pairs, "calibration/test pairs"):
        cal_seed, test_seed = args.seed + 2 * i, args.seed + 2 * i + 1
        cal_dir, test_dir = sets / f"cal-{cal_seed}", sets / f"test-{test_seed}"
        _synth(cal_dir, args.calibration_studies, cal_seed, args)
        _synth(test_dir, args.test_studies, test_seed, args)
        cal, test = served_set(bundle, cal_dir), served_set(bundle, test_dir)
        for target in args.target_risk:
            for procedure in args.procedures:
                chosen = calibrate(cal, procedure, target, args.delta, ood)
                row: dict[str, Any] = {
                    "pair": i,
                    "calibration_seed": cal_seed,
                    "test_seed": test_seed,
                    "target": target,
                    "procedure": procedure,
                    "certified": chosen is not None,
                }
                if chosen is not None:
                    row["cost"] = chosen[0]
                    row["test"] = realised(test, chosen[0], chosen[1], ood)
                results.append(row)
    write_json(args.out / "results.json", {"delta": args.delta, "rows": results})
    table = []
    for target in args.target_risk:
        for procedure in args.procedures:
            rows = [r for r in results if r["target"] == target and r["procedure"] == procedure]
            done = [r for r in rows if r["certified"]]
            sites = sorted({s for r in done for s in r["test"] if s != "all"})
            over = sum(r["test"]["all"]["risk"] > target for r in done)
            per_site = {
                s: sum(r["test"][s]["risk"] > target for r in done if s in r["test"]) for s in sites
            }
            table.append(
                (
                    f"{target:g}",
                    procedure,
                    f"{len(done)} / {len(rows)}",
                    f"{over} / {len(done)}",
                    ", ".join(f"{s}: {n}" for s, n in per_site.items()),
                    float(np.mean([r["test"]["all"]["deferral"] for r in done]))
                    if done
                    else math.nan,
                    float(np.mean([r["test"]["all"]["risk"] for r in done])) if done else math.nan,
                )
            )
    print_table(
        f"realised auto-report risk on fresh test sets ({args.pairs} pairs of "
        f"{args.calibration_studies} / {args.test_studies} studies, delta {args.delta:g})",
        [
            "target",
            "procedure",
            "certified",
            "test risk > target",
            "per site > target",
            "mean test deferral",
            "mean test risk",
        ],
        table,
    )
    print(f"results: {args.out / 'results.json'}")
    return 0
