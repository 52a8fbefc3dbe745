"""Models: the one-shot diffusion denoiser, the [0, 1]-pixel classifier wrapper, their composition,
DiffSmooth's local smoothing, a class-subset mask (ImageNet-R/-A) and the image-to-image diffusion classifier (IDC)."""

from msds_lightning.models import anchors, nets, wrn  # noqa: F401  (registers our models in timm's factory)
from msds_lightning.models.classifier import Classifier, DenoiseAndClassify
from msds_lightning.models.denoiser import DiffusionDenoiser
from msds_lightning.models.idc import IDCClassifier
from msds_lightning.models.local_smoothing import LocalSmoothing
from msds_lightning.models.masking import MaskedClassifier

__all__ = [
    "Classifier",
    "DenoiseAndClassify",
    "DiffusionDenoiser",
    "IDCClassifier",
    "LocalSmoothing",
    "MaskedClassifier",
]
