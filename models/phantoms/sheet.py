"""Contact sheets: a grid of phantoms per finding and per site, masks outlined, captioned."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from triage_common.dicom_image import load_display
from triage_common.labels import DEFAULT_LABELS, severity_column, truth_column

F32 = npt.NDArray[np.float32]
_COLOURS = {
    "Cardiomegaly": "#ff5a5a",
    "Edema": "#ffd23f",
    "Pleural Effusion": "#3fa7ff",
    "Pneumothorax": "#5aff8c",
}


def _spread(rows: list[dict[str, str]], n: int, key: str | None) -> list[dict[str, str]]:
    """Up to ``n`` rows spread over the range of ``key`` (all rows kept in order if few)."""
    if key is not None:
        rows = sorted(rows, key=lambda r: float(r[key]))
    if len(rows) <= n:
        return rows
    picks = np.linspace(0, len(rows) - 1, n).round().astype(int)
    return [rows[i] for i in picks]


def _findings(row: dict[str, str]) -> list[str]:
    return [label for label in DEFAULT_LABELS if row[truth_column(label)] == "1"]


def _caption(row: dict[str, str]) -> str:
    present = _findings(row)
    parts = [f"{label} {float(row[severity_column(label)]):.2f}" for label in present]
    flags = " PORTABLE" if row["portable"] == "1" else ""
    return f"{row['site']}\n{row['view']} {row['marker']}{flags}\n" + (
        "\n".join(parts) if parts else "no finding"
    )


def build_contact_sheet(data: Path, out: Path, per_row: int = 6) -> int:
    """Write a PNG contact sheet of the dataset in ``data``; returns the number of tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (data / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    frontal = [r for r in rows if r["view"] in ("PA", "AP")]
    sections: list[tuple[str, list[dict[str, str]]]] = []
    for label in DEFAULT_LABELS:
        positive = [r for r in frontal if r[truth_column(label)] == "1"]
        sections.append(
            (f"{label} (by severity)", _spread(positive, per_row, severity_column(label)))
        )
    normal = [r for r in frontal if not _findings(r)]
    sections.append(("No finding", _spread(normal, per_row, None)))
    for site in sorted({r["site"] for r in rows}):
        at_site = [r for r in rows if r["site"] == site]
        sections.append((f"Site: {site}", _spread(at_site, per_row, None)))
    sections = [(title, picks) for title, picks in sections if picks]
    n_rows = len(sections)
    fig, axes = plt.subplots(
        n_rows, per_row, figsize=(2.3 * per_row, 2.95 * n_rows), squeeze=False, facecolor="black"
    )
    tiles = 0
    for r, (title, picks) in enumerate(sections):
        axes[r][0].set_ylabel(title, color="white", fontsize=9)
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(picks):
                continue
            row = picks[c]
            ax.imshow(load_display(data / row["path"]), cmap="gray", vmin=0.0, vmax=1.0)
            _outline(ax, data / "masks" / f"{row['sop_uid']}.npz", _findings(row))
            ax.set_title(_caption(row), color="white", fontsize=6.5, loc="left")
            tiles += 1
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="black")
    plt.close(fig)
    return tiles


def _outline(ax: Any, mask_path: Path, labels: list[str]) -> None:
    if not labels or not mask_path.exists():
        return
    with np.load(mask_path) as masks:
        for label in labels:
            if label in masks and masks[label].any():
                ax.contour(masks[label].astype(np.float32), levels=[0.5], colors=_COLOURS[label],
                           linewidths=0.8)  # fmt: skip
