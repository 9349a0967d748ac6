"""The Latent Shift autoencoder: SSIM/PSNR, reconstruction report, `triage train autoencoder`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.autoencoder import (
    AutoencoderConfig,
    ConvAutoencoder,
    gaussian_window,
    load_autoencoder_run,
    psnr,
    reconstruction_report,
    ssim,
)
from triage_common.preprocess import PreprocessSpec
from triage_tools.cli import main


def _constant(value: float, size: int = 32) -> Tensor:
    return torch.full((1, 1, size, size), value, dtype=torch.float64)


def test_ssim_of_an_image_with_itself_is_one() -> None:
    """SSIM(x, x) is 1 for a textured image."""
    x = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(ssim(x, x).numpy(), [1.0, 1.0], atol=1e-12)


def test_ssim_of_two_constant_images_is_the_luminance_term() -> None:
    """Two flat images give (2 a b + C1) / (a^2 + b^2 + C1), the hand-computed luminance term."""
    a, b, c1 = 0.5, 0.25, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # 0.80006
    assert float(ssim(_constant(a), _constant(b))[0]) == pytest.approx(expected, rel=1e-9)


def test_gaussian_window_is_normalised_and_symmetric() -> None:
    """The 11 x 11 window sums to one and peaks at its centre."""
    w = gaussian_window(11, 1.5)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(w, w.T) and int(w.argmax()) == 5 * 11 + 5


def test_psnr_of_a_known_offset() -> None:
    """An error of 0.1 everywhere at data range 1 is 20 dB."""
    assert float(psnr(_constant(0.3), _constant(0.4))[0]) == pytest.approx(20.0, abs=1e-9)


class _Shift(nn.Module):
    """Adds a constant in normalised units: a reconstruction with a known error."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x: Tensor) -> Tensor:
        return x + self.offset


def test_reconstruction_report_on_a_known_case() -> None:
    """A reconstruction 0.1 brighter in display units reports 20 dB, MAE 0.1, the flat SSIM."""
    spec = PreprocessSpec(size=32)
    images = np.full((3, 1, 32, 32), (0.5 - spec.mean) / spec.std, dtype=np.float32)
    report = reconstruction_report(_Shift(0.1 / spec.std), images, spec)
    c1 = 0.01**2
    assert report.images == 3
    assert report.psnr_db == pytest.approx(20.0, abs=1e-3)
    assert report.mae == pytest.approx(0.1, abs=1e-5)
    assert report.ssim == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1), abs=1e-5)
    perfect = reconstruction_report(nn.Identity(), images, spec)
    assert perfect.ssim == pytest.approx(1.0, abs=1e-6) and perfect.mae == 0.0


def test_latent_and_reconstruction_shapes() -> None:
    """At 128 px the latent is 64 x 8 x 8 and the reconstruction has the input's shape."""
    model = ConvAutoencoder(AutoencoderConfig(size=128))
    x = torch.zeros(2, 1, 128, 128)
    assert model.encode(x).shape == (2, *model.config.latent_shape) == (2, 64, 8, 8)
    assert model(x).shape == x.shape
    with pytest.raises(ValueError, match="multiple of 16"):
        AutoencoderConfig(size=120)


@pytest.fixture(name="tiny_folder", scope="module")
def fixture_tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-study phantom folder at 64 px."""
    out = tmp_path_factory.mktemp("ae-phantoms")
    assert main(["synth", str(out), "--studies", "16", "--seed", "5", "--size", "64"]) == 0
    return out


def test_cli_trains_and_writes_its_run_folder(tiny_folder: Path, tmp_path: Path) -> None:
    """`triage train autoencoder` writes weights and a JSON report that load back."""
    run = tmp_path / "ae"
    args = ["train", "autoencoder", "--data", str(tiny_folder), "--out", str(run)]
    assert main([*args, "--size", "32", "--epochs", "2", "--seed", "1"]) == 0
    meta = json.loads((run / "autoencoder.json").read_text())
    assert meta["epochs"] == 2 and meta["preprocess"]["size"] == 32
    assert meta["images"]["train"] > 0 and meta["images"]["heldout"] > 0
    assert meta["heldout"]["psnr_db"] > 0 and -1 <= meta["heldout"]["ssim"] <= 1
    assert meta["seconds"] > 0 and len(meta["loss_history"]) == 2
    loaded = load_autoencoder_run(run)
    assert loaded.spec.size == 32
    assert loaded.model(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_cli_refuses_a_size_that_is_not_a_multiple_of_16(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--size 40 is refused in one line naming the flag, exit status 2, nothing written."""
    args = ["train", "autoencoder", "--data", str(tiny_folder), "--out", str(tmp_path / "x")]
    assert main([*args, "--size", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--size 40" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
