"""Class-conditional image generation for adversarial training on generated data (Wang, Pang et al. 2023):
EDM's Heun sampler over a diffusers UNet (:mod:`.edm`) and pseudo-label filtering (:mod:`.filtering`). The
files they are saved in: :mod:`msds_lightning.data.generated_files`; the command: ``msds generate``."""

from msds_lightning.generation.edm import edm_heun_scheduler, edm_sample, generate, require_class_embeddings
from msds_lightning.generation.filtering import conditioning_probabilities, filter_top_k, select_top_k

__all__ = [
    "conditioning_probabilities",
    "edm_heun_scheduler",
    "edm_sample",
    "filter_top_k",
    "generate",
    "require_class_embeddings",
    "select_top_k",
]
