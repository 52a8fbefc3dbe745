"""Data modules yielding ``(image, label, index)`` with images in [0, 1] and original dataset indices."""

from msds_lightning.data.cifar10 import CIFAR10DataModule, CIFAR100DataModule
from msds_lightning.data.datasets import ImageDataModule, IndexedSubset, cohen_indices
from msds_lightning.data.digits import DigitsDataModule
from msds_lightning.data.generated import GeneratedImages, MixedBatchSampler, MixedDataModule
from msds_lightning.data.imagenet import ImageNetDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "GeneratedImages",
    "ImageDataModule",
    "ImageNetDataModule",
    "IndexedSubset",
    "MixedBatchSampler",
    "MixedDataModule",
    "cohen_indices",
]
