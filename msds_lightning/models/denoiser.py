"""One-shot diffusion denoiser for (multi-scale) denoised smoothing.

Randomized smoothing adds Gaussian noise ``δ ~ N(0, σ²I)`` to an image ``x`` in [0, 1] pixel units. A DDPM
trained on images in [-1, 1] sees ``x_t = sqrt(ᾱ_t)·x₀ + sqrt(1-ᾱ_t)·ε``. Scaling ``2(x + δ) - 1`` by
``sqrt(ᾱ_t)`` gives exactly that form when ``sqrt((1-ᾱ_t)/ᾱ_t) = 2σ`` (the factor 2 comes from the [-1, 1]
range), so one UNet call at that timestep estimates the clean image (Carlini et al. 2023, "(Certified!!)
Adversarial Robustness for Free!"; Jeong & Shin 2023, MSDS).

The UNet is a diffusers ``UNet2DModel`` and the noise schedule a diffusers ``DDPMScheduler``. Both are kept
as they are so that checkpoints load and save with the usual diffusers tooling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from ..runs import honour_umask

DENOISER_CONFIG_NAME = "denoiser_config.json"
UNET_CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DenoiseStep:
    """Tensors of one denoising call: ``x0`` in [0, 1]; ``x_t``, ``model_output`` in model units; ``t`` [B]."""

    x0: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    model_output: torch.Tensor


class DiffusionDenoiser(nn.Module):
    """Denoise ``x + δ`` (``δ ~ N(0, σ²I)``, pixels in [0, 1]) with a single call of a diffusion UNet.

    Args:
        unet: diffusers ``UNet2DModel`` trained on images in [-1, 1]. Its output holds the prediction in the
            first ``in_channels`` channels; a model with learned variance outputs ``2·in_channels`` channels
            and the variance half is ignored.
        scheduler: diffusers ``DDPMScheduler`` (any scheduler exposing ``alphas_cumprod`` works) describing the
            noise schedule the UNet was trained with. Its ``prediction_type`` (``"epsilon"`` by default,
            ``"sample"`` and ``"v_prediction"`` are also understood) says what the UNet predicts. ᾱ is
            recomputed from its config in float64, as improved-/guided-diffusion compute it
            (:func:`float64_alphas_cumprod`).
        rescale_timesteps: feed the UNet ``t·1000/T`` (a float) instead of the integer ``t``.
            improved-diffusion checkpoints (e.g. the CIFAR-10 ``cifar10_uncond_50M_500K.pt`` with
            ``T = 4000``) were trained that way; guided-diffusion ImageNet checkpoints were not.
        pad_to: if set, reflection-pad inputs to ``pad_to × pad_to`` before the UNet and center-crop the
            output back. MSDS runs the 256 px ImageNet UNet on 224 px crops this way.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        rescale_timesteps: bool = False,
        pad_to: int | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.rescale_timesteps = bool(rescale_timesteps)

        self.in_channels = int(unet.config.in_channels)
        out_channels = int(unet.config.out_channels)
        if out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(
                f"unet: out_channels must be in_channels ({self.in_channels}) or, for a learned-variance model, "
                f"2·in_channels ({2 * self.in_channels}); got {out_channels}"
            )
        # Every down block but the last halves the resolution.
        self.downsample_factor = 2 ** (len(unet.config.block_out_channels) - 1)

        self.prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if self.prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"scheduler: prediction_type must be one of {_PREDICTION_TYPES}, got {self.prediction_type!r}"
            )

        if pad_to is not None and (pad_to <= 0 or pad_to % self.downsample_factor != 0):
            raise ValueError(
                f"pad_to must be a positive multiple of the UNet's downsampling factor "
                f"{self.downsample_factor}, got {pad_to}"
            )
        self.pad_to = pad_to

        alphas_cumprod = float64_alphas_cumprod(scheduler)
        self.num_train_timesteps = len(alphas_cumprod)
        # sqrt((1 - ᾱ_t) / ᾱ_t) is the noise std in [-1, 1] units that x_t / sqrt(ᾱ_t) carries. It must
        # increase with t for the "first t" lookup to be well defined. Kept in float64 on the CPU, outside
        # the buffers, so that `.half()` or `.to(device)` never change which timestep a σ maps to.
        # numpy's sqrt is correctly rounded (as in improved-diffusion); torch's float64 CPU sqrt is not always
        # (about 1 in 100 values one ulp off), which would move σ lying exactly on a boundary.
        table = alphas_cumprod.numpy()
        noise_ratio = torch.from_numpy(np.sqrt((1.0 - table) / table))
        if not bool((noise_ratio[1:] >= noise_ratio[:-1]).all()):
            raise ValueError("scheduler: alphas_cumprod must be non-increasing in t")
        self._noise_ratio = noise_ratio
        self._timestep_cache: dict[float, int] = {}

        # Float32 coefficient tables on the module's device, derived from the float64 ᾱ table (as
        # improved-diffusion's q_sample / p_mean_variance cast its float64 numpy tables).
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer(
            "sqrt_alphas_cumprod", torch.from_numpy(np.sqrt(table)).float(), persistent=False
        )
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", torch.from_numpy(np.sqrt(1.0 - table)).float(), persistent=False
        )

    # ------------------------------------------------------------------------------------------------
    # σ → timestep
    # ------------------------------------------------------------------------------------------------

    @property
    def max_sigma(self) -> float:
        """Largest σ (in [0, 1] pixel units) the schedule reaches: ``sqrt((1-ᾱ_T)/ᾱ_T) / 2``."""
        return float(self._noise_ratio[-1]) / 2.0

    def timestep_for_sigma(self, sigma: float) -> int:
        """Map a smoothing σ (std in [0, 1] pixel units, ``0 < σ <= max_sigma``) to a 0-based timestep.

        Returns the first index ``t`` into ``scheduler.alphas_cumprod`` with ``sqrt((1-ᾱ_t)/ᾱ_t) >= 2σ``.
        The UNet therefore assumes slightly more noise than was added (at most one schedule step more), and
        certificates stay computed with the nominal σ. Results are cached.
        """
        sigma = float(sigma)
        t = self._timestep_cache.get(sigma)
        if t is None:
            self._check_sigma_range(sigma, sigma)
            t = int(torch.searchsorted(self._noise_ratio, torch.tensor([2.0 * sigma], dtype=torch.float64)))
            self._timestep_cache[sigma] = t
        return t

    def timesteps_for_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Vectorised :meth:`timestep_for_sigma` for a tensor of σ values; returns int64 on ``sigmas.device``."""
        flat = sigmas.detach().to("cpu", torch.float64).reshape(-1)
        if flat.numel() == 0:
            raise ValueError("sigma must not be empty")
        self._check_sigma_range(float(flat.min()), float(flat.max()))
        t = torch.searchsorted(self._noise_ratio, 2.0 * flat)
        return t.reshape(sigmas.shape).to(sigmas.device)

    def effective_sigma(self, sigma: float) -> float:
        """The σ (in [0, 1] pixel units) the UNet assumes at ``timestep_for_sigma(sigma)``; always ``>= sigma``."""
        return float(self._noise_ratio[self.timestep_for_sigma(sigma)]) / 2.0

    def _check_sigma_range(self, smallest: float, largest: float) -> None:
        if not smallest > 0.0:  # also rejects NaN
            raise ValueError(f"sigma must be > 0, got {smallest}")
        if largest > self.max_sigma:
            raise ValueError(
                f"sigma={largest} exceeds the largest noise level this schedule reaches "
                f"(max sigma {self.max_sigma:.4g} in [0, 1] pixel units, T={self.num_train_timesteps})"
            )

    # ------------------------------------------------------------------------------------------------
    # Denoising
    # ------------------------------------------------------------------------------------------------

    def denoise_step(self, x_noisy: torch.Tensor, sigma: float | torch.Tensor) -> DenoiseStep:
        """:meth:`forward` keeping the intermediate tensors that training needs (one UNet call).

        Returns the denoised image ``x0`` in [0, 1], the diffusion state ``x_t`` (model units), the
        timesteps ``t`` [B] and the UNet's ``model_output`` (its first ``in_channels`` channels).
        """
        self._check_input(x_noisy)
        t = self._timesteps(sigma, x_noisy.shape[0], x_noisy.device)
        x_t = self._gather(self.sqrt_alphas_cumprod, t, x_noisy) * (2.0 * x_noisy - 1.0)
        output = self.model_output(x_t, t)
        x0 = self._x0_from_output(x_t, t, output).clamp(-1.0, 1.0)
        return DenoiseStep(x0=(x0 + 1.0) / 2.0, x_t=x_t, t=t, model_output=output)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet should output for ``x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise`` (x0 in [-1, 1]):
        ``noise`` for ε-prediction, ``x0`` for sample prediction, ``v`` for v-prediction."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * noise
            - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def diffusion_loss(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample DDPM training loss (mean squared error of the UNet's prediction), for images ``x``
        [B, C, H, W] in [0, 1]; ``t`` defaults to uniform timesteps, ``noise`` to N(0, I);
        ``class_labels`` [B] for a class-conditional UNet (``num_class_embeds``, e.g. a data generator)."""
        self._check_input(x)
        x0 = 2.0 * x - 1.0
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (x.shape[0],), device=x.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )
        error = self.model_output(x_t, t, class_labels) - self.target(x0, noise, t)
        return error.pow(2).flatten(1).mean(1)

    def forward(self, x_noisy: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Estimate the clean image from ``x_noisy = x + δ``.

        Args:
            x_noisy: [B, C, H, W] float, ``x + δ`` in [0, 1] pixel units (values outside [0, 1] are expected
                because of the noise).
            sigma: std of δ in [0, 1] pixel units: a Python float for the whole batch, or a tensor of shape
                [B] with one σ per sample (as drawn during fine-tuning).

        Returns:
            [B, C, H, W] denoised image in [0, 1]. Not wrapped in ``no_grad``: gradients reach the UNet.
        """
        return self.denoise_step(x_noisy, sigma).x0

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """One UNet call: estimate ``x₀`` in [-1, 1] from the diffusion state ``x_t`` at timesteps ``t``.

        Args:
            x_t: [B, C, H, W] float, ``sqrt(ᾱ_t)·x₀ + sqrt(1-ᾱ_t)·ε`` in the model's [-1, 1] units.
            t: int64 tensor of shape [B] (0-based schedule indices).
            clip: clamp the estimate to [-1, 1] (as improved/guided-diffusion's ``clip_denoised``).
        """
        x0 = self._x0_from_output(x_t, t, self.model_output(x_t, t))
        return x0.clamp(-1.0, 1.0) if clip else x0

    def _x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        sqrt_alpha = self._gather(self.sqrt_alphas_cumprod, t, x_t)
        sqrt_one_minus_alpha = self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - sqrt_one_minus_alpha * model_output) / sqrt_alpha
        elif self.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction: v = sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x₀
            x0 = sqrt_alpha * x_t - sqrt_one_minus_alpha * model_output
        return x0

    def model_output(
        self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """UNet prediction (its first ``in_channels`` channels) for ``x_t``, in ``x_t``'s dtype."""
        # Always a float tensor: diffusers turns a Python float timestep into int64 and would drop the .5 of
        # a rescaled timestep such as 289.5.
        timesteps = t.to(torch.float32)
        if self.rescale_timesteps:
            timesteps = timesteps * (1000.0 / self.num_train_timesteps)

        height, width = x_t.shape[-2:]
        sample = self._pad(x_t) if self.pad_to is not None else x_t
        output = self.unet(
            sample.to(self.unet.dtype), timesteps, class_labels=class_labels, return_dict=False
        )[0]
        output = output[:, : self.in_channels].to(x_t.dtype)
        if self.pad_to is not None:
            top, left = (self.pad_to - height) // 2, (self.pad_to - width) // 2
            output = output[..., top : top + height, left : left + width]
        return output

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left = (self.pad_to - height) // 2, (self.pad_to - width) // 2
        bottom, right = self.pad_to - height - top, self.pad_to - width - left
        return F.pad(x, (left, right, top, bottom), mode="reflect")

    def _timesteps(self, sigma: float | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
            if sigma.shape != (batch_size,):
                raise ValueError(
                    f"sigma: expected a float or a tensor of shape [{batch_size}], got {tuple(sigma.shape)}"
                )
            return self.timesteps_for_sigmas(sigma).to(device)
        t = self.timestep_for_sigma(float(sigma))
        return torch.full((batch_size,), t, dtype=torch.long, device=device)

    @staticmethod
    def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table[t.to(table.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"x_noisy: expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        channels, height, width = x.shape[1:]
        if channels != self.in_channels:
            raise ValueError(
                f"x_noisy: expected {self.in_channels} channels (the UNet's in_channels), got {channels}"
            )
        if self.pad_to is None:
            if height % self.downsample_factor or width % self.downsample_factor:
                raise ValueError(
                    f"x_noisy: expected height and width divisible by {self.downsample_factor} (the UNet's "
                    f"downsampling factor), got {height}x{width}; set pad_to to run other sizes"
                )
            return
        if height > self.pad_to or width > self.pad_to:
            raise ValueError(
                f"x_noisy: expected at most {self.pad_to}x{self.pad_to} (pad_to), got {height}x{width}"
            )
        # Reflection padding cannot reach further than the image is wide.
        if math.ceil((self.pad_to - height) / 2) >= height or math.ceil((self.pad_to - width) / 2) >= width:
            raise ValueError(
                f"x_noisy: {height}x{width} is too small to reflection-pad to {self.pad_to}x{self.pad_to}"
            )

    # ------------------------------------------------------------------------------------------------
    # Construction, loading, saving
    # ------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        unet: dict[str, Any],
        scheduler: dict[str, Any],
        rescale_timesteps: bool = False,
        pad_to: int | None = None,
    ) -> DiffusionDenoiser:
        """Build a randomly initialised denoiser from plain dicts (e.g. from a YAML config).

        Args:
            unet: ``UNet2DModel`` keyword arguments (lists are fine where diffusers expects tuples).
            scheduler: ``DDPMScheduler`` keyword arguments, e.g.
                ``{"num_train_timesteps": 4000, "beta_schedule": "squaredcos_cap_v2"}``.
            rescale_timesteps, pad_to: as in the constructor.

        Unknown keys raise ``TypeError`` (keys starting with ``_``, as in saved diffusers configs, are ignored).
        """
        unet_model = UNet2DModel(**_public_keys(unet))
        noise_scheduler = DDPMScheduler(**_public_keys(scheduler))
        return cls(unet_model, noise_scheduler, rescale_timesteps=rescale_timesteps, pad_to=pad_to)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        rescale_timesteps: bool | None = None,
        pad_to: int | None = None,
        revision: str | None = None,
    ) -> DiffusionDenoiser:
        """Load a denoiser from a local diffusers folder or a Hugging Face Hub repo.

        The UNet is read from ``unet/`` if that exists, else from the root; the scheduler from
        ``scheduler/`` or the root. Both layouts occur in practice (pipeline folders such as
        ``google/ddpm-cifar10-32`` keep the UNet at the root and the scheduler in ``scheduler_config.json``),
        and the repo's own scheduler is always the one used: it defines the σ → timestep map.

        Args:
            path: a local folder (always wins when it exists), or a Hub repo id such as
                ``"google/ddpm-cifar10-32"``, resolved by ``huggingface_hub`` (its cache first;
                ``HF_HUB_OFFLINE=1`` reads the cache only; private repos use ``HF_TOKEN``). Only the configs
                and the UNet weights (``diffusion_pytorch_model.safetensors``, else ``.bin``) are fetched.
            rescale_timesteps: ``None`` takes the value saved in ``denoiser_config.json``, ``False`` if the
                folder has none. ``False`` is right for diffusers' own DDPM repos (trained with the integer
                timestep); improved-diffusion conversions need ``True`` (``msds convert-openai`` records it).
            pad_to: ``None`` takes the saved value (no padding if absent); ``0`` disables a saved padding.
            revision: Hub branch, tag or commit hash (``None``: ``main``); only for a Hub id.
        """
        from ..hub import resolve_folder

        resolved = resolve_folder(
            path,
            what="Denoiser folder",
            revision=revision,
            allow_patterns=["*.json"],
            expected="Expected a local diffusers folder with unet/ and scheduler/ sub-folders (as written by "
            "DiffusionDenoiser.save_pretrained or msds convert-openai) or with config.json, "
            "diffusion_pytorch_model.safetensors and scheduler_config.json at its root, or a Hub repo id "
            "such as 'google/ddpm-cifar10-32'.",
        )
        root = resolved.folder
        if root.is_file():
            raise NotADirectoryError(
                f"Denoiser path {root} is a file; expected a diffusers folder (unet/ and scheduler/). Original "
                f"improved/guided-diffusion .pt checkpoints must be converted to the diffusers format first."
            )
        unet_dir = root / "unet" if (root / "unet" / UNET_CONFIG_NAME).is_file() else root
        scheduler_dir = root / "scheduler" if (root / "scheduler" / SCHEDULER_CONFIG_NAME).is_file() else root
        if not (unet_dir / UNET_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"No UNet config in {resolved.source}: expected unet/{UNET_CONFIG_NAME} or {UNET_CONFIG_NAME} "
                f"at its root (a diffusers UNet2DModel folder, as DiffusionDenoiser.save_pretrained writes)"
            )
        if not (scheduler_dir / SCHEDULER_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"No scheduler config in {resolved.source}: expected scheduler/{SCHEDULER_CONFIG_NAME} or "
                f"{SCHEDULER_CONFIG_NAME} at its root. The noise schedule must be known to map sigma to a timestep."
            )
        if resolved.repo_id is not None:
            unet_dir = _fetch_unet_weights(resolved, unet_dir.relative_to(root))

        try:
            unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True)
        except Exception as err:  # diffusers, safetensors and torch raise a variety of types here
            raise OSError(f"Could not load the diffusion UNet from {unet_dir}: {err}") from err
        try:
            scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
        except Exception as err:
            raise OSError(f"Could not load the noise scheduler from {scheduler_dir}: {err}") from err

        saved: dict[str, Any] = {}
        options_file = root / DENOISER_CONFIG_NAME
        if options_file.is_file():
            try:
                saved = json.loads(options_file.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise OSError(f"Could not read {options_file}: {err}") from err
        if rescale_timesteps is None:
            rescale_timesteps = bool(saved.get("rescale_timesteps", False))
        if pad_to is None:
            pad_to = saved.get("pad_to")
        denoiser = cls(unet, scheduler, rescale_timesteps=rescale_timesteps, pad_to=pad_to or None)
        denoiser.source = resolved.source
        denoiser.provenance = dict(saved.get("provenance") or {})
        return denoiser

    #: Where :meth:`from_pretrained` loaded the weights from (a local path or ``repo_id[@revision]``).
    source: str | None = None
    #: What :meth:`save_pretrained` records for the model card: ``base_model`` and ``training``
    #: (``{"method", "sigmas", "objective", "weights", "settings"}``); kept in ``denoiser_config.json``.
    provenance: dict[str, Any] = {}  # replaced per instance, never mutated in place

    def save_pretrained(self, path: str | Path, certification: str | Path | None = None) -> None:
        """Write ``unet/`` (safetensors), ``scheduler/``, ``denoiser_config.json`` and a model card
        ``README.md`` (base model, σ set, objective and weights from :attr:`provenance`; with
        ``certification``, a certification TSV of ``msds certify``, also its certified-accuracy table)."""
        from ..hub import denoiser_card

        root = Path(path).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(root / "scheduler")
        options: dict[str, Any] = {"rescale_timesteps": self.rescale_timesteps, "pad_to": self.pad_to}
        if self.provenance:
            options["provenance"] = self.provenance
        (root / DENOISER_CONFIG_NAME).write_text(json.dumps(options, indent=2) + "\n")
        card = denoiser_card(
            unet_config=dict(self.unet.config),
            scheduler_config=dict(self.scheduler.config),
            options=options,
            provenance=self.provenance,
            certification=certification,
        )
        (root / "README.md").write_text(card)
        honour_umask(root)  # safetensors writes 0600

    def push_to_hub(
        self,
        repo_id: str,
        certification: str | Path | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload denoiser with msds-lightning",
    ) -> str:
        """:meth:`save_pretrained` into a temporary folder and upload it to the Hub repo ``repo_id`` (created
        if needed, ``private`` as given), so that ``from_pretrained(repo_id)`` loads it. The token is the one
        ``huggingface_hub`` finds (``HF_TOKEN`` or ``hf auth login``); none is taken here. Returns the
        commit URL."""
        import tempfile

        from ..hub import push_folder_to_hub

        with tempfile.TemporaryDirectory(prefix="msds-push-") as folder:
            self.save_pretrained(folder, certification=certification)
            return push_folder_to_hub(
                folder, repo_id, private=private, revision=revision, commit_message=commit_message
            )

    def extra_repr(self) -> str:
        return (
            f"T={self.num_train_timesteps}, prediction_type={self.prediction_type!r}, "
            f"rescale_timesteps={self.rescale_timesteps}, pad_to={self.pad_to}"
        )


def float64_alphas_cumprod(scheduler: Any) -> torch.Tensor:
    """ᾱ_t of ``scheduler``'s noise schedule as a float64 CPU tensor, computed as improved-/guided-diffusion do.

    diffusers builds its betas and their cumulative product in float32; the OpenAI libraries build the
    betas in float64 (``get_named_beta_schedule``, ``betas_for_alpha_bar``) and take ``np.cumprod(1 - β)``
    in float64. The float32 table is off by up to ~1e-5 (relative) at T = 4000, enough to move σ → t by one
    step for about 1 in 2,300 σ in [0.01, 2] on the cosine schedule and for most σ lying exactly on a schedule
    boundary. So the betas are rebuilt here in float64 from the scheduler's config: ``trained_betas``, or
    ``beta_schedule`` ``"linear"`` (``np.linspace(beta_start, beta_end, T)``), ``"scaled_linear"``
    (``np.linspace(√beta_start, √beta_end, T)²``) or ``"squaredcos_cap_v2"`` (the cosine schedule, β capped
    at 0.999). Any other scheduler or schedule (``rescale_betas_zero_snr``, ``"sigmoid"``, ...), or a
    recomputation that does not reproduce the scheduler's own ``alphas_cumprod`` to float32 accuracy, falls
    back to the scheduler's table cast to float64.
    """
    reference = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64).cpu()
    betas = _float64_betas(getattr(scheduler, "config", None))
    if betas is None or betas.shape != tuple(reference.shape):
        return reference
    alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas, axis=0))
    # float32 accumulates ~T·2⁻²⁴ relative error over the product; anything larger means another schedule.
    if not torch.allclose(alphas_cumprod, reference, rtol=1e-3, atol=1e-6):
        return reference
    return alphas_cumprod


