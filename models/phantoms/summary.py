"""What a generated dataset contains, per site: counts, prevalences and the marker confounder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from models.phantoms.study import StudySpec
from triage_common.console import print_table
from triage_common.labels import DEFAULT_LABELS


def phi_coefficient(n11: int, n10: int, n01: int, n00: int) -> float:
    """Phi (Matthews) correlation of a 2x2 table (n<portable><finding>); nan if a margin is 0."""
    denominator = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    if denominator == 0:
        return math.nan
    return (n11 * n00 - n10 * n01) / math.sqrt(denominator)


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def summarize(specs: Sequence[StudySpec], site_order: Sequence[str] = ()) -> dict[str, Any]:
    """Per-site counts, true prevalences and portable-marker/disease association.

    Sites come in ``site_order`` (those with studies), then any others in order of appearance.
    """
    sites: dict[str, dict[str, Any]] = {}
    for spec in specs:
        site = sites.setdefault(
            spec.site.name,
            {
                "heldout": spec.site.heldout,
                "studies": 0,
                "images": 0,
                "patients": set(),
                "positives": dict.fromkeys(DEFAULT_LABELS, 0),
                "table": [0, 0, 0, 0],  # portable&finding, portable&none, plain&finding, plain&none
            },
        )
        site["studies"] += 1
        site["images"] += 2 if spec.lateral else 1
        site["patients"].add(spec.patient.patient_id)
        for label, value in spec.truth.items():
            site["positives"][label] += value
        cell = (0 if spec.portable else 2) + (0 if spec.any_finding else 1)
        site["table"][cell] += 1
    out: dict[str, Any] = {}
    names = [n for n in site_order if n in sites] + [n for n in sites if n not in site_order]
    for name in names:
        site = sites[name]
        n11, n10, n01, n00 = site["table"]
        out[name] = {
            "heldout": site["heldout"],
            "studies": site["studies"],
            "images": site["images"],
            "patients": len(site["patients"]),
            "prevalence": {k: _ratio(v, site["studies"]) for k, v in site["positives"].items()},
            "p_portable_given_finding": _ratio(n11, n11 + n01),
            "p_portable_given_no_finding": _ratio(n10, n10 + n00),
            "phi_portable_finding": phi_coefficient(n11, n10, n01, n00),
        }
    return out


def print_summary(summary: dict[str, Any]) -> None:
    """Print the per-site tables of a dataset summary."""
    print_table(
        "Studies per site",
        ["site", "held out", "patients", "studies", "images"],
        [
            [name, "yes" if s["heldout"] else "no", s["patients"], s["studies"], s["images"]]
            for name, s in summary.items()
        ],
    )
    print_table(
        "True prevalence per site",
        ["site", *DEFAULT_LABELS],
        [[name, *(s["prevalence"][k] for k in DEFAULT_LABELS)] for name, s in summary.items()],
    )
    print_table(
        "PORTABLE marker vs disease per site",
        ["site", "P(portable | finding)", "P(portable | no finding)", "phi"],
        [
            [
                name,
                s["p_portable_given_finding"],
                s["p_portable_given_no_finding"],
                s["phi_portable_finding"],
            ]
            for name, s in summary.items()
        ],
    )
