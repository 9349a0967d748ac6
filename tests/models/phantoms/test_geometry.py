"""The renderer's numeric building blocks: upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from models.phantoms.geometry import _upsample_any, upsample


@pytest.mark.parametrize("n", [2, 3, 17, 256])
def test_doubling_matches_general_bilinear_bit_for_bit(n: int) -> None:
    """Upsampling by exactly two (512-px smooth layers) gives the general path's exact floats."""
    small = np.random.default_rng(n).standard_normal((n, n)).astype(np.float32)
    fast = upsample(small, 2 * n)
    assert fast.dtype == np.float32 and fast.shape == (2 * n, 2 * n)
    np.testing.assert_array_equal(fast, _upsample_any(small, 2 * n))


def test_doubling_a_ramp_gives_a_ramp() -> None:
    """A linear ramp stays linear inside, with quarter-cell samples and clamped ends."""
    small = np.tile(np.arange(4, dtype=np.float32), (4, 1))
    row = upsample(small, 8)[0]
    np.testing.assert_allclose(row, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    np.testing.assert_array_equal(upsample(small.T.copy(), 8)[:, 0], row)