def _float64_betas(config: Any) -> np.ndarray | None:
    """The betas of a diffusers scheduler config in float64, or ``None`` for a schedule not rebuilt here."""
    if config is None:
        return None
    trained_betas = getattr(config, "trained_betas", None)
    if trained_betas is not None:
        return np.asarray(trained_betas, dtype=np.float64).reshape(-1)
    if getattr(config, "rescale_betas_zero_snr", False):
        return None
    steps = getattr(config, "num_train_timesteps", None)
    schedule = getattr(config, "beta_schedule", None)
    if steps is None:
        return None
    steps = int(steps)
    if schedule in ("linear", "scaled_linear"):
        start, end = float(config.beta_start), float(config.beta_end)
        if schedule == "linear":
            return np.linspace(start, end, steps, dtype=np.float64)
        return np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=np.float64,
        )
    return None


def _fetch_unet_weights(resolved: Any, unet_subdir: Path) -> Path:
    """Download the UNet weights of a Hub denoiser (safetensors if the repo has them, else the ``.bin``
    that older diffusers repos such as ``google/ddpm-cifar10-32`` hold; diffusers reads it with
    ``weights_only=True``) into the snapshot ``resolve_folder`` made; returns the UNet folder."""
    from ..hub import resolve_folder

    prefix = "" if unet_subdir == Path(".") else f"{unet_subdir.as_posix()}/"
    # the commit the configs came from (the snapshot folder's name), so that a push in between cannot mix two
    commit = resolved.folder.name
    revision = (
        commit if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit) else resolved.revision
    )
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        folder = resolve_folder(
            resolved.repo_id, what="Denoiser folder", revision=revision, allow_patterns=[prefix + name]
        ).folder
        if (folder / prefix / name).is_file():
            return folder / unet_subdir
    raise FileNotFoundError(
        f"Denoiser {resolved.source}: the Hub repo has no UNet weights {prefix}diffusion_pytorch_model.safetensors "
        f"(or .bin){' in the cache (HF_HUB_OFFLINE is set)' if _hub_offline() else ''}"
    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _public_keys(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}
