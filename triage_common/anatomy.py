"""The phantoms' anatomy and burned-in-text masks, and where a Grad-CAM map puts its mass.

``triage synth`` writes, for every frontal image, ``masks/anatomy/<sop_uid>.npz`` beside the
finding masks ``masks/<sop_uid>.npz``: one boolean array per key of :data:`ANATOMY_KEYS`, each the
size of the image (rows x columns of the DICOM file), read with ``np.load``:

``lung_right``, ``lung_left``, ``lungs``
    the lung fields (aerated lung, before the heart and mediastinum are laid over it); the
    patient's right lung is on the image's left;
``heart``
    the cardiac silhouette; ``body``: soft tissue (outside it: air around the patient);
``text_portable``, ``text_marker``, ``text``
    the burned-in PORTABLE label (empty on non-portable films), the laterality marker, and both;
``collimation``
    the unexposed collimator borders (empty when the film is not collimated).

:func:`load_regions` reads them area-averaged to a model's grid (soft masks in [0, 1]); the
error model's anatomy head is trained on them, ``triage evaluate`` measures with them where the
maps sit (:func:`mass_shares`), and so can any later analysis of shortcuts. Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ANATOMY_KEYS: Final = (
    "lung_right",
    "lung_left",
    "lungs",
    "heart",
    "body",
    "text_portable",
    "text_marker",
    "text",
    "collimation",
)
#: The regions the error model reads Grad-CAM mass shares over (``outside_body`` is 1 - body).
REGIONS: Final = ("lungs", "heart", "outside_body", "text", "collimation")


def anatomy_file(root: Path, sop_uid: str) -> Path:
    """``masks/anatomy/<sop_uid>.npz`` of a phantom folder."""
    return root / "masks" / "anatomy" / f"{sop_uid}.npz"


def has_anatomy(root: Path, sop_uids: Sequence[str]) -> bool:
    """Whether every image of the table has its anatomy file (phantoms written by this
    version of ``triage synth``)."""
    return bool(sop_uids) and all(s and anatomy_file(root, s).is_file() for s in sop_uids)


def area_resize(mask: npt.NDArray[np.bool_] | F32, size: int) -> F32:
    """Share of each ``size`` x ``size`` cell the mask covers (cells of equal pixel counts;
    the image side is cropped to a multiple of ``size`` first)."""
    m = np.asarray(mask, dtype=np.float32)
    k = m.shape[0] // size
    if k < 1:
        raise ValueError(f"cannot reduce a {m.shape[0]}-pixel mask to {size} cells")
    m = m[: k * size, : k * size]
    out: F32 = m.reshape(size, k, size, k).mean(axis=(1, 3))
    return out


def region_masks(masks: dict[str, npt.NDArray[np.bool_]], size: int) -> F32:
    """The :data:`REGIONS` of one image as soft masks (R, size, size)."""
    out = np.empty((len(REGIONS), size, size), dtype=np.float32)
    for r, name in enumerate(REGIONS):
        if name == "outside_body":
            out[r] = 1.0 - area_resize(masks["body"], size)
        else:
            out[r] = area_resize(masks[name], size)
    return out


def read_anatomy(root: Path, sop_uid: str) -> dict[str, npt.NDArray[np.bool_]]:
    """The anatomy masks of one image of a phantom folder (``FileNotFoundError`` naming the
    file when it has none)."""
    path = anatomy_file(root, sop_uid)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: anatomy masks come from `triage synth` (phantom folders)"
        )
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_regions(root: Path, sop_uids: Sequence[str], size: int) -> F32:
    """(N, R, size, size) soft region masks of the images ``sop_uids`` of a phantom folder.

    Raises ``FileNotFoundError`` naming the first image without an anatomy file.
    """
    out = np.empty((len(sop_uids), len(REGIONS), size, size), dtype=np.float32)
    for i, sop in enumerate(sop_uids):
        out[i] = region_masks(read_anatomy(root, sop), size)
    return out


def mass_shares(cams: F32, regions: F32) -> F64:
    """(N, L, R) share of each map's mass inside each region.

    ``cams`` (N, L, h, w) and ``regions`` (N, R, s, s) with ``s`` a multiple of ``h`` or equal:
    each map is spread evenly over the finer grid first. A map with no mass gives NaN.
    """
    c = np.asarray(cams, dtype=np.float64)
    g = np.asarray(regions, dtype=np.float64)
    h, w = c.shape[2], c.shape[3]
    s = g.shape[-1]
    if s % h or s % w:
        raise ValueError(f"region grid {s} is not a multiple of the map shape {(h, w)}")
    fine = np.repeat(np.repeat(c, s // h, axis=2), s // w, axis=3)
    total = fine.sum(axis=(2, 3))  # (N, L)
    inside = np.einsum("nlhw,nrhw->nlr", fine, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares: F64 = inside / total[:, :, None]
    shares[~(total > 0)] = np.nan
    return shares
