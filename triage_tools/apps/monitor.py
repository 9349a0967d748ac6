"""``triage monitor``: a worklist export summarised per site against the policy's expectation.

Input: what ``triage worklist export`` writes (``--format json`` or ``csv``: every item's
decision, defer reasons, site and recalibrated P(error)), or a labelled export (``--labelled``
JSON lines: raw P(error) and OOD score, whose decisions are worked out again with the policy's
recalibration, cost and OOD threshold). The policy file carries what its calibration set
showed per site (``monitoring``): the deferral and OOD rates at its cost and the histogram of
P(error). Per site (and all), the command prints the studies, the deferral and OOD rates with
exact 95 % intervals beside the expected ones, and the population stability index of P(error)
against the calibration set's (:mod:`triage_common.monitoring`).

The same alert conditions as the Prometheus rules of the README's monitoring section:
deferral rate above the expected one plus ``--deferral-margin`` (0.10), OOD rate above twice
the expected one plus ``--ood-margin`` (0.02), PSI above ``--psi-limit`` (0.25), each only for
sites with at least ``--min-studies`` studies (200). Exit status: 0 no alert, 1 an alert
(named on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage_common.console import print_table, write_json
from triage_common.monitoring import MIN_WINDOW, histogram_ks, population_stability_index
from triage_common.policy_format import (
    CalibratedPolicy,
    MonitoringReference,
    PolicyFileError,
    p_error_histogram,
    read_policy,
)

DEFERRAL_MARGIN = 0.10
OOD_MARGIN = 0.02
PSI_LIMIT = 0.25


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``triage monitor``."""
    parser.add_argument(
        "--export",
        type=Path,
        required=True,
        help="a `triage worklist export` file: JSON or CSV items, or --labelled JSON lines",
    )
    parser.add_argument(
        "--policy", type=Path, required=True, help="the policy file the service runs"
    )
    parser.add_argument("--out", type=Path, help="also write the summary as JSON")
    parser.add_argument(
        "--deferral-margin",
        type=float,
        default=DEFERRAL_MARGIN,
        help=f"alert when a site defers more than expected plus this ({DEFERRAL_MARGIN})",
    )
    parser.add_argument(
        "--ood-margin",
        type=float,
        default=OOD_MARGIN,
        help=f"alert when the OOD rate exceeds twice the expected plus this ({OOD_MARGIN})",
    )
    parser.add_argument(
        "--psi-limit",
        type=float,
        default=PSI_LIMIT,
        help=f"alert when P(error)'s PSI against the calibration set exceeds this ({PSI_LIMIT})",
    )
    parser.add_argument(
        "--min-studies",
        type=int,
        default=MIN_WINDOW,
        help=f"alert only on sites with at least this many studies ({MIN_WINDOW})",
    )


@dataclass
class SiteRecords:
    """What the export says about one group of studies."""

    deferred: list[bool] = field(default_factory=list)
    ood: list[bool] = field(default_factory=list)
    p_error: list[float] = field(default_factory=list)


class MonitorInputError(ValueError):
    """The export cannot be read."""


