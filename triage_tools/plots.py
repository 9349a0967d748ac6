"""PNG figures of ``triage calibrate`` and ``triage evaluate`` (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_calibration(
    path: Path,
    coverage: F64,
    risk: F64,
    rows: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, Any],
    target_risk: float | None = None,
) -> None:
    """Risk-coverage of the error model, and the cost sweep with the chosen cost marked."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(coverage, risk, color="tab:blue", label="error model (P(error) order)")
    base = float(risk[-1]) if len(risk) else math.nan
    left.axhline(base, color="grey", ls=":", lw=1, label=f"no deferral ({base:.3f})")
    if target_risk is not None:
        left.axhline(target_risk, color="tab:red", ls="--", lw=1, label=f"target {target_risk:g}")
    op_cov = 1.0 - float(chosen["deferral_rate"])
    op_risk = float(chosen["auto_error_rate"])
    if math.isfinite(op_risk):
        left.plot([op_cov], [op_risk], "o", color="tab:red", label="operating point")
    left.set_xlabel("coverage (share auto-reported)")
    left.set_ylabel("error rate of auto-reported studies")
    left.set_xlim(0, 1)
    left.set_ylim(bottom=0)
    left.set_title("risk-coverage (calibration set)")
    left.legend(fontsize=8)
    costs = [float(r["defer_cost"]) for r in rows]
    for key, label, color in (
        ("deferral_rate", "deferral rate", "tab:orange"),
        ("auto_error_rate", "auto-report error rate", "tab:blue"),
        ("expected_cost", "expected cost per study", "tab:green"),
    ):
        right.plot(costs, [float(r[key]) for r in rows], label=label, color=color)
    right.axvline(
        float(chosen["defer_cost"]),
        color="tab:red",
        ls="--",
        lw=1,
        label=f"chosen cost {float(chosen['defer_cost']):.3f}",
    )
    right.set_xlabel("defer cost")
    right.set_xlim(0, 1)
    right.set_ylim(0, 1.02)
    right.set_title("cost sweep")
    right.legend(fontsize=8)
    _save(fig, path)


def plot_risk_coverage(
    path: Path, title: str, curves: Mapping[str, tuple[F64, F64]], aurcs: Mapping[str, float]
) -> None:
    """One risk-coverage curve per method (coverage, selective risk)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for name, (coverage, risk) in curves.items():
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax.plot(coverage, risk, style, label=f"{name} (AURC {aurcs.get(name, math.nan):.4f})")
    ax.set_xlabel("coverage (share auto-reported)")
    ax.set_ylabel("error rate of auto-reported studies")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_group_bars(
    path: Path,
    title: str,
    groups: Sequence[str],
    values: Mapping[str, Sequence[float]],
    ylabel: str,
    intervals: Mapping[str, Sequence[tuple[float, float]]] | None = None,
) -> None:
    """Grouped bars: one group per site, one bar per method (with 95% intervals if given)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.4))
    width = 0.8 / max(1, len(values))
    x = np.arange(len(groups))
    for k, (name, ys) in enumerate(values.items()):
        heights = np.array([v if math.isfinite(v) else 0.0 for v in ys])
        err = None
        if intervals and name in intervals:
            lo = [
                max(0.0, h - a) if math.isfinite(a) else 0.0
                for h, (a, _) in zip(heights, intervals[name], strict=True)
            ]
            hi = [
                max(0.0, b - h) if math.isfinite(b) else 0.0
                for h, (_, b) in zip(heights, intervals[name], strict=True)
            ]
            err = np.array([lo, hi])
        ax.bar(
            x + (k - (len(values) - 1) / 2) * width, heights, width, yerr=err, label=name, capsize=2
        )
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
