"""IDC, the image-to-image diffusion classifier (Mei, Dong, Xu 2024; ../shared/research/others.md part C).

A small U-Net learns a few-step Brownian-bridge translation from the input image to the fixed *label image*
of its class (one of K nearly orthogonal patterns); the predicted class is the label image nearest (mean
absolute difference) to the translation. No separate classifier; 4 network evaluations per prediction with
the paper's schedule.

Conventions (as the rest of the package): images and label images are pixels in [0, 1] at the interface;
inside the bridge both are mapped to [-1, 1]. In BBDM's notation, ``x0`` is the bridge's *target* (the label
image) and ``y`` its *source* (the input image): sampling starts at ``x_T = y`` and ends at ``x̂0``.

Pure PyTorch + diffusers (no Lightning): :class:`IDCModule` (``msds_lightning.modules``) trains it,
``msds attack --idc DIR`` attacks it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from ..runs import honour_umask

IDC_CONFIG_NAME = "idc_config.json"
LABEL_IMAGES_NAME = "label_images.safetensors"
OUTPUTS = ("logits", "scores")

_ATTN_UNET = dict(
    layers_per_block=1, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
    upsample_type="resnet", norm_num_groups=32,
)  # fmt: skip
IDC_UNETS: dict[str, dict[str, Any]] = {
    # The paper's pruned U-Net for CIFAR-10: 64 base channels, channel multipliers (1, 4), one residual block
    # per level, attention at 32 and 16 px (32 channels per head), scale-shift norm, residual up/downsampling.
    # 10.2 M parameters as diffusers builds it (the official OpenAI-style module: 9.39 M).
    "idc_cifar10": dict(
        _ATTN_UNET, sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 256),
        down_block_types=("AttnDownBlock2D",) * 2, up_block_types=("AttnUpBlock2D",) * 2, attention_head_dim=32,
    ),
    # CIFAR-100: multipliers (1, 4, 8), 64 channels per head; 46.8 M parameters here (official: 42.8 M).
    "idc_cifar100": dict(
        _ATTN_UNET, sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 256, 512),
        down_block_types=("AttnDownBlock2D",) * 3, up_block_types=("AttnUpBlock2D",) * 3, attention_head_dim=64,
    ),
    # The demo's: 8×8 gray digits, same layout at a width a CPU trains in minutes.
    "idc_digits": dict(
        _ATTN_UNET, sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
        down_block_types=("AttnDownBlock2D",) * 2, up_block_types=("AttnUpBlock2D",) * 2, attention_head_dim=16,
        norm_num_groups=8,
    ),
}  # fmt: skip


def idc_unet_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The ``UNet2DModel`` config of a registered IDC variant (:data:`IDC_UNETS`), with ``overrides`` applied."""
    if name not in IDC_UNETS:
        raise ValueError(f"unknown IDC U-Net {name!r}; registered: {sorted(IDC_UNETS)}")
    return {**copy.deepcopy(IDC_UNETS[name]), **overrides}


# ------------------------------------------------------------------------------------------------------
# Label images
# ------------------------------------------------------------------------------------------------------


