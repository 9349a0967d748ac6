"""Shared pieces of the training loops: seeding, augmentation, batched inference, checkpoints."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.densenet import DenseNet
from triage_common.atomic import atomic_path


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for augmentation draws."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return torch.Generator().manual_seed(seed)


def augment(x: Tensor, gen: torch.Generator, *, hflip: bool = False) -> Tensor:
    """Radiograph-appropriate augmentation of a normalised batch (B, C, S, S).

    Small rotation (+-7 degrees), isotropic scale (+-8%), translation (+-4%), contrast (+-15%)
    and brightness (+-0.1 in normalised units). No horizontal flip unless asked: laterality
    matters on a chest film (the heart is on the left).
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float, n: int = b) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-math.radians(7.0), math.radians(7.0))
    scale = uniform(0.92, 1.08)
    tx, ty = uniform(-0.04, 0.04), uniform(-0.04, 0.04)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )
    if hflip:
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        theta[:, 0, 0] *= flip
        theta[:, 1, 0] *= flip
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.85, 1.15)[:, None, None, None]
    brightness = uniform(-0.1, 0.1)[:, None, None, None]
    return out * contrast + brightness


def masked_bce(logits: Tensor, targets: Tensor, pos_weight: Tensor) -> Tensor:
    """BCE with logits averaged over the non-missing (non-NaN) targets."""
    mask = ~torch.isnan(targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    loss = F.binary_cross_entropy_with_logits(logits, safe, pos_weight=pos_weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def batches(n: int, batch_size: int, gen: torch.Generator | None = None) -> Iterator[Tensor]:
    """Index batches over ``range(n)``, shuffled when a generator is given."""
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def classifier_outputs(
    model: DenseNet,
    images: npt.NDArray[np.float32],
    batch_size: int = 64,
    gen: torch.Generator | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(probabilities, cams, pooled features) for every image, in eval mode.

    With ``gen`` each batch is augmented first (used to draw extra views for the error model).
    """
    model.eval()
    probs, cams, pooled = [], [], []
    for idx in batches(len(images), batch_size):
        x = torch.from_numpy(images[idx.numpy()])
        if gen is not None:
            x = augment(x, gen)
        logits, cam, feat = model(x.contiguous(memory_format=torch.channels_last))
        probs.append(torch.sigmoid(logits).numpy())
        cams.append(cam.numpy())
        pooled.append(feat.numpy())
    return np.concatenate(probs), np.concatenate(cams), np.concatenate(pooled)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