def _items(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise MonitorInputError(f"{path}: expected a JSON list of items")
        return [dict(x) for x in data]
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                items.append(dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise MonitorInputError(f"{path}:{number}: not a JSON object ({exc})") from None
    return items


def read_records(path: Path, policy: CalibratedPolicy) -> dict[str, SiteRecords]:
    """Per-site records of an export (item exports, or labelled lines decided again)."""
    out: dict[str, SiteRecords] = {}
    for number, item in enumerate(_items(path), start=1):
        where = f"{path}: item {number}"
        site = str(item.get("site") or "")
        try:
            if "decision" in item:
                deferred = str(item["decision"]) == "DEFER"
                ood = "OUT_OF_DISTRIBUTION" in str(item.get("defer_reasons", ""))
                p_error = float(item["p_error"])
            else:
                raw = float(item["p_error_raw"])
                ood = not float(item["ood_score"]) <= policy.ood_threshold
                p_error = float(policy.recalibration(raw))
                deferred = ood or not p_error <= policy.defer_cost
        except (KeyError, TypeError, ValueError) as exc:
            raise MonitorInputError(f"{where}: {type(exc).__name__}: {exc}") from None
        records = out.setdefault(site, SiteRecords())
        records.deferred.append(deferred)
        records.ood.append(ood)
        records.p_error.append(p_error)
    return out


def _interval(k: int, n: int) -> tuple[float, float]:
    from triage_tools.calibration.risk_control import binomial_interval

    return binomial_interval(k, n)


def summarise(
    records: dict[str, SiteRecords], reference: MonitoringReference, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[str]]:
    """One summary row per group (all, then each site) and the alerts that fire."""
    groups: dict[str, SiteRecords] = {"all": SiteRecords()}
    for site, rec in sorted(records.items()):
        groups["all"].deferred += rec.deferred
        groups["all"].ood += rec.ood
        groups["all"].p_error += rec.p_error
        groups[site or "(no site)"] = rec
    rows, alerts = [], []
    for name, rec in groups.items():
        ref_group = "all" if name == "all" else reference.group(name)
        n = len(rec.deferred)
        k_defer, k_ood = int(sum(rec.deferred)), int(sum(rec.ood))
        observed = p_error_histogram(np.asarray(rec.p_error))
        ref_hist = reference.p_error_histogram[ref_group]
        psi = population_stability_index(ref_hist, observed) if n else math.nan
        row: dict[str, Any] = {
            "group": name,
            "compared_with": ref_group,
            "studies": n,
            "deferral_rate": k_defer / n if n else math.nan,
            "deferral_interval": _interval(k_defer, n),
            "expected_deferral_rate": reference.deferral_rate[ref_group],
            "ood_rate": k_ood / n if n else math.nan,
            "ood_interval": _interval(k_ood, n),
            "expected_ood_rate": reference.ood_rate[ref_group],
            "p_error_psi": psi,
            "p_error_ks": histogram_ks(ref_hist, observed) if n else math.nan,
        }
        rows.append(row)
        if n < args.min_studies:
            continue
        if row["deferral_rate"] > row["expected_deferral_rate"] + args.deferral_margin:
            alerts.append(
                f"{name}: deferral rate {row['deferral_rate']:.3f} (n={n}) above the expected "
                f"{row['expected_deferral_rate']:.3f} + {args.deferral_margin:g}"
            )
        if row["ood_rate"] > 2 * row["expected_ood_rate"] + args.ood_margin:
            alerts.append(
                f"{name}: OOD rate {row['ood_rate']:.3f} (n={n}) above twice the expected "
                f"{row['expected_ood_rate']:.3f} + {args.ood_margin:g}"
            )
        if psi > args.psi_limit:
            alerts.append(
                f"{name}: P(error) PSI {psi:.3f} (n={n}) against the calibration set's "
                f"({ref_group}) above {args.psi_limit:g}"
            )
    return rows, alerts


def _rate(value: float, interval: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def run(args: argparse.Namespace) -> int:
    """Summarise; exit 0 (no alert), 1 (an alert), 2 (bad input)."""
    for flag, path in (("--export", args.export), ("--policy", args.policy)):
        if not path.exists():
            print(f"triage monitor: {flag} {path} does not exist", file=sys.stderr)
            return 2
    try:
        policy = read_policy(args.policy)
        if policy.monitoring is None:
            raise PolicyFileError(
                f"policy file {args.policy} carries no monitoring reference (format "
                f"{policy.format}); calibrate again with this version of `triage calibrate`"
            )
        records = read_records(args.export, policy)
    except (PolicyFileError, MonitorInputError, OSError, json.JSONDecodeError) as exc:
        print(f"triage monitor: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"triage monitor: {args.export} holds no item", file=sys.stderr)
        return 2
    rows, alerts = summarise(records, policy.monitoring, args)
    print_table(
        f"{args.export} against policy {policy.policy_id} (cost {policy.defer_cost:.3f}; "
        "brackets: exact 95 % intervals)",
        [
            "group",
            "studies",
            "deferral",
            "expected",
            "OOD",
            "expected",
            "P(error) PSI",
            "compared with",
        ],
        [
            (
                r["group"],
                r["studies"],
                _rate(r["deferral_rate"], r["deferral_interval"]),
                r["expected_deferral_rate"],
                _rate(r["ood_rate"], r["ood_interval"]),
                r["expected_ood_rate"],
                r["p_error_psi"],
                r["compared_with"],
            )
            for r in rows
        ],
    )
    if args.out is not None:
        write_json(args.out, {"policy_id": policy.policy_id, "groups": rows, "alerts": alerts})
    for alert in alerts:
        print(f"triage monitor: alert: {alert}", file=sys.stderr)
    return 1 if alerts else 0
