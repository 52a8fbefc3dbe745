"""Small networks registered in timm's factory, so configs name them like any timm model
(``Classifier(model_name="msds_small_cnn", ...)``, ``timm.create_model("msds_small_cnn")``) and local
weights load through timm's ``pretrained_cfg_overlay=dict(file=...)`` path.

``msds_small_cnn`` is the demo's classifier: three 3×3 convolutions and a linear head, for small
low-resolution inputs (the 8×8 scikit-learn digits); about 60k parameters at the default width.
Importing :mod:`msds_lightning.models` registers it.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


class LinearHeadNet(nn.Module):
    """timm's classifier protocol for our networks: ``forward = forward_head(forward_features(x))`` and a
    linear ``head`` over ``num_features`` that ``reset_classifier`` replaces."""

    head: nn.Linear
    num_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)


class SmallCNN(LinearHeadNet):
    """conv(in→w) → conv(w→2w) → 2×2 max-pool → conv(2w→2w) → global average pool → dropout → linear."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, width: int = 32, drop_rate: float = 0.0, **_
    ):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = 2 * width
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )  # fmt: skip
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(x.mean(dim=(2, 3))))


default_cfgs = generate_default_cfgs(
    {
        "msds_small_cnn.untrained": dict(
            num_classes=10, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), interpolation="bilinear",
            crop_pct=1.0, first_conv="stem.0", classifier="head",
        )
    }
)  # fmt: skip


@register_model
def msds_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    return build_model_with_cfg(SmallCNN, "msds_small_cnn", pretrained, **kwargs)
