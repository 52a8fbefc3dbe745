"""The released OpenAI diffusion UNets (:data:`KINDS`: improved-diffusion CIFAR-10, guided-diffusion
ImageNet 256) and the translation of an OpenAI UNet config into a diffusers ``UNet2DModel`` config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------------------------------
# The released checkpoints
# ------------------------------------------------------------------------------------------------------

# UNet2DModel settings shared by every OpenAI ADM UNet (GroupNorm(32, eps 1e-5), SiLU, [cos, sin] sinusoid
# without frequency shift, Linear-SiLU-Linear time MLP of width 4·model_channels, attention GroupNorm in the
# middle block too).
_SHARED_UNET = {
    "in_channels": 3,
    "out_channels": 6,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "scale_shift",
    "attn_norm_num_groups": 32,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "add_attention": True,
    "center_input_sample": False,
}


@dataclass(frozen=True)
class OpenAIKind:
    """One released OpenAI UNet checkpoint and everything needed to use it as a denoiser.

    Attributes:
        name: the ``--kind`` value.
        description: one line for messages.
        checkpoint: the released file name.
        url: where the file is published.
        openai_config: keyword arguments of the library's ``UNetModel`` for this checkpoint
            (``attention_resolutions`` as downsample factors, as ``script_util.create_model`` passes them).
        unet: the equivalent diffusers ``UNet2DModel`` config.
        scheduler: ``DDPMScheduler`` config of the training noise schedule.
        rescale_timesteps: the network was trained on ``t·1000/T`` instead of ``t``.
        pad_to: default ``pad_to`` written into the folder (see :class:`DiffusionDenoiser`).
        num_parameters: parameter count of the network.
    """

    name: str
    description: str
    checkpoint: str
    url: str
    openai_config: Mapping[str, Any]
    unet: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    rescale_timesteps: bool
    pad_to: int | None
    num_parameters: int


KINDS: dict[str, OpenAIKind] = {
    "improved-cifar10": OpenAIKind(
        name="improved-cifar10",
        description="improved-diffusion unconditional CIFAR-10, 32 px, L_hybrid, cosine schedule, 4000 steps",
        checkpoint="cifar10_uncond_50M_500K.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt",
        openai_config={
            "in_channels": 3,
            "model_channels": 128,
            "out_channels": 6,
            "num_res_blocks": 3,
            "attention_resolutions": [2, 4],
            "dropout": 0.3,
            "channel_mult": [1, 2, 2, 2],
            "conv_resample": True,
            "dims": 2,
            "num_classes": None,
            "use_checkpoint": False,
            "num_heads": 4,
            "num_heads_upsample": -1,
            "use_scale_shift_norm": True,
        },
        unet={
            **_SHARED_UNET,
            "sample_size": 32,
            "block_out_channels": [128, 256, 256, 256],
            "layers_per_block": 3,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
            "downsample_type": "conv",
            "upsample_type": "conv",
            "attention_head_dim": 64,
            "dropout": 0.3,
        },
        scheduler={
            "num_train_timesteps": 4000,
            "beta_schedule": "squaredcos_cap_v2",
            "variance_type": "learned_range",
            "prediction_type": "epsilon",
        },
        rescale_timesteps=True,
        pad_to=None,
        num_parameters=52_546_438,
    ),
    "guided-256": OpenAIKind(
        name="guided-256",
        description="guided-diffusion unconditional ImageNet 256x256, linear schedule, 1000 steps",
        checkpoint="256x256_diffusion_uncond.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
        openai_config={
            "image_size": 256,
            "in_channels": 3,
            "model_channels": 256,
            "out_channels": 6,
            "num_res_blocks": 2,
            "attention_resolutions": [8, 16, 32],
            "dropout": 0.0,
            "channel_mult": [1, 1, 2, 2, 4, 4],
            "conv_resample": True,
            "dims": 2,
            "num_classes": None,
            "use_checkpoint": False,
            "use_fp16": True,
            "num_heads": 4,
            "num_head_channels": 64,
            "num_heads_upsample": -1,
            "use_scale_shift_norm": True,
            "resblock_updown": True,
            "use_new_attention_order": False,
        },
        unet={
            **_SHARED_UNET,
            "sample_size": 256,
            "block_out_channels": [256, 256, 512, 512, 1024, 1024],
            "layers_per_block": 2,
            "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D"] * 3,
            "up_block_types": ["AttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"] * 3,
            "downsample_type": "resnet",
            "upsample_type": "resnet",
            "attention_head_dim": 64,
            "dropout": 0.0,
        },
        scheduler={
            "num_train_timesteps": 1000,
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "variance_type": "learned_range",
            "prediction_type": "epsilon",
        },
        rescale_timesteps=False,
        # MSDS runs the 256 px UNet on 224 px crops reflection-padded to 256 (Carlini et al. fed 224 as is).
        pad_to=256,
        num_parameters=552_814_086,
    ),
}

KIND_DEFAULT: Any = object()  # "use the kind's pad_to"


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the requested UNet."""


