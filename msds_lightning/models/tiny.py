"""Tiny, seeded, random-weight models for smoke tests and the test suite (CPU, no downloads).

They certify nothing meaningful; they exercise the whole pipeline (configs, data, DDP, writers) in seconds.
"""

from __future__ import annotations

from typing import Any

import torch

from .classifier import Classifier
from .denoiser import DiffusionDenoiser

LINEAR_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
COSINE_SCHEDULE = {"num_train_timesteps": 4000, "beta_schedule": "squaredcos_cap_v2"}


def tiny_unet_config(
    learned_variance: bool = False, sample_size: int = 32, channels: int = 3
) -> dict[str, Any]:
    """A ``UNet2DModel`` config with ~40k parameters and a downsampling factor of 2 (no attention)."""
    return {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": 2 * channels if learned_variance else channels,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
        "add_attention": False,
    }


def tiny_denoiser(
    schedule: str = "linear",
    num_train_timesteps: int | None = None,
    learned_variance: bool = False,
    sample_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    **options: Any,
) -> DiffusionDenoiser:
    """A random-weight :class:`DiffusionDenoiser` (deterministic for a given ``seed``), in eval mode.

    ``schedule`` is ``"linear"`` (β 1e-4 → 0.02, T=1000) or ``"cosine"`` (T=4000); ``num_train_timesteps``
    overrides T. ``options`` go to the denoiser (``rescale_timesteps``, ``pad_to``).
    """
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    scheduler = dict(LINEAR_SCHEDULE if schedule == "linear" else COSINE_SCHEDULE)
    if num_train_timesteps is not None:
        scheduler["num_train_timesteps"] = num_train_timesteps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser = DiffusionDenoiser.from_config(
            tiny_unet_config(learned_variance, sample_size, channels), scheduler, **options
        )
    return denoiser.eval()


def tiny_classifier(num_classes: int = 10, image_size: int = 32, seed: int = 0, **kwargs: Any) -> Classifier:
    """A random-weight timm ``test_vit`` (~0.3M parameters) at ``image_size`` wrapped in :class:`Classifier`.

    ``kwargs`` go to :class:`Classifier` (``mean``, ``std``, ``input_size``, ``checkpoint``, ...).
    """
    model_kwargs = {"img_size": image_size, **kwargs.pop("model_kwargs", {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = Classifier("test_vit", num_classes=num_classes, model_kwargs=model_kwargs, **kwargs)
    return classifier.eval()
