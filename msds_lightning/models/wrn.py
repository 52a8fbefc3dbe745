"""Wide ResNets with Swish (SiLU) activations, as used for adversarial training with generated data
(Gowal et al. 2020; Rebuffi et al. 2021; Wang, Pang et al. 2023), registered in timm's factory:
``wrn16_4_swish``, ``wrn28_10_swish`` (36.5M parameters), ``wrn70_16_swish`` (266.8M).

Pre-activation blocks; the stride-2 convolutions pad "SAME"-style (right/bottom only) like the reference
port of DeepMind's Haiku models; BatchNorm momentum 0.01 (Haiku's 0.99 decay); He-normal convolution
init; widths [16, 16w, 32w, 64w]; global average pool. Input normalisation is *not* inside the network:
wrap it in :class:`~msds_lightning.models.Classifier` (``mean``/``std``), which takes [0,1] pixels, so
attacks and noise act in pixel space.

DM-Improves-AT's released checkpoints (``cifar10_l2_wrn28-10.pt``, ...: ``{"model_state_dict": ...}``
with keys ``module.0.init_conv.weight``, ``module.0.layer.G.block.I.batchnorm_0.weight``, ...,
``module.0.logits.weight``) load as they are: ``Classifier("wrn28_10_swish", 10, checkpoint=FILE)``
(:func:`dm_improves_at_filter` renames the keys). Their network normalises inside with constants it does
not save; the default pretrained config holds their CIFAR-10 ones, the ``.dm_at_cifar100`` tag
(``wrn28_10_swish.dm_at_cifar100``) their CIFAR-100 ones, and ``Classifier`` applies them once.
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


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_DM_AT_RENAMES = (
    ("batchnorm_0.", "bn0."),
    ("conv_0.", "conv0."),
    ("batchnorm_1.", "bn1."),
    ("conv_1.", "conv1."),
)


def dm_improves_at_filter(state_dict: dict, model: WideResNetSwish) -> dict:
    """DM-Improves-AT / Rebuffi et al. (``imrahulr/adversarial_robustness_pytorch``) WideResNet-with-Swish
    keys → ours; a state dict in our own layout passes unchanged.

    Their checkpoint is ``{"model_state_dict": <EMA weights>, ...}`` of ``DataParallel(Sequential(net))``:
    ``module.0.`` prefixes every key (timm strips ``module.``). A ``1.`` prefix means a run with
    ``--normalize``, whose extra ``Normalization`` layer normalises a second time: refused."""
    state_dict = state_dict.get("model_state_dict", state_dict)
    state_dict = {k[7:] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    if any(k.startswith("1.init_conv.") for k in state_dict):
        raise ValueError(
            "this DM-Improves-AT checkpoint was trained with --normalize (an extra Normalization layer before "
            "the network's own): two normalisations in a row are not supported"
        )
    state_dict = {k[2:] if k.startswith("0.") else k: v for k, v in state_dict.items()}
    if "init_conv.weight" not in state_dict:
        return state_dict
    per_group = len(model.blocks) // 3
    out = {}
    for key, value in state_dict.items():
        if key.startswith("init_conv."):
            key = "stem." + key[len("init_conv.") :]
        elif key.startswith("batchnorm."):
            key = "bn." + key[len("batchnorm.") :]
        elif key.startswith("logits."):
            key = "head." + key[len("logits.") :]
        elif key.startswith("layer."):
            _, group, _, index, rest = key.split(".", 4)
            for old, new in _DM_AT_RENAMES:
                rest = new + rest[len(old) :] if rest.startswith(old) else rest
            key = f"blocks.{int(group) * per_group + int(index)}.{rest}"
        out[key] = value
    return out


def _cfg(**kwargs):
    cfg = dict(num_classes=10, input_size=(3, 32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, interpolation="bilinear",
               crop_pct=1.0, first_conv="stem", classifier="head")  # fmt: skip
    return {**cfg, **kwargs}


_CIFAR100 = dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD)


default_cfgs = generate_default_cfgs(
    {
        "wrn16_4_swish.untrained": _cfg(),
        "wrn28_10_swish.untrained": _cfg(),
        "wrn28_10_swish.dm_at_cifar10": _cfg(),
        "wrn28_10_swish.dm_at_cifar100": _cfg(**_CIFAR100),
        "wrn70_16_swish.untrained": _cfg(),
        "wrn70_16_swish.dm_at_cifar10": _cfg(),
        "wrn70_16_swish.dm_at_cifar100": _cfg(**_CIFAR100),
    }
)


def _create(variant: str, depth: int, width: int, pretrained: bool, **kwargs) -> WideResNetSwish:
    return build_model_with_cfg(
        WideResNetSwish, variant, pretrained, depth=depth, width=width, pretrained_filter_fn=dm_improves_at_filter,
        **kwargs,
    )  # fmt: skip


@register_model
def wrn16_4_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn16_4_swish", 16, 4, pretrained, **kwargs)


@register_model
def wrn28_10_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn28_10_swish", 28, 10, pretrained, **kwargs)


@register_model
def wrn70_16_swish(pretrained: bool = False, **kwargs) -> WideResNetSwish:
    return _create("wrn70_16_swish", 70, 16, pretrained, **kwargs)