# ------------------------------------------------------------------------------------------------------
# OpenAI config → diffusers config
# ------------------------------------------------------------------------------------------------------

_OPENAI_CONFIG_KEYS = {
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
    "dropout", "channel_mult", "conv_resample", "dims", "num_classes", "use_checkpoint", "use_fp16",
    "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
    "use_new_attention_order",
}  # fmt: skip
_REQUIRED_OPENAI_KEYS = (
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
)


def diffusers_config_from_openai(
    openai_config: Mapping[str, Any], kind: str | None = None, sample_size: int | None = None
) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config equivalent to an OpenAI ``UNetModel(**openai_config)``.

    Works for both libraries' ``UNetModel`` keyword arguments (improved-diffusion has no ``image_size``,
    ``num_head_channels``, ``resblock_updown``, ``use_new_attention_order`` or ``use_fp16``; their library
    defaults are assumed). ``attention_resolutions`` are downsample factors (1 = full resolution), as the
    libraries' ``create_model`` passes them. ``sample_size`` (metadata only) is ``image_size`` if the config
    has one, else ``sample_size``, else that of ``kind``.

    Raises ``ValueError`` for what a ``UNet2DModel`` cannot express: class-conditional models, non-2D models,
    average-pool resampling (``conv_resample=False``), attention layers with different head widths
    (diffusers has one ``attention_head_dim``: every attention layer must have heads of one width, or a single
    head each), or ``channel_mult[0] != 1`` (guided-diffusion's 512 px
    ``(0.5, 1, 1, 2, 2, 4, 4)``: diffusers ties the first level's width to the timestep embedding's).
    """
    config = dict(openai_config)
    unknown = sorted(set(config) - _OPENAI_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"OpenAI UNet config: unknown keys {unknown}")
    missing = [key for key in _REQUIRED_OPENAI_KEYS if key not in config]
    if missing:
        raise ValueError(f"OpenAI UNet config: missing keys {missing}")
    if config.get("dims", 2) != 2:
        raise ValueError(
            f"OpenAI UNet config: only 2-D UNets convert to UNet2DModel, got dims={config['dims']}"
        )
    if config.get("num_classes") is not None:
        raise ValueError(
            f"OpenAI UNet config: class-conditional models (num_classes={config['num_classes']}) are not "
            f"supported; the denoiser calls the UNet without class labels"
        )
    resblock_updown = bool(config.get("resblock_updown", False))
    if not resblock_updown and not config.get("conv_resample", True):
        raise ValueError(
            "OpenAI UNet config: conv_resample=False (average-pool / plain nearest resampling) has no "
            "UNet2DModel equivalent"
        )

    model_channels = int(config["model_channels"])
    channel_mult = list(config.get("channel_mult", (1, 2, 4, 8)))
    if not channel_mult:
        raise ValueError("OpenAI UNet config: channel_mult must list at least one level, got an empty list")
    if channel_mult[0] != 1:
        first = channel_mult[0]
        raise ValueError(
            f"OpenAI UNet config: channel_mult[0] must be 1 to convert, got {first} in channel_mult "
            f"{tuple(channel_mult)}, because diffusers' UNet2DModel makes its first level exactly as wide as "
            f"its timestep embedding (block_out_channels[0]), while this UNet's first level has "
            f"{first}·model_channels channels and its timestep embedding model_channels."
        )
    # As the OpenAI UNets size each level: int(mult * model_channels).
    block_out_channels = [int(m * model_channels) for m in channel_mult]
    factors = {int(ds) for ds in config["attention_resolutions"]}
    attention = [2**level in factors for level in range(len(channel_mult))]

    num_heads = int(config.get("num_heads", 1))
    num_heads_upsample = int(config.get("num_heads_upsample", -1))
    if num_heads_upsample == -1:
        num_heads_upsample = num_heads
    head_channels = int(config.get("num_head_channels", -1))

    def heads_of(channels: int, heads: int, where: str) -> int:
        """The layer's head count, as the OpenAI AttentionBlock computes it."""
        if head_channels != -1:
            if head_channels <= 0 or channels % head_channels:
                raise ValueError(
                    f"OpenAI UNet config: {where} attention has {channels} channels, not divisible into heads of "
                    f"num_head_channels={head_channels}"
                )
            return channels // head_channels
        if heads <= 0 or channels % heads:
            raise ValueError(
                f"OpenAI UNet config: {where} attention has {channels} channels, not divisible into "
                f"{heads} heads"
            )
        return heads

    # Every attention layer: (where, channels, heads). The middle block always has one, with num_heads.
    layers = []
    for level in range(len(channel_mult)):
        if attention[level]:
            channels = block_out_channels[level]
            down = heads_of(channels, num_heads, f"level {level}")
            up = heads_of(channels, num_heads_upsample, f"level {level} (up path)")
            if down == up:
                layers.append((f"level {level}", channels, down))
            else:
                layers += [(f"level {level} (down)", channels, down), (f"level {level} (up)", channels, up)]
    layers.append(
        (
            "the middle block",
            block_out_channels[-1],
            heads_of(block_out_channels[-1], num_heads, "middle block"),
        )
    )
    # diffusers builds every attention layer with heads = channels // attention_head_dim, or with one head of
    # the layer's width when attention_head_dim is None: one head width everywhere, or one head everywhere.
    widths = {channels // heads for _, channels, heads in layers}
    if len(widths) == 1:
        attention_head_dim = widths.pop()
    elif all(heads == 1 for _, _, heads in layers):
        attention_head_dim = None
    else:
        by_width: dict[int, list[str]] = {}
        for where, channels, heads in layers:
            by_width.setdefault(channels // heads, []).append(
                f"{where} ({channels} channels / {heads} heads)"
            )
        described = "; ".join(f"{width} wide at {' and '.join(places)}" for width, places in by_width.items())
        hint = (
            f" (num_heads_upsample {num_heads_upsample} differs from num_heads {num_heads})"
            if head_channels == -1 and num_heads_upsample != num_heads
            else ""
        )
        raise ValueError(
            f"OpenAI UNet config: UNet2DModel cannot express this UNet, because its attention heads differ in "
            f"width between layers{hint}: {described}; diffusers' UNet2DModel has a single attention_head_dim "
            f"(one head width for every attention layer, or one head per layer)."
        )

    if sample_size is None:
        sample_size = config.get("image_size")
    if sample_size is None and kind is not None:
        sample_size = kind_spec(kind).unet["sample_size"]

    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D")
        if resblock_updown
        else ("DownBlock2D", "UpBlock2D")
    )
    resample = "resnet" if resblock_updown else "conv"
    return {
        **_SHARED_UNET,
        "in_channels": int(config["in_channels"]),
        "out_channels": int(config["out_channels"]),
        "resnet_time_scale_shift": "scale_shift" if config.get("use_scale_shift_norm", False) else "default",
        "sample_size": sample_size,
        "block_out_channels": block_out_channels,
        "layers_per_block": int(config["num_res_blocks"]),
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attention)],
        "downsample_type": resample,
        "upsample_type": resample,
        "attention_head_dim": attention_head_dim,
        "dropout": float(config.get("dropout", 0.0)),
    }


def kind_spec(kind: str) -> OpenAIKind:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind]
