"""Pixel grids, bounding boxes, a fast separable blur and smooth random fields (numpy only).

All phantom geometry is in normalised image coordinates: ``x`` grows to the image right, ``y``
grows downwards, both in [0, 1] at pixel centres. Grids and interpolation matrices are cached per
image size, so rendering a study allocates only its own layers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Grid:
    """Normalised pixel-centre coordinates of a square image of ``size`` pixels."""

    size: int
    x: F32  # shape (size,)
    y: F32  # shape (size,)

    @property
    def scale(self) -> float:
        """Pixels per 512-pixel reference pixel (line widths, blur and fonts scale with it)."""
        return self.size / 512.0


@functools.lru_cache(maxsize=16)
def grid_for(size: int) -> Grid:
    """The cached grid for ``size`` x ``size`` pixels."""
    coords = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    coords.setflags(write=False)
    return Grid(size=size, x=coords, y=coords)


@dataclass(frozen=True)
class Box:
    """A rectangular window of the image: rows r0:r1 and columns c0:c1."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def rows(self) -> slice:
        return slice(self.r0, self.r1)

    @property
    def cols(self) -> slice:
        return slice(self.c0, self.c1)

    @property
    def index(self) -> tuple[slice, slice]:
        return (self.rows, self.cols)

    @property
    def empty(self) -> bool:
        return self.r1 <= self.r0 or self.c1 <= self.c0


def box(grid: Grid, x0: float, x1: float, y0: float, y1: float) -> Box:
    """The pixel window covering normalised ``[x0, x1] x [y0, y1]`` (clipped to the image)."""
    n = grid.size
    return Box(
        r0=min(max(math.floor(min(y0, y1) * n) - 1, 0), n),
        r1=min(max(math.ceil(max(y0, y1) * n) + 1, 0), n),
        c0=min(max(math.floor(min(x0, x1) * n) - 1, 0), n),
        c1=min(max(math.ceil(max(x0, x1) * n) + 1, 0), n),
    )


@functools.lru_cache(maxsize=32)
def _gaussian_taps(sigma: float) -> tuple[float, ...]:
    radius = blur_reach(sigma)
    k = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    k /= k[0] + 2.0 * k[1:].sum()
    return tuple(float(v) for v in k)


def blur_reach(sigma: float) -> int:
    """How many pixels a blur of ``sigma`` pixels moves a change (the kernel radius)."""
    return max(1, math.ceil(2.2 * sigma))


def _blur_axis(img: F32, taps: tuple[float, ...], axis: int) -> F32:
    """Symmetric 1-D convolution along ``axis`` with edge replication (no padded copy)."""
    view = img if axis == 0 else img.T
    n = view.shape[0]
    out = img * np.float32(taps[0])
    out_view = out if axis == 0 else out.T
    pair = np.empty_like(view)
    for k in range(1, len(taps)):
        if 2 * k >= n:
            np.add(view[np.clip(np.arange(n) - k, 0, n - 1)],
                   view[np.clip(np.arange(n) + k, 0, n - 1)], out=pair)  # fmt: skip
        else:
            np.add(view[: n - 2 * k], view[2 * k :], out=pair[k : n - k])
            np.add(view[k : 2 * k], view[0], out=pair[:k])
            np.add(view[n - 2 * k : n - k], view[n - 1], out=pair[n - k :])
        pair *= np.float32(taps[k])
        out_view += pair
    return out


def blur(img: F32, sigma: float) -> F32:
    """Separable Gaussian blur (edge-replicating), ``sigma`` in pixels; a copy for sigma < 0.2."""
    if sigma < 0.2:
        return img.copy()
    taps = _gaussian_taps(round(float(sigma), 3))
    return _blur_axis(_blur_axis(img, taps, 0), taps, 1)


