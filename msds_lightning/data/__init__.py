"""Data modules yielding ``(image, label, index)`` with images in [0, 1] and original dataset indices."""

from msds_lightning.data.cifar10 import CIFAR10DataModule, CIFAR100DataModule
from msds_lightning.data.datasets import ImageDataModule, IndexedSubset, cohen_indices
from msds_lightning.data.digits import DigitsDataModule
from msds_lightning.data.generated import GeneratedImages, MixedBatchSampler, MixedDataModule
from msds_lightning.data.imagenet import ImageNetDataModule
from msds_lightning.data.shift import (
    CIFAR10CDataModule,
    CIFAR100CDataModule,
    CIFAR101DataModule,
    DigitsShiftDataModule,
    ImageNetADataModule,
    ImageNetCDataModule,
    ImageNetRDataModule,
)

__all__ = [
    "CIFAR10CDataModule",
    "CIFAR100CDataModule",
    "CIFAR101DataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "DigitsShiftDataModule",
    "GeneratedImages",
    "ImageDataModule",
    "ImageNetADataModule",
    "ImageNetCDataModule",
    "ImageNetDataModule",
    "ImageNetRDataModule",
    "IndexedSubset",
    "MixedBatchSampler",
    "MixedDataModule",
    "cohen_indices",
]
