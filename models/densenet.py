"""DenseNet (torchvision parameter names) with Grad-CAM computed analytically in the forward graph.

The network is ``features -> ReLU -> global average pool -> linear``. For a class logit
``y_c = sum_k w_ck * mean_ij A_k(i, j) + b_c`` the gradient with respect to the final
activation is ``w_ck / (H * W)`` at every position, so Grad-CAM at the final ReLU is

    cam_c = ReLU(sum_k w_ck A_k) / (H * W)

exactly (not merely proportionally). At ``norm5`` (``Z``, the input of that ReLU) the gradient is
masked by the ReLU, so the Grad-CAM weight is ``alpha_ck = w_ck * p_k / (H * W)`` with ``p_k``
the share of positions where ``Z_k > 0``, and ``cam_c = ReLU(sum_k alpha_ck Z_k)``.

Both forms use only einsum, mean, comparison, cast and ReLU, so the maps export to ONNX together
with the classifier and can be served without PyTorch or autograd.
:mod:`models.gradcam` holds the autograd reference the tests compare against.

Module and parameter names match ``torchvision.models.densenet`` exactly (``features.conv0``,
``features.denseblock1.denselayer1.norm1``, ..., ``features.norm5``, ``classifier``), so
torchvision- and CheXNet-style state dicts load through :mod:`models.weights`.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CamLayer = Literal["relu", "norm5"]
CAM_LAYERS: tuple[CamLayer, ...] = ("relu", "norm5")

__all__ = [
    "CAM_LAYERS",
    "COMPACT",
    "DENSENET121",
    "CamLayer",
    "DenseNet",
    "DenseNetConfig",
    "config_by_name",
    "num_parameters",
]


@dataclass(frozen=True)
class DenseNetConfig:
    """Hyper-parameters of a DenseNet-BC; field order follows torchvision's ``DenseNet``."""

    growth_rate: int
    block_config: tuple[int, ...]
    num_init_features: int
    bn_size: int = 4
    drop_rate: float = 0.0
    in_channels: int = 1
    num_labels: int = 1
    cam_layer: CamLayer = "relu"
    #: False: the last transition keeps its resolution (no 2x2 pooling), so the last dense block
    #: and the CAM maps are twice as fine along each axis (8x8 instead of 4x4 at 128 px).
    last_pool: bool = True

    def __post_init__(self) -> None:
        if self.growth_rate < 1 or self.num_init_features < 1 or self.bn_size < 1:
            raise ValueError("growth_rate, num_init_features and bn_size must be positive")
        if len(self.block_config) < 1 or any(n < 1 for n in self.block_config):
            raise ValueError(
                f"block_config must be non-empty and positive, got {self.block_config}"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {self.num_labels}")
        if self.cam_layer not in CAM_LAYERS:
            raise ValueError(f"cam_layer must be one of {CAM_LAYERS}, got {self.cam_layer!r}")

    @property
    def num_features(self) -> int:
        """Channels of the final feature map (1024 for DenseNet-121)."""
        n = self.num_init_features
        for i, layers in enumerate(self.block_config):
            n += layers * self.growth_rate
            if i != len(self.block_config) - 1:
                n //= 2
        return n

    @property
    def pools(self) -> int:
        """Average pools in the transitions (one per transition, less one without last_pool)."""
        transitions = len(self.block_config) - 1
        return transitions - (0 if self.last_pool or transitions == 0 else 1)

    @property
    def downsampling(self) -> int:
        """Input pixels per CAM pixel along each axis (32 for four blocks, 16 without the last
        pool)."""
        return int(4 * 2**self.pools)

    def cam_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial shape of the CAM maps for an input of ``height`` x ``width`` pixels."""
        h, w = height, width
        # conv0 (k7 s2 p3), pool0 (k3 s2 p1), then floor-halving average pools in transitions.
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        for _ in range(self.pools):
            h, w = h // 2, w // 2
        return h, w


#: torchvision's ``densenet121`` (ImageNet head: 3 channels, 1000 labels).
DENSENET121 = DenseNetConfig(32, (6, 12, 24, 16), 64, 4, 0.0, in_channels=3, num_labels=1000)

#: A small DenseNet-BC for the demo and tests: 4 dense blocks, 3 transitions, growth rate 12,
#: 138 final channels, about 0.19 M parameters. A training step (batch 32, 128x128 px, 1 channel,
#: 4 labels, 2 CPU threads) ran at about 120-130 images/s (150+ with channels_last), against
#: 85-90 for (3, 6, 12, 8) blocks with 24 initial features.
COMPACT = DenseNetConfig(12, (2, 4, 8, 6), 24, 4, 0.0, in_channels=1, num_labels=1)

_BY_NAME: dict[str, DenseNetConfig] = {"compact": COMPACT, "densenet121": DENSENET121}


def config_by_name(
    name: str,
    num_labels: int,
    in_channels: int = 1,
    cam_layer: str = "relu",
    last_pool: bool = True,
) -> DenseNetConfig:
    """The named architecture (``"compact"`` or ``"densenet121"``) with the given head and input
    (``last_pool=False``: the last transition does not pool, see :class:`DenseNetConfig`)."""
    try:
        base = _BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown DenseNet configuration {name!r}; choose one of {sorted(_BY_NAME)}"
        ) from None
    if cam_layer not in CAM_LAYERS:
        raise ValueError(f"cam_layer must be one of {CAM_LAYERS}, got {cam_layer!r}")
    return dataclasses.replace(
        base,
        num_labels=num_labels,
        in_channels=in_channels,
        cam_layer=cam_layer,
        last_pool=last_pool,
    )


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 bottleneck producing ``growth_rate`` new channels."""

    def __init__(
        self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = float(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return cast(Tensor, out)


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed the concatenation of all earlier outputs."""

    def __init__(
        self,
        num_layers: int,
        num_input_features: int,
        bn_size: int,
        growth_rate: int,
        drop_rate: float,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1 halving the channels, then 2x2 average pooling (or none: ``pool=False``
    keeps the module name with a parameter-free identity, so state dicts are unchanged)."""

    def __init__(
        self, num_input_features: int, num_output_features: int, pool: bool = True
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(
            num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
        )
        self.pool: nn.Module = nn.AvgPool2d(kernel_size=2, stride=2) if pool else nn.Identity()


class DenseNet(nn.Module):
    """DenseNet-BC classifier returning logits, Grad-CAM maps and pooled features in one pass.

    ``forward(x)`` with ``x`` of shape ``[B, in_channels, H, W]`` returns
    ``(logits [B, L], cams [B, L, h, w], pooled [B, C])``. ``cams`` are Grad-CAM maps at
    ``config.cam_layer`` computed in closed form (see the module docstring); ``pooled`` is the
    global average of the final ReLU output. The final ReLU is the parameter-free module
    ``relu`` (not in place), so forward hooks on ``features.norm5`` and ``relu`` see the
    pre- and post-activation maps. The state dict has exactly torchvision's keys.
    """

    def __init__(self, config: DenseNetConfig) -> None:
        super().__init__()
        self.config = config
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(
                            config.in_channels,
                            config.num_init_features,
                            kernel_size=7,
                            stride=2,
                            padding=3,
                            bias=False,
                        ),
                    ),
                    ("norm0", nn.BatchNorm2d(config.num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = config.num_init_features
        last = len(config.block_config) - 1
        for i, num_layers in enumerate(config.block_config):
            block = _DenseBlock(
                num_layers, num_features, config.bn_size, config.growth_rate, config.drop_rate
            )
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * config.growth_rate
            if i != last:
                pool = config.last_pool or i != last - 1
                self.features.add_module(
                    f"transition{i + 1}", _Transition(num_features, num_features // 2, pool)
                )
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        # Not in place: a hook on norm5 must keep seeing the pre-activation map.
        self.relu = nn.ReLU(inplace=False)
        self.classifier = nn.Linear(num_features, config.num_labels)
        self.num_features = num_features

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    @property
    def cam_layer(self) -> CamLayer:
        """The layer the in-graph Grad-CAM maps refer to."""
        return self.config.cam_layer

    def reset_classifier(self) -> None:
        """Re-initialise the linear head as a freshly built model would (zero bias)."""
        self.classifier.reset_parameters()
        nn.init.constant_(self.classifier.bias, 0)

    def logits(self, x: Tensor) -> Tensor:
        """Class logits only, without the CAM (the eager Grad-CAM baseline uses this)."""
        activation = self.relu(self.features(x))
        return cast(Tensor, self.classifier(activation.mean(dim=(2, 3))))

    def features_with_taps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The ``norm5`` output and the output of every dense block (for the OOD guard and the
        anatomy head), in one pass through ``features``."""
        taps: list[Tensor] = []
        for name, module in self.features.named_children():
            x = module(x)
            if name.startswith("denseblock"):
                taps.append(x)
        return x, taps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.features(x)  # norm5 output [B, C, h, w]
        return self.head(z)

    def head(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, cams, pooled)`` from the ``norm5`` output ``z`` (see :meth:`forward`)."""
        a = self.relu(z)
        pooled = a.mean(dim=(2, 3))
        logits = self.classifier(pooled)
        weight = self.classifier.weight  # [L, C]
        if self.config.cam_layer == "relu":
            # d y_c / d A_k(i,j) = w_ck / (hw): Grad-CAM = ReLU(sum_k w_ck A_k) / (hw).
            cams = F.relu(torch.einsum("lc,bchw->blhw", weight, a)) / (a.shape[2] * a.shape[3])
        else:
            # Gradient at norm5 is masked by the ReLU: alpha_ck = w_ck * p_k / (hw).
            positive_share = (z > 0).to(z.dtype).mean(dim=(2, 3))  # [B, C]
            scaled = z * positive_share[:, :, None, None]
            cams = F.relu(torch.einsum("lc,bchw->blhw", weight, scaled)) / (z.shape[2] * z.shape[3])
        return logits, cams, pooled


def num_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (trainable or not) of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))
