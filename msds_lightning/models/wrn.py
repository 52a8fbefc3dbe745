"""Wide ResNets with Swish (SiLU) activations, as used for adversarial training with generated data
(Gowal et al. 2020; Rebuffi et al. 2021; Wang, Pang et al. 2023), registered in timm's factory:
``wrn16_4_swish``, ``wrn28_10_swish`` (36.5M parameters), ``wrn70_16_swish`` (266.8M).

Pre-activation blocks; the stride-2 convolutions pad "SAME"-style (right/bottom only) like the reference
port of DeepMind's Haiku models; BatchNorm momentum 0.01 (Haiku's 0.99 decay); He-normal convolution
init; widths [16, 16w, 32w, 64w]; global average pool. Input normalisation is *not* inside the network:
wrap it in :class:`~msds_lightning.models.Classifier` (``mean``/``std``), which takes [0,1] pixels, so
attacks and noise act in pixel space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .nets import LinearHeadNet

BN_MOMENTUM = 0.01


class _Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_planes, momentum=BN_MOMENTUM)
        self.conv0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(out_planes, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.stride = stride
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
            if in_planes != out_planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.silu(self.bn0(x))
        # "SAME" padding of the reference: symmetric for stride 1, right/bottom only for stride 2
        padded = F.pad(activated, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv1(F.silu(self.bn1(self.conv0(padded))))
        return out + (self.shortcut(activated) if self.shortcut is not None else x)


class WideResNetSwish(LinearHeadNet):
    """WRN-depth-width with Swish; ``depth`` = 6k + 4."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_chans: int = 3, **_):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6k + 4 (e.g. 16, 28, 70), got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.num_classes, self.num_features = num_classes, widths[3]
        self.stem = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        layers = []
        for group, stride in zip(range(3), (1, 2, 2)):
            for i in range(blocks):
                layers.append(
                    _Block(
                        widths[group] if i == 0 else widths[group + 1],
                        widths[group + 1],
                        stride if i == 0 else 1,
                    )
                )
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3], momentum=BN_MOMENTUM)
        self.head = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.blocks(self.stem(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def _cfg(**kwargs):
    return dict(num_classes=10, input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
                interpolation="bilinear", crop_pct=1.0, first_conv="stem", classifier="head", **kwargs)  # fmt: skip


default_cfgs = generate_default_cfgs(
    {
        "wrn16_4_swish.untrained": _cfg(),
        "wrn28_10_swish.untrained": _cfg(),
        "wrn70_16_swish.untrained": _cfg(),
    }
)


def _create(variant: str, depth: int, width: int, pretrained: bool, **kwargs) -> WideResNetSwish:
    return build_model_with_cfg(WideResNetSwish, variant, pretrained, depth=depth, width=width, **kwargs)


@register_model
def wrn16_4_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn16_4_swish", 16, 4, pretrained, **kwargs)


@register_model
def wrn28_10_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn28_10_swish", 28, 10, pretrained, **kwargs)


@register_model
def wrn70_16_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn70_16_swish", 70, 16, pretrained, **kwargs)
