"""A small convolutional autoencoder for Latent Shift, its training loop and its run folder.

The Latent Shift paper (Cohen et al., MIDL 2021) uses a ResNet autoencoder trained with an
elastic (squared + absolute) loss on the same kind of images as the classifier. This one is
deliberately small so that it trains in minutes on two CPU cores: four stride-2 convolutions
take the canonical 1-channel input (``PreprocessSpec``, e.g. 128 px) to a spatial latent of
``latent_channels x S/16 x S/16`` (64 x 8 x 8 at 128 px); the decoder mirrors it with
nearest-neighbour upsampling + convolution (no checkerboard) and a linear output in the
classifier's normalised units.

Reconstruction quality is reported on held-out patients as PSNR and SSIM in display units
(``x * std + mean``, data range 1). SSIM is Wang et al. (2004) with an 11 x 11 Gaussian window of
sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, averaged over the valid (unpadded) positions.

A run folder holds ``autoencoder.pt`` (a plain state dict) and ``autoencoder.json`` (format,
architecture, preprocessing, epochs, PSNR/SSIM, seconds).

Size and time on this 2-core machine: about 150 k parameters; one step of 32 images at 128 px
takes about 0.35 s (forward + backward + Adam), i.e. about 35 s per epoch of 3,000 images.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.runs import read_split, split_indices
from models.training import batches, count_parameters, save_atomic, seed_everything
from triage_common.console import print_table, track, write_json
from triage_common.datasets import ImageTable, load_dataset, preprocessed_images
from triage_common.logging import get_logger
from triage_common.preprocess import PreprocessSpec

log = get_logger(__name__)

AUTOENCODER_FORMAT = "cxr-triage/autoencoder/1"
DOWNSAMPLING = 16  # four stride-2 stages


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of :class:`ConvAutoencoder` (recorded in ``autoencoder.json``)."""

    size: int = 128
    in_channels: int = 1
    widths: tuple[int, ...] = (8, 16, 32, 64)
    latent_channels: int = 64
    double_from: int = 1  # stages from this one on get a second 3x3 convolution
    head: str = "pixel_shuffle"  # last stage: "pixel_shuffle" (3x3 conv to 4C, PixelShuffle 2)
    # or "upsample" (nearest 2x, two 3x3 convolutions at full size: 2x slower to train)

    def __post_init__(self) -> None:
        factor = 2 ** len(self.widths)
        if self.head not in ("pixel_shuffle", "upsample"):
            raise ValueError(f"head {self.head!r}: use 'pixel_shuffle' or 'upsample'")
        if self.size % factor != 0:
            raise ValueError(f"size {self.size} is not a multiple of {factor}")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latent of one image."""
        side = self.size // 2 ** len(self.widths)
        return (self.latent_channels, side, side)


class ConvAutoencoder(nn.Module):
    """E(x): [B, 1, S, S] -> z [B, latent, S/16, S/16]; D(z) back to [B, 1, S, S]."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        act = 0.1  # LeakyReLU slope
        enc: list[nn.Module] = []
        channels = config.in_channels
        for stage, width in enumerate(config.widths):
            enc += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.LeakyReLU(act)]
            if stage >= config.double_from:
                enc += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(act)]
            channels = width
        enc.append(nn.Conv2d(channels, config.latent_channels, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(config.latent_channels, channels, 3, padding=1)]
        ups = (*reversed(config.widths[:-1]), config.widths[0])
        if config.head == "pixel_shuffle":  # the last stage goes to full size by PixelShuffle
            ups = ups[:-1]
        for j, width in enumerate(ups):
            dec += [nn.LeakyReLU(act), nn.Upsample(scale_factor=2, mode="nearest")]
            dec += [nn.Conv2d(channels, width, 3, padding=1)]
            if len(ups) - 1 - j >= config.double_from:
                dec += [nn.LeakyReLU(act), nn.Conv2d(width, width, 3, padding=1)]
            channels = width
        if config.head == "pixel_shuffle":
            dec += [nn.LeakyReLU(act), nn.Conv2d(channels, 4 * config.in_channels, 3, padding=1)]
            dec.append(nn.PixelShuffle(2))
        else:
            dec += [nn.LeakyReLU(act), nn.Conv2d(channels, config.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: Tensor) -> Tensor:
        """The latent z = E(x)."""
        out: Tensor = self.encoder(x)
        return out

    def decode(self, z: Tensor) -> Tensor:
        """The reconstruction D(z)."""
        out: Tensor = self.decoder(z)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """D(E(x))."""
        return self.decode(self.encode(x))


def elastic_loss(recon: Tensor, target: Tensor) -> Tensor:
    """The paper's elastic loss: mean squared error + mean absolute error."""
    return F.mse_loss(recon, target) + F.l1_loss(recon, target)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image of ``[B, C, H, W]`` (inf when equal)."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 2-D Gaussian ``[size, size]`` (the outer product of a 1-D one)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a: Tensor,
    b: Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean SSIM per image of ``[B, C, H, W]`` (Wang et al. 2004, Gaussian window, valid area).

    Each local mean, variance and covariance is a Gaussian-weighted sum over a ``window`` x
    ``window`` neighbourhood; the map ``((2 mu_a mu_b + C1)(2 s_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)
    (s_a^2 + s_b^2 + C2))`` with ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` is averaged over positions
    where the window fits and over channels.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"ssim needs two [B, C, H, W] tensors of one shape, got {a.shape}, {b.shape}"
        )
    if min(a.shape[-2:]) < window:
        raise ValueError(f"images {tuple(a.shape[-2:])} are smaller than the {window}px window")
    channels = a.shape[1]
    kernel = gaussian_window(window, sigma).to(a.dtype)[None, None].repeat(channels, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class ReconstructionReport:
    """Reconstruction quality on held-out images, in display units (data range 1)."""

    images: int
    psnr_db: float
    ssim: float
    mae: float

    def as_dict(self) -> dict[str, float | int]:
        """The report as plain JSON types."""
        return asdict(self)


@torch.no_grad()
def reconstruction_report(
    model: nn.Module,
    images: npt.NDArray[np.float32],
    spec: PreprocessSpec,
    batch_size: int = 64,
) -> ReconstructionReport:
    """Mean PSNR, SSIM and absolute error of ``model(x)`` (e.g. ``D(E(x))``) against ``x``.

    Both are taken to display units (``x * std + mean``) and the reconstruction is clipped to
    [0, 1], the display range, so the data range of PSNR and SSIM is 1.
    """
    if len(images) == 0:
        raise ValueError("the reconstruction report needs at least one held-out image")
    model.eval()
    psnrs, ssims, maes = [], [], []
    for idx in batches(len(images), batch_size):
        x = torch.from_numpy(images[idx.numpy()])
        # float64: SSIM's variances are differences of near-equal sums
        shown = x.double() * spec.std + spec.mean
        recon = (model(x).double() * spec.std + spec.mean).clamp(0.0, 1.0)
        psnrs.append(psnr(recon, shown))
        ssims.append(ssim(recon, shown))
        maes.append((recon - shown).abs().flatten(1).mean(dim=1))
    return ReconstructionReport(
        images=len(images),
        psnr_db=float(torch.cat(psnrs).mean()),
        ssim=float(torch.cat(ssims).mean()),
        mae=float(torch.cat(maes).mean()),
    )


def fit_autoencoder(
    model: ConvAutoencoder,
    images: npt.NDArray[np.float32],
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    gen: torch.Generator | None = None,
) -> list[float]:
    """Train on ``images`` [N, 1, S, S] with the elastic loss and Adam; mean loss per epoch."""
    if len(images) == 0:
        raise ValueError("no training images")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    history: list[float] = []
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # ~1.5x on CPU
    model.train()
    for epoch in track(range(epochs), epochs, "train autoencoder"):
        total, seen = 0.0, 0
        for idx in batches(len(images), batch_size, gen):
            x = torch.from_numpy(images[idx.numpy()]).contiguous(memory_format=torch.channels_last)
            loss = elastic_loss(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        history.append(total / seen)
        log.debug("autoencoder epoch %d loss %.5f", epoch + 1, history[-1])
    model.eval()
    return history


@dataclass(frozen=True)
class AutoencoderTrainingOptions:
    """Everything ``triage train autoencoder`` takes."""

    data: Path
    out: Path
    size: int = 128
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    heldout_fraction: float = 0.1
    latent_channels: int = 64
    max_images: int | None = None
    split_from: Path | None = None  # a classifier run: its training and validation images


def heldout_patients(table: ImageTable, fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """Per row: does its patient belong to the held-out share (patient-disjoint, seeded)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    patients = sorted(set(table.patient_ids))
    if len(patients) < 2:
        raise ValueError(f"{len(patients)} patient(s): a held-out split needs at least 2")
    rng = np.random.default_rng(seed)
    n_out = min(len(patients) - 1, max(1, round(fraction * len(patients))))
    chosen = {patients[i] for i in rng.permutation(len(patients))[:n_out]}
    return np.array([p in chosen for p in table.patient_ids], dtype=bool)


def train_autoencoder(options: AutoencoderTrainingOptions) -> dict[str, Any]:
    """Train on the dataset, write ``autoencoder.pt`` / ``autoencoder.json``; return the meta."""
    started = time.monotonic()
    config = AutoencoderConfig(size=options.size, latent_channels=options.latent_channels)
    gen = seed_everything(options.seed)
    table = load_dataset(options.data)
    if len(table) == 0:
        raise ValueError(f"{options.data} has no frontal images")
    if options.split_from is not None:  # the classifier's own images (and its cached arrays)
        split = read_split(options.split_from)
        train_idx = split_indices(table, split, "classifier_train")
        val_idx = split_indices(table, split, "classifier_val")
        if len(train_idx) == 0 or len(val_idx) == 0:
            raise ValueError(f"the split of {options.split_from} names none of these images")
    else:
        held = heldout_patients(table, options.heldout_fraction, options.seed)
        train_idx = np.flatnonzero(~held)
        val_idx = np.flatnonzero(held)
    if options.max_images is not None:
        train_idx = train_idx[: options.max_images]
    spec = PreprocessSpec(size=options.size)
    cache = options.data / ".cache" if options.data.is_dir() else None
    images = preprocessed_images(table.subset(np.concatenate([train_idx, val_idx])), spec, cache)
    x_train, x_val = images[: len(train_idx)], images[len(train_idx) :]

    model = ConvAutoencoder(config)
    history = fit_autoencoder(
        model, x_train, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, gen=gen
    )
    report = reconstruction_report(model, x_val, spec)
    seconds = time.monotonic() - started
    meta: dict[str, Any] = {
        "format": AUTOENCODER_FORMAT,
        "architecture": {
            "name": "conv-autoencoder",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
        },
        "latent_shape": list(config.latent_shape),
        "parameters": count_parameters(model),
        "preprocess": spec.to_dict(),
        "data": table.description,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "lr": options.lr,
        "seed": options.seed,
        "loss": "elastic: MSE + MAE in normalised units",
        "loss_history": history,
        "images": {"train": len(x_train), "heldout": len(x_val)},
        "split_from": None if options.split_from is None else str(options.split_from),
        "heldout": report.as_dict(),
        "seconds": seconds,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    save_atomic(model.state_dict(), options.out / "autoencoder.pt")
    write_json(options.out / "autoencoder.json", meta)
    print_table(
        f"autoencoder reconstruction on held-out patients ({options.out})",
        ("images", "PSNR dB", "SSIM", "MAE", "params", "epochs", "seconds"),
        [
            (
                report.images,
                report.psnr_db,
                report.ssim,
                report.mae,
                meta["parameters"],
                options.epochs,
                seconds,
            )
        ],
    )
    return meta


@dataclass(frozen=True)
class AutoencoderRun:
    """A trained autoencoder and the metadata that travels with its weights."""

    model: ConvAutoencoder
    meta: dict[str, Any]

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])


def load_autoencoder_run(run: Path) -> AutoencoderRun:
    """Load ``autoencoder.json`` + ``autoencoder.pt`` from a run folder (eval mode)."""
    meta_path, weights_path = run / "autoencoder.json", run / "autoencoder.pt"
    for path in (meta_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: is {run} a `triage train autoencoder` run?"
            )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != AUTOENCODER_FORMAT:
        raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
    arch = {k: v for k, v in meta["architecture"].items() if k != "name"}
    arch["widths"] = tuple(arch["widths"])
    arch.setdefault("head", "upsample")  # runs written before the head was recorded
    model = ConvAutoencoder(AutoencoderConfig(**arch))
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model.eval()
    return AutoencoderRun(model, meta)