@functools.lru_cache(maxsize=32)
def _lerp_index(n_small: int, n_big: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], F32]:
    """Source indices and weights for linear upsampling (cell centres aligned, edges clamped)."""
    pos = np.clip((np.arange(n_big) + 0.5) / n_big * n_small - 0.5, 0, n_small - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_small - 1)
    frac = (pos - lo).astype(np.float32)
    for a in (lo, hi, frac):
        a.setflags(write=False)
    return lo, hi, frac


def upsample(small: F32, size: int) -> F32:
    """Bilinear upsampling of a small square array to ``size`` x ``size`` (no BLAS threads)."""
    if size == 2 * small.shape[0] and small.shape[0] >= 2:
        return _double(_double(small, 0), 1)
    return _upsample_any(small, size)


def _upsample_any(small: F32, size: int) -> F32:
    """Bilinear upsampling by any factor (gathers rows, then columns)."""
    lo, hi, frac = _lerp_index(small.shape[0], size)
    rows = small[lo] * (1.0 - frac)[:, None] + small[hi] * frac[:, None]
    out = np.take(rows, lo, axis=1)
    out *= 1.0 - frac
    right = np.take(rows, hi, axis=1)
    right *= frac
    out += right
    result: F32 = out.astype(np.float32, copy=False)
    return result


def _double(src: F32, axis: int) -> F32:
    """Linear upsampling by exactly 2 along ``axis``: the same arithmetic as ``_upsample_any``.

    New samples sit a quarter of a source cell from each source sample, so each is
    ``0.25 * near-neighbour + 0.75 * own``, the end ones copies of the edge samples; the two
    weighted copies are computed once and added in the order ``_upsample_any`` uses, which
    gives bit-identical results from contiguous slices instead of gathers.
    """
    view = src if axis == 0 else src.T
    n = view.shape[0]
    quarter = view * np.float32(0.25)
    three = view * np.float32(0.75)
    other = view.shape[1]
    out = np.empty((n, 2, other) if axis == 0 else (other, n, 2), dtype=np.float32)
    pairs = out if axis == 0 else out.transpose(1, 2, 0)  # [i, 0]: sample 2i, [i, 1]: 2i + 1
    np.add(quarter[:-1], three[1:], out=pairs[1:, 0])
    np.add(three[:-1], quarter[1:], out=pairs[:-1, 1])
    pairs[0, 0] = view[0]
    pairs[-1, 1] = view[-1]
    doubled: F32 = out.reshape(2 * n, -1) if axis == 0 else out.reshape(-1, 2 * n)
    return doubled


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> F32:
    """A smooth random field (about unit variance) with ``cells`` blobs across the image."""
    cells = max(2, min(cells, size))
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return upsample(small, size) * np.float32(1.5)


def triangular_noise(rng: np.random.Generator, shape: tuple[int, int]) -> F32:
    """Zero-mean, unit-variance, nearly Gaussian noise (sum of two uniforms), cheap to draw."""
    raw = np.frombuffer(rng.bytes(2 * shape[0] * shape[1]), dtype=np.uint8).reshape(2, *shape)
    total = raw[0].astype(np.uint16)
    total += raw[1]  # exact: the float sum of these integers is the same number
    out: F32 = total.astype(np.float32)
    out -= np.float32(255.0)
    out *= np.float32(1.0 / (255.0 * math.sqrt(1.0 / 6.0)))
    return out


def soft_step(value: F32, width: float, out: F32 | None = None) -> F32:
    """0 for value << 0, 1 for value >> 0, linear over ``width`` around 0 (clipped).

    ``out=value`` works in place.
    """
    out = np.multiply(value, np.float32(1.0 / width), out=out)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def dilate(mask: Bool, radius: int) -> Bool:
    """Binary dilation by a (2 radius + 1) square (separable running maximum)."""
    if radius <= 0:
        return mask.copy()
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for k in range(1, radius + 1):
            if axis == 0:
                out[k:] |= src[:-k]
                out[:-k] |= src[k:]
            else:
                out[:, k:] |= src[:, :-k]
                out[:, :-k] |= src[:, k:]
    return out
