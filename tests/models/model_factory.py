"""Small seeded DenseNets with realistic BatchNorm state, for the DenseNet, Grad-CAM and weight
tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.densenet import DenseNet, config_by_name

#: ``make(name, num_labels, in_channels, cam_layer, seed, dtype)``: see :func:`make_model`.
ModelFactory = Callable[..., DenseNet]


def settle_batchnorm(model: DenseNet, seed: int, size: int = 64) -> DenseNet:
    """Give every BatchNorm non-trivial running statistics and affine parameters, then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
        model.train()
        dtype = next(model.parameters()).dtype
        for _ in range(2):
            x = torch.randn(4, model.config.in_channels, size, size, generator=gen, dtype=dtype)
            model(x)
        model.classifier.bias.copy_(0.1 * torch.randn(model.config.num_labels, generator=gen))
    return model.eval()


def make_model(
    name: str = "compact",
    num_labels: int = 4,
    in_channels: int = 1,
    cam_layer: str = "relu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> DenseNet:
    """A seeded model of a named configuration with settled BatchNorm, in eval mode."""
    torch.manual_seed(seed)
    model = DenseNet(config_by_name(name, num_labels, in_channels, cam_layer)).to(dtype)
    return settle_batchnorm(model, seed)
