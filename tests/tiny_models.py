"""Test-suite access to the tiny models and fake data sets (they live in the package for smoke tests)."""

from msds_lightning.data.fake import CIFAR10_CLASSES, FakeCIFAR10, write_fake_cifar10, write_fake_imagefolder
from msds_lightning.models.tiny import (
    COSINE_SCHEDULE,
    LINEAR_SCHEDULE,
    tiny_classifier,
    tiny_denoiser,
    tiny_unet_config,
)

__all__ = [
    "CIFAR10_CLASSES",
    "COSINE_SCHEDULE",
    "FakeCIFAR10",
    "LINEAR_SCHEDULE",
    "tiny_classifier",
    "tiny_denoiser",
    "tiny_unet_config",
    "write_fake_cifar10",
    "write_fake_imagefolder",
]
