"""Models: the one-shot diffusion denoiser, the [0, 1]-pixel classifier wrapper and their composition."""

from msds_lightning.models import nets  # noqa: F401  (registers msds_* models in timm's factory)
from msds_lightning.models.classifier import Classifier, DenoiseAndClassify
from msds_lightning.models.denoiser import DiffusionDenoiser

__all__ = ["Classifier", "DenoiseAndClassify", "DiffusionDenoiser"]
