"""A classifier restricted to a subset of its classes (ImageNet-R / ImageNet-A: 200 of the 1,000)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MaskedClassifier(nn.Module):
    """``classifier``'s logits with every class outside ``classes`` set to −∞, so that its prediction (and
    that of any smoothed classifier built on it: every certifier, PREDICT, the cascade) ranges over
    ``classes`` only. The official MSDS code (``LogitMaskingLayer``) and Hendrycks et al. evaluate ImageNet-R and
    ImageNet-A this way (they keep the 200 columns; here the 1,000 stay, so labels and predictions are
    ImageNet-1k indices and the argmax is the same class).

    :param classifier: maps [B,C,H,W] pixels in [0,1] to logits [B, num_classes]
    :param classes: ``"imagenet-r"`` or ``"imagenet-a"`` (the data set's 200 classes, from timm's lists), or
        the kept class indices, or their ImageNet-1k WordNet ids
    :param num_classes: the classifier's number of outputs (1000)
    """

    def __init__(
        self, classifier: nn.Module, classes: str | Sequence[int] | Sequence[str], num_classes: int = 1000
    ):
        super().__init__()
        from ..data.imagenet_classes import IMAGENET_SUBSETS, imagenet_indices, subset_wnids

        if isinstance(classes, str):
            if classes not in IMAGENET_SUBSETS:
                raise ValueError(f"classes must be one of {IMAGENET_SUBSETS} or a list, got {classes!r}")
            kept = imagenet_indices(subset_wnids(classes))
        elif all(isinstance(c, str) for c in classes):
            kept = imagenet_indices(list(classes))
        else:
            kept = [int(c) for c in classes]
        if not kept or any(not 0 <= k < num_classes for k in kept) or len(set(kept)) != len(kept):
            raise ValueError(
                f"classes must be distinct indices in 0..{num_classes - 1}, got {len(kept)} entries"
            )
        self.classifier = classifier
        self.num_classes = int(num_classes)
        self.model_name = (
            f"{getattr(classifier, 'model_name', type(classifier).__name__)} (masked to {len(kept)} classes)"
        )
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[kept] = True
        self.register_buffer("keep", mask, persistent=False)

    @property
    def classes(self) -> list[int]:
        """The kept class indices, sorted."""
        return self.keep.nonzero().flatten().tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the classifier returns {logits.shape[-1]} logits, MaskedClassifier expects {self.num_classes}"
            )
        return logits.masked_fill(~self.keep, float("-inf"))
