"""Data modules yielding ``(image, label, index)`` with images in [0, 1] and original dataset indices."""

from msds_lightning.data.cifar10 import CIFAR10DataModule
from msds_lightning.data.datasets import ImageDataModule, IndexedSubset, cohen_indices
from msds_lightning.data.digits import DigitsDataModule
from msds_lightning.data.imagenet import ImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "IndexedSubset",
    "cohen_indices",
]