def orthogonal_label_images(num_classes: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """K label images ([K, C, H, W], float32, each min-max scaled to exactly [0, 1]) from orthonormal vectors.

    Construction (the official code's): ``A ~ N(0, 1)`` of shape ``K × D`` (D = C·H·W) drawn by a CPU generator
    seeded with ``seed``; the reduced QR decomposition ``Aᵀ = QR`` gives ``K`` orthonormal columns; each is
    reshaped to ``shape`` and min-max normalised on its own. The affine rescaling keeps them *nearly*
    orthogonal: after centring, cosine similarities are ``−D·q̄_i·q̄_j / (‖q_i − q̄_i‖·‖q_j − q̄_j‖)`` with
    ``q̄`` a column's mean, of order 1/D (CIFAR-10: at most 0.002). The QR is computed in float64 by
    ``torch.linalg.qr``; LAPACK's sign convention fixes each column's sign, and a flipped sign turns a label
    image into its negative (``1 − p``), so the images are stored with every model rather than re-derived.
    """
    shape = tuple(int(s) for s in shape)
    dim = math.prod(shape)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if num_classes > dim:
        raise ValueError(
            f"at most C·H·W = {dim} orthogonal label images of shape {shape}, asked for {num_classes}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    a = torch.randn(num_classes, dim, generator=generator)
    q, _ = torch.linalg.qr(a.T.double(), mode="reduced")  # [D, K], orthonormal columns
    q = q.T
    low, high = q.amin(dim=1, keepdim=True), q.amax(dim=1, keepdim=True)
    return ((q - low) / (high - low)).float().reshape(num_classes, *shape)


def label_distances(images: torch.Tensor, label_images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference ([B, K]) between images [B, C, H, W] and label images [K, C, H, W]."""
    return (images.unsqueeze(1) - label_images.unsqueeze(0)).abs().flatten(2).mean(dim=2)


# ------------------------------------------------------------------------------------------------------
# Brownian bridge
# ------------------------------------------------------------------------------------------------------


def bbdm_steps(num_timesteps: int, sample_steps: int) -> list[int]:
    """BBDM's "linear" skip schedule: ``sample_steps`` timesteps from ``T − 1`` down to 0, e.g. T = 4,
    4 steps: ``[3, 1, 1, 0]`` (the 1 → 1 step is an identity update that still costs a network call)."""
    if not 3 <= sample_steps <= num_timesteps + 1:
        raise ValueError(f"sample_steps must be in [3, T + 1] = [3, {num_timesteps + 1}], got {sample_steps}")
    stride = (num_timesteps - 1) / (sample_steps - 2)
    middle = torch.arange(num_timesteps - 1, 1, -stride).long().tolist()
    return [*middle, 1, 0]


class BrownianBridge(nn.Module):
    """The Brownian-bridge diffusion between a target ``x0`` (t = 0 side) and a source ``y`` (t = T − 1 side).

    Schedule (BBDM, IDC's setting): ``m_t`` linear from ``m_min`` to ``m_max`` over T timesteps, variance
    ``δ_t = 2·s·(m_t − m_t²)`` (s = ``max_var``). T = 4: m = [0.001, 0.3337, 0.6663, 0.999],
    δ = [0.002, 0.4447, 0.4447, 0.002].

    Forward marginal: ``x_t = (1 − m_t)·x0 + m_t·y + √δ_t·ε``; the network's objective ("grad") is
    ``o_t = m_t·(y − x0) + √δ_t·ε``, so that ``x0 = x_t − o_t``.
    """

    def __init__(
        self, num_timesteps: int = 4, m_min: float = 0.001, m_max: float = 0.999, max_var: float = 1.0
    ):
        super().__init__()
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if not 0.0 <= m_min < m_max < 1.0:
            raise ValueError(f"need 0 <= m_min < m_max < 1, got m_min={m_min}, m_max={m_max}")
        if not max_var > 0:
            raise ValueError(f"max_var must be > 0, got {max_var}")
        self.num_timesteps, self.m_min, self.m_max, self.max_var = int(num_timesteps), m_min, m_max, max_var
        m = torch.linspace(m_min, m_max, num_timesteps, dtype=torch.float64)
        self.register_buffer("m", m.float(), persistent=False)
        self.register_buffer("variance", (2.0 * max_var * (m - m * m)).float(), persistent=False)

    def config(self) -> dict[str, Any]:
        return dict(
            num_timesteps=self.num_timesteps, m_min=self.m_min, m_max=self.m_max, max_var=self.max_var
        )

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def marginal(
        self, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, o_t)`` for per-example timesteps ``t`` [B] (int64 in [0, T − 1]) and noise ``ε`` like x0."""
        m, std = self._at(self.m, t, x0), self._at(self.variance, t, x0).sqrt()
        objective = m * (y - x0) + std * noise
        return x0 + objective, objective

    def posterior_step(
        self,
        x_t: torch.Tensor,
        y: torch.Tensor,
        x0_hat: torch.Tensor,
        t: int,
        t_next: int,
        eta: float = 1.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse step ``t → t_next`` (t_next ≤ t) given the predicted target ``x̂0`` (BBDM's sampler).

        ``x_{t'} = (1 − m_{t'})·x̂0 + m_{t'}·y + √((δ_{t'} − σ²)/δ_t)·(x_t − (1 − m_t)·x̂0 − m_t·y) + η·σ·z`` with
        ``σ² = (δ_t − δ_{t'}·(1 − m_t)²/(1 − m_{t'})²)·δ_{t'}/δ_t``: with ``x̂0`` the true target and ``η = 1``
        it maps the bridge's marginal at t to its marginal at t' (tested). ``t_next == t`` is the identity.
        """
        m_t, m_n = float(self.m[t]), float(self.m[t_next])
        var_t, var_n = float(self.variance[t]), float(self.variance[t_next])
        sigma2 = max((var_t - var_n * (1.0 - m_t) ** 2 / (1.0 - m_n) ** 2) * var_n / var_t, 0.0)
        mean = (1.0 - m_n) * x0_hat + m_n * y
        mean = mean + math.sqrt(max(var_n - sigma2, 0.0) / var_t) * (x_t - (1.0 - m_t) * x0_hat - m_t * y)
        if eta == 0 or sigma2 == 0:
            return mean
        if noise is None:
            noise = torch.randn_like(x_t)
        return mean + eta * math.sqrt(sigma2) * noise


# ------------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------------


class IDCClassifier(nn.Module):
    """Image-to-image diffusion classifier: ``forward(x)`` maps [B, C, H, W] pixels in [0, 1] to [B, K] outputs.

    Args:
        unet: diffusers ``UNet2DModel`` predicting the bridge objective ``o_t`` from ``(x_t, t)``, images in
            [-1, 1]; its ``in_channels == out_channels == C`` and ``sample_size == H == W``.
        label_images: [K, C, H, W] in [0, 1] (:func:`orthogonal_label_images`), stored with the weights.
        bridge: the :class:`BrownianBridge` it was trained with (default: T = 4, IDC's schedule).
        sample_steps: BBDM skip schedule length (4: steps [3, 1, 1, 0], 4 network evaluations).
        steps: explicit step sequence instead (non-increasing, ending at 0, each in [0, T − 1]).
        eta: scale of the noise injected at each reverse step (1: the paper's stochastic sampler; 0: a
            deterministic one).
        tau: temperature of the scores ``softmax(−d/τ)`` (0.1), where ``d`` are mean absolute distances
            in [0, 1] pixel units to the label images.
        output: what ``forward`` returns. ``"logits"``: ``−d/τ``, whose softmax are the scores, so
            cross-entropy attacks maximise ``−log score_y`` (the default; the strongest gradient signal).
            ``"scores"``: the probabilities ``softmax(−d/τ)`` themselves, which the official attack wrapper
            hands to attacks as if they were logits (reproduces its evaluation; weaker gradients).

    The sampler runs with autograd when asked (attacks differentiate through every step); its noise comes
    from ``generator`` arguments or torch's global generator. ``nfe`` = network evaluations per prediction.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        label_images: torch.Tensor,
        bridge: BrownianBridge | None = None,
        sample_steps: int = 4,
        steps: Sequence[int] | None = None,
        eta: float = 1.0,
        tau: float = 0.1,
        output: str = "logits",
    ) -> None:
        super().__init__()
        self.unet = unet
        self.bridge = bridge if bridge is not None else BrownianBridge()
        label_images = torch.as_tensor(label_images, dtype=torch.float32)
        channels, size = int(unet.config.in_channels), unet.config.sample_size
        if label_images.ndim != 4 or len(label_images) < 2:
            raise ValueError(f"label_images must be [K >= 2, C, H, W], got shape {tuple(label_images.shape)}")
        if int(unet.config.out_channels) != channels or label_images.shape[1] != channels:
            raise ValueError(
                f"unet in/out channels ({channels}/{unet.config.out_channels}) and label images "
                f"({label_images.shape[1]} channels) must agree"
            )
        if size is not None and tuple(label_images.shape[2:]) != (int(size), int(size)):
            raise ValueError(
                f"label images are {tuple(label_images.shape[2:])} px, the U-Net's sample_size {size}"
            )
        if float(label_images.min()) < 0 or float(label_images.max()) > 1:
            raise ValueError("label_images must lie in [0, 1]")
        self.register_buffer("label_images", label_images)
        T = self.bridge.num_timesteps
        self.steps = list(steps) if steps is not None else bbdm_steps(T, sample_steps)
        if (not self.steps or self.steps[-1] != 0 or any(not 0 <= s < T for s in self.steps)
                or any(a < b for a, b in zip(self.steps, self.steps[1:]))):  # fmt: skip
            raise ValueError(
                f"steps must be non-increasing timesteps in [0, {T - 1}] ending at 0, got {self.steps}"
            )
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.eta, self.tau, self.output = float(eta), float(tau), output

    @property
    def num_classes(self) -> int:
        return int(self.label_images.shape[0])

    @property
    def nfe(self) -> int:
        """U-Net evaluations per prediction (the length of the step sequence)."""
        return len(self.steps)

    def objective(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The U-Net's predicted objective ``ô`` for images ``x_t`` in [-1, 1] at timesteps ``t`` [B]."""
        return self.unet(x_t, t).sample

    def translate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the reverse bridge from the input ``x`` ([0, 1] pixels): the generated label-space image in [0, 1]."""
        y = 2.0 * x - 1.0
        x_t = y
        for i, t in enumerate(self.steps):
            timesteps = torch.full((len(x),), t, device=x.device, dtype=torch.long)
            x0_hat = (x_t - self.objective(x_t, timesteps)).clamp(-1.0, 1.0)
            if i == len(self.steps) - 1:
                break
            noise = None
            if self.eta > 0:
                device = x.device if generator is None else generator.device
                noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
            x_t = self.bridge.posterior_step(x_t, y, x0_hat, t, self.steps[i + 1], self.eta, noise)
        return ((x0_hat + 1.0) / 2.0).clamp(0.0, 1.0)

    def distances(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean absolute distances [B, K] of the translation of ``x`` to each label image."""
        return label_distances(self.translate(x, generator), self.label_images.to(x.dtype))

    def scores(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``softmax(−d/τ)`` [B, K]."""
        return torch.softmax(-self.distances(x, generator) / self.tau, dim=1)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        logits = -self.distances(x, generator) / self.tau
        return logits if self.output == "logits" else torch.softmax(logits, dim=1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class of the nearest label image [B] (int64)."""
        return self.distances(x, generator).argmin(dim=1)

    # --------------------------------------------------------------------------------------------------
    # Construction and serialization
    # --------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        unet: str | dict[str, Any] = "idc_cifar10",
        num_classes: int = 10,
        label_seed: int = 0,
        num_timesteps: int = 4,
        m_min: float = 0.001,
        m_max: float = 0.999,
        max_var: float = 1.0,
        sample_steps: int = 4,
        steps: list[int] | None = None,
        eta: float = 1.0,
        tau: float = 0.1,
        output: str = "logits",
        init_std: float | None = 0.02,
        unet_overrides: dict[str, Any] | None = None,
    ) -> IDCClassifier:
        """A fresh model: ``unet`` a registered variant name (:data:`IDC_UNETS`) or a ``UNet2DModel`` config;
        label images from :func:`orthogonal_label_images` with ``label_seed``. ``init_std``: Conv and Linear
        weights drawn from N(0, init_std²) as in the official code (``None``: diffusers' initialisation)."""
        config = idc_unet_config(unet, **(unet_overrides or {})) if isinstance(unet, str) else {
            **dict(unet), **(unet_overrides or {})}  # fmt: skip
        net = UNet2DModel(**config)
        if init_std is not None:
            generator = torch.Generator().manual_seed(int(label_seed))
            for module in net.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    with torch.no_grad():
                        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * init_std)
        shape = (int(net.config.in_channels), int(net.config.sample_size), int(net.config.sample_size))
        labels = orthogonal_label_images(num_classes, shape, label_seed)
        bridge = BrownianBridge(num_timesteps, m_min, m_max, max_var)
        return cls(net, labels, bridge, sample_steps, steps, eta, tau, output)

    def save_pretrained(self, path: str | Path) -> None:
        """Write ``unet/`` (diffusers, safetensors), ``label_images.safetensors`` and ``idc_config.json``."""
        root = Path(path).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet", safe_serialization=True)
        save_file(
            {"label_images": self.label_images.detach().cpu().contiguous()}, str(root / LABEL_IMAGES_NAME)
        )
        config = dict(self.bridge.config(), steps=self.steps, eta=self.eta, tau=self.tau, output=self.output)
        (root / IDC_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        honour_umask(root)  # safetensors writes 0600

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> IDCClassifier:
        """Load a folder written by :meth:`save_pretrained` (local only). ``overrides``: ``steps``, ``eta``,
        ``tau`` or ``output`` to evaluate with other sampler settings than saved."""
        root = Path(path).expanduser()
        missing = [
            n for n in (IDC_CONFIG_NAME, LABEL_IMAGES_NAME, "unet/config.json") if not (root / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"IDC model folder {root} lacks {', '.join(missing)}; expected the layout IDCClassifier.save_pretrained "
                f"writes (unet/, {LABEL_IMAGES_NAME}, {IDC_CONFIG_NAME}), e.g. the export_dir of msds train-idc"
            )
        unknown = set(overrides) - {"steps", "eta", "tau", "output"}
        if unknown:
            raise ValueError(f"unknown IDC override(s) {sorted(unknown)}; allowed: steps, eta, tau, output")
        try:
            config = json.loads((root / IDC_CONFIG_NAME).read_text())
            labels = load_file(str(root / LABEL_IMAGES_NAME))["label_images"]
            unet = UNet2DModel.from_pretrained(root / "unet", local_files_only=True)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot load the IDC model in {root}: {err}") from err
        bridge = BrownianBridge(**{k: config[k] for k in ("num_timesteps", "m_min", "m_max", "max_var")})
        settings = {k: config[k] for k in ("steps", "eta", "tau", "output")}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return cls(unet.eval(), labels, bridge, **settings)

    def extra_repr(self) -> str:
        return f"K={self.num_classes}, steps={self.steps}, eta={self.eta}, tau={self.tau}, output={self.output!r}"
