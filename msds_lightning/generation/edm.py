"""Class-conditional image generation with a diffusion UNet, for adversarial training on generated data.

Wang, Pang et al. (ICML 2023, "Better diffusion models further improve adversarial training") train on
real CIFAR images mixed with millions of images from a class-conditional EDM sampled with the
deterministic 2nd-order Heun sampler (Karras σ schedule, ρ = 7, S_churn = 0, 20 steps for CIFAR-10, 25 for
CIFAR-100/SVHN), class by class, optionally keeping per class only the images a pseudo-labeler is most
confident about. This module does the same for a diffusers ``UNet2DModel`` with class embeddings
(``num_class_embeds``) trained as a DDPM (``DDPMScheduler``; ε-, v- or x₀-prediction), e.g. a
:class:`~msds_lightning.models.DiffusionDenoiser` folder:

* :func:`generate` → ``(images uint8 [N, H, W, C], labels int64 [N])``, grouped by class;
* :func:`filter_top_k` → the ``k`` images per class with the highest probability of their conditioning class;
* the file format they are saved in (:func:`~msds_lightning.data.generated_files.save_npz`) lives with
  the data set that reads it, :mod:`msds_lightning.data.generated_files`;
* the ``msds generate`` command is :mod:`msds_lightning.cli.generate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device

# EDM's defaults (Karras et al. 2022, generate.py): σ ∈ [0.002, 80], clamped to the model's range.
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0


def edm_heun_scheduler(
    ddpm_scheduler: Any,
    sigma_min: float | None = EDM_SIGMA_MIN,
    sigma_max: float | None = EDM_SIGMA_MAX,
):
    """diffusers' ``HeunDiscreteScheduler`` set up as EDM's deterministic sampler for a DDPM-trained UNet.

    Karras σ schedule (ρ = 7) between ``sigma_min`` and ``sigma_max`` (each clamped to the σ range of the
    training schedule, ``sqrt((1 - ᾱ_t) / ᾱ_t)`` for t = 0 and T − 1, as EDM clamps to the network's range;
    ``None`` means that end of the training range), no churn (diffusers' Heun has none), no clipping of the
    x₀ estimate, and the training betas, prediction type and T of ``ddpm_scheduler``. With
    ``set_timesteps(n)`` it takes n steps (n σ's and a final 0): n − 1 Heun steps and a final Euler step to
    σ = 0, i.e. 2n − 1 UNet calls, like EDM's ``edm_sampler(num_steps=n)``.

    The betas are passed explicitly (``trained_betas``): ``HeunDiscreteScheduler.from_config`` alone would
    replace ``beta_start``/``beta_end`` that the DDPM config holds as *defaults* by Heun's own defaults
    (0.00085/0.012, Stable Diffusion's), i.e. silently sample with the wrong noise schedule. Likewise
    ``timestep_spacing="linspace"`` is forced (a DDPM's ``"leading"`` would lower σ_max and start from
    ``sqrt(σ_max² + 1)`` instead of σ_max).
    """
    from diffusers import HeunDiscreteScheduler

    config = dict(ddpm_scheduler.config)
    betas = torch.as_tensor(ddpm_scheduler.betas, dtype=torch.float32)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"scheduler: unsupported prediction_type {prediction_type!r}")
    heun = HeunDiscreteScheduler.from_config(
        config,
        num_train_timesteps=len(betas),
        trained_betas=betas.tolist(),
        prediction_type=prediction_type,
        use_karras_sigmas=True,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    reference = torch.as_tensor(ddpm_scheduler.alphas_cumprod, dtype=torch.float64)
    if not torch.allclose(heun.alphas_cumprod.double(), reference, rtol=1e-4, atol=1e-7):
        raise RuntimeError("HeunDiscreteScheduler did not reproduce the DDPM noise schedule")
    train_sigmas = ((1.0 - reference) / reference).sqrt()
    lo, hi = float(train_sigmas.min()), float(train_sigmas.max())
    if not math.isfinite(hi):
        raise ValueError("scheduler: the training schedule reaches ᾱ_T = 0 (infinite σ); cannot sample")
    smin = lo if sigma_min is None else min(max(float(sigma_min), lo), hi)
    smax = hi if sigma_max is None else min(max(float(sigma_max), lo), hi)
    if not smin < smax:
        raise ValueError(f"sigma_min ({sigma_min}) must be below sigma_max ({sigma_max})")
    # HeunDiscreteScheduler._convert_to_karras reads sigma_min/sigma_max from its config when present.
    heun.register_to_config(sigma_min=smin, sigma_max=smax)
    return heun


def _unet_and_schedule(unet: Any, scheduler: Any, rescale_timesteps: bool | None):
    """Split a DiffusionDenoiser into (UNet, DDPM scheduler, rescale flag); check a bare UNet's inputs."""
    from msds_lightning.models.denoiser import DiffusionDenoiser

    if isinstance(unet, DiffusionDenoiser):
        scheduler = unet.scheduler if scheduler is None else scheduler
        rescale = unet.rescale_timesteps if rescale_timesteps is None else rescale_timesteps
        unet = unet.unet
    else:
        if scheduler is None:
            raise ValueError(
                "scheduler: required with a bare UNet2DModel (the DDPMScheduler it was trained with); "
                "or pass a DiffusionDenoiser, which holds both"
            )
        rescale = bool(rescale_timesteps)
    return unet, scheduler, bool(rescale)


def require_class_embeddings(unet: Any, num_classes: int, where: str = "unet") -> None:
    """Raise ``ValueError`` unless ``unet`` (a diffusers UNet2DModel) has ≥ ``num_classes`` class embeddings."""
    embeds = getattr(unet.config, "num_class_embeds", None)
    if not embeds:
        raise ValueError(
            f"{where}: the UNet has no class embeddings (num_class_embeds is not set), so it cannot generate "
            f"class-conditional images; use a UNet2DModel trained with num_class_embeds = the number of classes"
        )
    if num_classes > int(embeds):
        raise ValueError(
            f"num_classes ({num_classes}) exceeds the UNet's num_class_embeds ({embeds}) in {where}"
        )


def sample_seeds(seed: int, num_per_class: int, num_classes: int) -> np.ndarray:
    """Seeds of the initial noise, uint64 [num_classes, num_per_class]: one per image.

    Row ``c`` is ``numpy.random.SeedSequence([seed, c]).generate_state(num_per_class, uint64)``; each word
    depends only on its position, so image ``i`` of class ``c`` starts from the same noise whatever the
    batch size, the number of classes, or ``num_per_class`` (a longer run extends a shorter one).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.stack(
        [
            np.random.SeedSequence([seed, c]).generate_state(num_per_class, np.uint64)
            for c in range(num_classes)
        ]
    ).reshape(num_classes, num_per_class)


def _initial_noise(seeds: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    out = torch.empty((len(seeds), *shape), dtype=torch.float32)
    generator = torch.Generator()
    for row, s in enumerate(seeds.tolist()):
        generator.manual_seed(int(s))
        out[row] = torch.randn(shape, generator=generator)
    return out


@torch.inference_mode()
def generate(
    unet: Any,
    num_per_class: int,
    num_classes: int,
    *,
    scheduler: Any = None,
    steps: int = 20,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    sigma_min: float | None = EDM_SIGMA_MIN,
    sigma_max: float | None = EDM_SIGMA_MAX,
    rescale_timesteps: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``num_per_class`` images of each class ``0 .. num_classes − 1`` with EDM's Heun sampler.

    Args:
        unet: a diffusers ``UNet2DModel`` with ``num_class_embeds`` (called as
            ``unet(x, t, class_labels=y).sample``), or a :class:`~msds_lightning.models.DiffusionDenoiser`
            holding one (its scheduler and ``rescale_timesteps`` are then used). Image size and channels come
            from ``unet.config`` (``sample_size``, ``in_channels``); a learned-variance output's second half
            is ignored.
        num_per_class: images per class.
        num_classes: classes; labels are forced to the class index (EDM's one-hot class conditioning).
        scheduler: the ``DDPMScheduler`` the UNet was trained with (default: the denoiser's).
        steps: sampler steps n (2n − 1 UNet calls); the reference uses 20 (CIFAR-10) or 25.
        batch_size: images per UNet call; the output does not depend on it (see below).
        seed: seed of the initial noise (see :func:`sample_seeds`).
        device: ``None``/``"auto"``: CUDA if available, else CPU. The UNet is moved there.
        sigma_min, sigma_max: Karras schedule ends (EDM's 0.002 and 80), clamped to the training σ range.
        rescale_timesteps: feed ``t·1000/T`` (improved-diffusion checkpoints); ``None``: the denoiser's
            setting (``False`` for a bare UNet).
        progress: called as ``progress(done, total)`` after each batch.

    Returns:
        ``(images, labels)``: uint8 [N, H, W, C] with ``u8 = clip(x·127.5 + 128, 0, 255)`` truncated (EDM's
        mapping of [-1, 1]), int64 [N]; N = num_classes · num_per_class, grouped by class (all of class 0,
        then class 1, ...).

    Determinism: image ``i`` of class ``c`` starts from noise drawn on the CPU by its own
    ``torch.Generator`` (seed from :func:`sample_seeds`) and the sampler is deterministic, so the result
    depends on (weights, seed, steps, σ range) only, not on ``batch_size`` or the device's RNG, up to the
    floating-point differences of batched convolutions on a given device (exact on the CPU in our tests).
    """
    unet, scheduler, rescale = _unet_and_schedule(unet, scheduler, rescale_timesteps)
    for name, value in (("num_per_class", num_per_class), ("num_classes", num_classes), ("steps", steps),
                        ("batch_size", batch_size)):  # fmt: skip
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    require_class_embeddings(unet, num_classes)
    device = resolve_device(device)
    channels = int(unet.config.in_channels)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    shape = (channels, height, width)

    heun = edm_heun_scheduler(scheduler, sigma_min, sigma_max)
    time_scale = 1000.0 / heun.config.num_train_timesteps if rescale else 1.0
    seeds = sample_seeds(seed, num_per_class, num_classes).reshape(-1)
    all_labels = np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class)
    total = len(all_labels)
    images = np.empty((total, height, width, channels), dtype=np.uint8)

    was_training = unet.training
    unet.eval().to(device)
    try:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            y = torch.from_numpy(all_labels[start:stop]).to(device)
            noise = _initial_noise(seeds[start:stop], shape).to(device)
            x = edm_sample(unet, noise, y, heun, steps, time_scale=time_scale)
            u8 = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
            images[start:stop] = u8.permute(0, 2, 3, 1).cpu().numpy()
            if progress is not None:
                progress(stop, total)
    finally:
        unet.train(was_training)
    return images, all_labels


def edm_sample(
    unet: Any,
    noise: torch.Tensor,
    class_labels: torch.Tensor,
    heun: Any,
    steps: int,
    time_scale: float = 1.0,
) -> torch.Tensor:
    """Run the deterministic Heun sampler from standard-normal ``noise`` [B, C, H, W] to σ = 0.

    ``heun`` is an :func:`edm_heun_scheduler`; the UNet sees ``x / sqrt(σ² + 1)`` (the DDPM's ``x_t``) at the
    fractional timestep ``t(σ)`` (log-σ interpolation of the training schedule) times ``time_scale``, with
    ``class_labels`` [B]. Returns the final sample (nominally in [-1, 1], not clipped) as float32.
    """
    channels = noise.shape[1]
    device = noise.device
    heun.set_timesteps(steps, device=device)
    x = noise.float() * heun.init_noise_sigma.to(device)
    for t in heun.timesteps:
        x_in = heun.scale_model_input(x, t)
        t_in = (t.to(device, torch.float32) * time_scale).expand(len(x))
        out = unet(x_in.to(unet.dtype), t_in, class_labels=class_labels).sample
        x = heun.step(out[:, :channels].float(), t, x).prev_sample
    return x
