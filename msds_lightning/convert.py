"""Convert OpenAI improved-diffusion / guided-diffusion UNet checkpoints into diffusers denoiser folders.

The two diffusion models of the papers are published as raw PyTorch state dicts of OpenAI's own
``UNetModel``: improved-diffusion's CIFAR-10 ``cifar10_uncond_50M_500K.pt`` (Carlini et al. 2023, MSDS) and
guided-diffusion's ``256x256_diffusion_uncond.pt`` (ImageNet). :func:`convert_openai_checkpoint` turns one
into a folder that :meth:`DiffusionDenoiser.from_pretrained` loads with no further options: ``unet/`` (a
diffusers ``UNet2DModel`` in safetensors), ``scheduler/`` (the ``DDPMScheduler`` of the training noise
schedule) and ``denoiser_config.json`` (``rescale_timesteps``, ``pad_to``).

How the two networks line up (both are the same ADM-style UNet):

* OpenAI ``input_blocks`` / ``middle_block`` / ``output_blocks`` are flat lists; diffusers groups the same
  modules per resolution level (``down_blocks[l].resnets/attentions/downsamplers``, ``mid_block``,
  ``up_blocks[u]...``). :func:`openai_to_diffusers` walks that structure (number of levels, layers per
  block, attention levels, convolution vs. ResBlock resampling) from a diffusers config.
* ResBlocks: ``in_layers.0/2`` → ``norm1/conv1``, ``emb_layers.1`` → ``time_emb_proj``, ``out_layers.0/3``
  → ``norm2/conv2``, ``skip_connection`` → ``conv_shortcut``; the scale/shift halves are in the same order.
* Attention: ``qkv`` is a 1×1 ``Conv1d`` with ``3C`` outputs. The legacy layout (both released checkpoints)
  groups them per head, ``[q_h, k_h, v_h]`` for head ``h``, so the weight is read as ``(heads, 3, head_dim,
  C)``; ``use_new_attention_order=True`` models group them as ``(3, heads, head_dim, C)``. ``proj_out`` →
  ``to_out.0`` and ``norm`` → ``group_norm``.
* Timesteps: the network embeds whatever value it is given. improved-diffusion fed it ``t·1000/T``
  (``rescale_timesteps=True``), guided-diffusion the integer ``t``; the converted folder records which.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "KINDS",
    "CheckpointMismatchError",
    "OpenAIKind",
    "convert_openai_checkpoint",
    "convert_openai_state_dict",
    "diffusers_config_from_openai",
    "load_openai_state_dict",
    "main",
    "openai_to_diffusers",
]


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

_KIND_DEFAULT: Any = object()  # "use the kind's pad_to"


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
    average-pool resampling (``conv_resample=False``), or attention layers with different head widths
    (diffusers has one ``attention_head_dim``).
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
    channel_mult = [int(m) for m in config.get("channel_mult", (1, 2, 4, 8))]
    block_out_channels = [model_channels * m for m in channel_mult]
    factors = {int(ds) for ds in config["attention_resolutions"]}
    attention = [2**level in factors for level in range(len(channel_mult))]

    num_heads = int(config.get("num_heads", 1))
    num_heads_upsample = int(config.get("num_heads_upsample", -1))
    if num_heads_upsample == -1:
        num_heads_upsample = num_heads
    head_channels = int(config.get("num_head_channels", -1))

    def head_dim(channels: int, heads: int, where: str) -> int:
        width = head_channels if head_channels != -1 else channels // max(heads, 1)
        if width <= 0 or channels % width:
            raise ValueError(
                f"OpenAI UNet config: {where} attention has {channels} channels, not divisible into heads of "
                f"{width} (num_heads={heads}, num_head_channels={head_channels})"
            )
        return width

    widths = {
        f"level {level} ({direction})": head_dim(block_out_channels[level], heads, f"level {level}")
        for level in range(len(channel_mult))
        if attention[level]
        for direction, heads in (("down", num_heads), ("up", num_heads_upsample))
    }
    widths["middle block"] = head_dim(block_out_channels[-1], num_heads, "middle block")
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"OpenAI UNet config: attention head widths differ between layers ({widths}); diffusers' "
            f"UNet2DModel has a single attention_head_dim"
        )

    if sample_size is None:
        sample_size = config.get("image_size")
    if sample_size is None and kind is not None:
        sample_size = _kind(kind).unet["sample_size"]

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
        "attention_head_dim": next(iter(widths.values())),
        "dropout": float(config.get("dropout", 0.0)),
    }


# ------------------------------------------------------------------------------------------------------
# Key mapping
# ------------------------------------------------------------------------------------------------------

# One mapping rule: OpenAI key, diffusers key(s), how the tensor is transformed.
#   "copy":    same tensor
#   "squeeze": 1x1 Conv1d weight [C, C, 1] → Linear weight [C, C]
#   "qkv":     qkv Conv1d weight [3C, C, 1] / bias [3C] → to_q, to_k, to_v weights [C, C] / biases [C]
_Rule = tuple[str, tuple[str, ...], str]

_RESBLOCK_PARTS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)


def _module_rules(openai: str, diffusers: str, kind: str, expected: Mapping[str, torch.Size]) -> list[_Rule]:
    rules: list[_Rule] = []
    if kind == "resblock":
        parts = list(_RESBLOCK_PARTS)
        # A 1x1 skip conv exists exactly where the channel count changes; the diffusers model knows where.
        if f"{diffusers}.conv_shortcut.weight" in expected:
            parts.append(("skip_connection", "conv_shortcut"))
        for o, d in parts:
            rules += [(f"{openai}.{o}.{p}", (f"{diffusers}.{d}.{p}",), "copy") for p in ("weight", "bias")]
    elif kind == "attention":
        rules += [
            (f"{openai}.norm.{p}", (f"{diffusers}.group_norm.{p}",), "copy") for p in ("weight", "bias")
        ]
        rules += [
            (f"{openai}.qkv.{p}", tuple(f"{diffusers}.to_{n}.{p}" for n in "qkv"), "qkv")
            for p in ("weight", "bias")
        ]
        rules.append((f"{openai}.proj_out.weight", (f"{diffusers}.to_out.0.weight",), "squeeze"))
        rules.append((f"{openai}.proj_out.bias", (f"{diffusers}.to_out.0.bias",), "copy"))
    else:  # a plain conv, linear or norm layer
        rules += [(f"{openai}.{p}", (f"{diffusers}.{p}",), "copy") for p in ("weight", "bias")]
    return rules


def _sampler_kind(block_type: str, config_type: str) -> str:
    """ "conv" or "resnet": how a diffusers block resamples."""
    if block_type in ("DownBlock2D", "UpBlock2D"):
        return "conv"
    if block_type in ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D"):
        return "resnet"
    if config_type not in ("conv", "resnet"):
        raise ValueError(f"unsupported down/upsample_type {config_type!r} (expected 'conv' or 'resnet')")
    return config_type


_DOWN_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
_UP_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")


def _key_plan(unet_config: Mapping[str, Any], expected: Mapping[str, torch.Size]) -> list[_Rule]:
    """Every OpenAI → diffusers rule for a UNet2DModel config, from its structure alone."""
    down_types = list(unet_config.get("down_block_types", ()))
    up_types = list(unet_config.get("up_block_types", ()))
    levels = len(down_types)
    layers = int(unet_config.get("layers_per_block", 2))
    bad = [t for t in down_types if t not in _DOWN_TYPES] + [t for t in up_types if t not in _UP_TYPES]
    if bad:
        raise ValueError(f"UNet2DModel config: block types {bad} have no OpenAI UNetModel counterpart")
    if unet_config.get("mid_block_type", "UNetMidBlock2D") != "UNetMidBlock2D":
        raise ValueError(
            "UNet2DModel config: the OpenAI middle block maps only to mid_block_type='UNetMidBlock2D'"
        )
    if len(up_types) != levels or levels == 0:
        raise ValueError("UNet2DModel config: need as many up blocks as down blocks, at least one")

    plan: list[_Rule] = []
    add = plan.extend
    add(_module_rules("time_embed.0", "time_embedding.linear_1", "plain", expected))
    add(_module_rules("time_embed.2", "time_embedding.linear_2", "plain", expected))
    add(_module_rules("input_blocks.0.0", "conv_in", "plain", expected))

    index = 1  # input_blocks[0] is conv_in
    for level, block_type in enumerate(down_types):
        prefix = f"down_blocks.{level}"
        for j in range(layers):
            add(_module_rules(f"input_blocks.{index}.0", f"{prefix}.resnets.{j}", "resblock", expected))
            if block_type.startswith("Attn"):
                add(
                    _module_rules(
                        f"input_blocks.{index}.1", f"{prefix}.attentions.{j}", "attention", expected
                    )
                )
            index += 1
        if level != levels - 1:  # every level but the last ends with a downsampling step of its own
            if _sampler_kind(block_type, unet_config.get("downsample_type", "conv")) == "conv":
                add(
                    _module_rules(
                        f"input_blocks.{index}.0.op", f"{prefix}.downsamplers.0.conv", "plain", expected
                    )
                )
            else:
                add(
                    _module_rules(f"input_blocks.{index}.0", f"{prefix}.downsamplers.0", "resblock", expected)
                )
            index += 1

    add(_module_rules("middle_block.0", "mid_block.resnets.0", "resblock", expected))
    if unet_config.get("add_attention", True):
        add(_module_rules("middle_block.1", "mid_block.attentions.0", "attention", expected))
        add(_module_rules("middle_block.2", "mid_block.resnets.1", "resblock", expected))
    else:
        add(_module_rules("middle_block.1", "mid_block.resnets.1", "resblock", expected))

    index = 0
    for u, block_type in enumerate(up_types):
        prefix = f"up_blocks.{u}"
        has_attention = block_type.startswith("Attn")
        for j in range(layers + 1):
            add(_module_rules(f"output_blocks.{index}.0", f"{prefix}.resnets.{j}", "resblock", expected))
            if has_attention:
                add(
                    _module_rules(
                        f"output_blocks.{index}.1", f"{prefix}.attentions.{j}", "attention", expected
                    )
                )
            if j == layers and u != levels - 1:  # the level's last block also upsamples
                sub = f"output_blocks.{index}.{2 if has_attention else 1}"
                if _sampler_kind(block_type, unet_config.get("upsample_type", "conv")) == "conv":
                    add(_module_rules(f"{sub}.conv", f"{prefix}.upsamplers.0.conv", "plain", expected))
                else:
                    add(_module_rules(sub, f"{prefix}.upsamplers.0", "resblock", expected))
            index += 1

    add(_module_rules("out.0", "conv_norm_out", "plain", expected))
    add(_module_rules("out.2", "conv_out", "plain", expected))
    return plan


def _unet_kwargs(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in dict(unet_config).items() if not key.startswith("_")}


@lru_cache(maxsize=8)
def _diffusers_shapes_cached(config_json: str) -> tuple[tuple[str, torch.Size], ...]:
    from diffusers import UNet2DModel

    with torch.device("meta"):  # no memory, no random init
        model = UNet2DModel(**json.loads(config_json))
    return tuple((key, value.shape) for key, value in model.state_dict().items())


def _diffusers_shapes(unet_config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """``{key: shape}`` of ``UNet2DModel(**unet_config).state_dict()``, in order, without allocating it."""
    return dict(_diffusers_shapes_cached(json.dumps(_unet_kwargs(unet_config), sort_keys=True)))


def _openai_shape(rule: str, diffusers_shape: torch.Size) -> tuple[int, ...]:
    if rule == "squeeze":
        return (*diffusers_shape, 1)
    if rule == "qkv":
        if len(diffusers_shape) == 2:
            return (3 * diffusers_shape[0], diffusers_shape[1], 1)
        return (3 * diffusers_shape[0],)
    return tuple(diffusers_shape)


def _listing(title: str, items: Sequence[str], limit: int = 8) -> str:
    shown = "; ".join(items[:limit])
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


def _mismatches(shapes: Mapping[str, Sequence[int]], unet_config: Mapping[str, Any]) -> list[str]:
    """Problems that stop OpenAI tensors of ``shapes`` from filling ``UNet2DModel(**unet_config)``."""
    expected = _diffusers_shapes(unet_config)
    plan = _key_plan(unet_config, expected)
    missing, wrong_shape, internal = [], [], []
    for openai_key, diffusers_keys, rule in plan:
        unknown = [key for key in diffusers_keys if key not in expected]
        if unknown:
            internal.append(f"{openai_key} → {', '.join(unknown)}")
            continue
        if openai_key not in shapes:
            missing.append(f"{openai_key} (for {diffusers_keys[0]})")
            continue
        want = _openai_shape(rule, expected[diffusers_keys[0]])
        got = tuple(shapes[openai_key])
        if got != want:
            wrong_shape.append(
                f"{openai_key}: checkpoint {list(got)}, but {', '.join(diffusers_keys)} needs {list(want)}"
            )
    used = {openai_key for openai_key, _, _ in plan}
    unexpected = [key for key in shapes if key not in used]
    covered = {key for _, diffusers_keys, _ in plan for key in diffusers_keys}
    not_filled = [key for key in expected if key not in covered]
    problems = []
    if missing:
        problems.append(_listing("missing OpenAI keys", missing))
    if unexpected:
        problems.append(_listing("unexpected OpenAI keys", unexpected))
    if wrong_shape:
        problems.append(_listing("shape mismatches", wrong_shape))
    if not_filled:
        problems.append(_listing("diffusers parameters with no OpenAI counterpart", not_filled))
    if internal:
        problems.append(_listing("mapped to parameters the diffusers model does not have", internal))
    return problems


def openai_to_diffusers(
    state_dict: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    new_attention_order: bool = False,
) -> dict[str, torch.Tensor]:
    """Rename and reshape an OpenAI ``UNetModel`` state dict into ``UNet2DModel(**unet_config)``'s.

    The mapping follows the config's structure (levels, ``layers_per_block``, attention levels, convolution
    or ResBlock resampling), so any ADM-style UNet converts, not only the released ones. Every OpenAI key
    must be used and every diffusers parameter filled with exactly the shape it needs; otherwise
    :class:`CheckpointMismatchError` lists the missing and unexpected keys and the shape mismatches.

    Args:
        state_dict: OpenAI key → tensor (any dtype or device, ``meta`` included; dtypes are kept).
        unet_config: the target ``UNet2DModel`` config (e.g. from :func:`diffusers_config_from_openai`).
        new_attention_order: the model was built with ``use_new_attention_order=True`` (``qkv`` grouped as
            ``(3, heads, head_dim)`` instead of the legacy per-head ``(heads, 3, head_dim)``). Neither released
            checkpoint uses it.

    Returns:
        diffusers key → tensor, in ``UNet2DModel.state_dict()`` order.
    """
    problems = _mismatches({key: tuple(value.shape) for key, value in state_dict.items()}, unet_config)
    if problems:
        raise CheckpointMismatchError("; ".join(problems))

    expected = _diffusers_shapes(unet_config)
    head_dim = unet_config.get("attention_head_dim")
    converted: dict[str, torch.Tensor] = {}
    for openai_key, diffusers_keys, rule in _key_plan(unet_config, expected):
        tensor = state_dict[openai_key]
        if rule == "copy":
            converted[diffusers_keys[0]] = tensor
        elif rule == "squeeze":
            converted[diffusers_keys[0]] = tensor.reshape(expected[diffusers_keys[0]])
        else:  # qkv
            shape = expected[diffusers_keys[0]]
            channels = shape[0]
            width = int(head_dim) if head_dim is not None else channels  # diffusers: heads = C // head_dim
            heads = channels // width
            rows = tensor.reshape(3 * channels, -1)
            grouped = (
                rows.reshape(3, heads, width, -1)
                if new_attention_order
                else rows.reshape(heads, 3, width, -1)
            )
            for part, key in enumerate(diffusers_keys):  # q, k, v
                piece = grouped[part] if new_attention_order else grouped[:, part]
                converted[key] = piece.reshape(shape)
    return {key: converted[key] for key in expected}


# ------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------

_NESTED_KEYS = ("state_dict", "model", "ema")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_openai_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenAI UNet checkpoint as a state dict of float32 CPU tensors.

    The file is read with ``torch.load(weights_only=True)`` (memory-mapped when it is in the zip format), so
    it may hold nothing but tensors and plain containers. Accepted: a raw state dict (as OpenAI publishes),
    or a dict holding one under ``"state_dict"``, ``"model"`` or ``"ema"``; a ``module.`` prefix on every key
    (``DataParallel``) is removed. Floating-point tensors are converted to float32.

    Raises ``FileNotFoundError`` / ``OSError`` (missing, unreadable or damaged file) or ``ValueError`` (no
    state dict inside), each naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"OpenAI checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"OpenAI checkpoint {path} is a directory; expected a .pt file")
    try:
        mmap = zipfile.is_zipfile(path)  # torch's zip format can be memory-mapped, legacy files cannot
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle, zip and torch errors of all kinds: report them as a damaged file
        message = " ".join(str(err).split())
        if len(message) > 400:
            message = message[:400] + " ..."
        raise OSError(
            f"Could not read OpenAI checkpoint {path} (damaged, truncated or not a PyTorch file?): "
            f"{type(err).__name__}: {message}"
        ) from err

    state_dict = None
    if _is_tensor_dict(obj):
        state_dict = dict(obj)
    elif isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if _is_tensor_dict(obj.get(key)):
                state_dict = dict(obj[key])
                break
    if state_dict is None:
        found = (
            f"a dict with keys {sorted(map(str, obj))[:10]}"
            if isinstance(obj, Mapping)
            else type(obj).__name__
        )
        raise ValueError(
            f"{path} holds no UNet state dict: expected a dict of tensors, or one under "
            f"{' / '.join(repr(k) for k in _NESTED_KEYS)}; found {found}"
        )
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    not_float = [key for key, value in state_dict.items() if not value.is_floating_point()]
    if not_float:
        raise ValueError(
            f"{path}: " + _listing("non-floating-point tensors in the UNet state dict", not_float)
        )
    return {key: value.float() for key, value in state_dict.items()}


def _kind(kind: str) -> OpenAIKind:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")
    return KINDS[kind]


def _describe(shapes: Mapping[str, Sequence[int]]) -> str:
    """A short structural summary of an OpenAI UNet state dict, for error messages."""
    facts = []
    stem = shapes.get("input_blocks.0.0.weight")
    if stem is not None and len(stem) == 4:
        facts.append(f"model_channels {stem[0]}")
    count = sum(int(torch.Size(shape).numel()) for shape in shapes.values())
    facts.append(f"{count:,} parameters in {len(shapes)} tensors")
    if any(re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", key) for key in shapes):
        facts.append("convolution downsampling")
    elif any(key.startswith("input_blocks.") for key in shapes):
        facts.append("ResBlock downsampling (guided-diffusion resblock_updown)")
    return ", ".join(facts)


def convert_openai_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    kind: str,
    openai_config: Mapping[str, Any] | None = None,
    source: str = "the state dict",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Convert an OpenAI state dict for ``kind`` (or for an explicit ``openai_config``).

    Returns the diffusers state dict and the ``UNet2DModel`` config. If the tensors do not fit, the
    :class:`CheckpointMismatchError` names ``source``, says which other kind they fit if any (e.g. "looks like
    an improved-cifar10 checkpoint"), and lists the mismatches.
    """
    spec = _kind(kind)
    config = dict(spec.openai_config if openai_config is None else openai_config)
    unet_config = diffusers_config_from_openai(config, kind=kind)
    new_order = bool(config.get("use_new_attention_order", False))
    try:
        return openai_to_diffusers(state_dict, unet_config, new_attention_order=new_order), unet_config
    except CheckpointMismatchError as err:
        shapes = {key: tuple(value.shape) for key, value in state_dict.items()}
        target = f"--kind {kind}" if openai_config is None else f"the given OpenAI config (kind {kind})"
        others = [
            other for other in KINDS.values() if other.name != kind and not _mismatches(shapes, other.unet)
        ]
        if others:
            other = others[0]
            article = "an" if other.name[0] in "aeiou" else "a"
            raise CheckpointMismatchError(
                f"{source} looks like {article} {other.name} checkpoint ({other.description}; "
                f"{other.checkpoint}), not {target}. Convert it with --kind {other.name}."
            ) from None
        expectation = ""
        if openai_config is None:
            expectation = f"; {kind} expects {_describe(_openai_shapes(unet_config))}"
        raise CheckpointMismatchError(
            f"{source} does not fit {target}: it has {_describe(shapes)}{expectation}. {err}"
        ) from None


def _openai_shapes(unet_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The OpenAI key → shape layout that converts into ``UNet2DModel(**unet_config)``."""
    expected = _diffusers_shapes(unet_config)
    return {o: _openai_shape(rule, expected[ds[0]]) for o, ds, rule in _key_plan(unet_config, expected)}


def convert_openai_checkpoint(
    src: str | Path,
    dst: str | Path,
    kind: str,
    pad_to: int | None = _KIND_DEFAULT,
    *,
    openai_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Convert an OpenAI improved/guided-diffusion checkpoint into a :class:`DiffusionDenoiser` folder.

    Args:
        src: the ``.pt`` file (e.g. ``cifar10_uncond_50M_500K.pt`` or ``256x256_diffusion_uncond.pt``).
        dst: output folder; ``DiffusionDenoiser.from_pretrained(dst)`` then loads the converted model with the
            kind's noise schedule, ``rescale_timesteps`` and ``pad_to``.
        kind: a key of :data:`KINDS`: ``"improved-cifar10"`` or ``"guided-256"``.
        pad_to: ``pad_to`` to record in the folder; default: the kind's (``None`` for CIFAR-10, 256 for
            guided-256, so 224 px inputs are reflection-padded to 256 and cropped back). ``None`` records no
            padding.
        openai_config: the OpenAI ``UNetModel`` keyword arguments of the checkpoint, if it is not the kind's
            released network (a retrained or smaller model of the same family); the kind then only supplies
            the noise schedule, ``rescale_timesteps`` and the default ``pad_to``.
        overwrite: write into ``dst`` even if it is a non-empty folder.
        verbose: print progress to stderr.

    Returns:
        ``dst`` as a ``Path``.

    Raises:
        FileNotFoundError / OSError: ``src`` missing or unreadable, ``dst`` not writable or already used.
        ValueError: unknown kind, invalid ``pad_to``, no state dict in ``src``, or keys/shapes that do not
            fit (:class:`CheckpointMismatchError`, which says which kind the file looks like when it can tell).
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from msds_lightning.models.denoiser import DiffusionDenoiser

    spec = _kind(kind)
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if pad_to is _KIND_DEFAULT:
        pad_to = spec.pad_to
    # Check the cheap things before reading a (possibly 2 GB) checkpoint.
    unet_config = diffusers_config_from_openai(
        spec.openai_config if openai_config is None else openai_config, kind
    )
    factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    if pad_to is not None and (pad_to <= 0 or pad_to % factor):
        raise ValueError(
            f"pad_to must be a positive multiple of the UNet's downsampling factor {factor}, got {pad_to}"
        )
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"Output {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {dst} is not empty; choose another folder or pass overwrite")

    def log(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    log(f"reading {src}")
    state_dict = load_openai_state_dict(src)
    log(f"converting {len(state_dict)} tensors ({kind})")
    converted, unet_config = convert_openai_state_dict(state_dict, kind, openai_config, source=str(src))
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config)
    unet = unet.to_empty(device="cpu")
    unet.load_state_dict(converted, strict=True)
    del state_dict, converted
    unet.eval()
    scheduler = DDPMScheduler(**spec.scheduler)
    denoiser = DiffusionDenoiser(unet, scheduler, rescale_timesteps=spec.rescale_timesteps, pad_to=pad_to)
    log(f"writing {dst}")
    denoiser.save_pretrained(dst)
    return dst


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------

_USAGE_CONFIGS = {
    "improved-cifar10": "configs/cifar10/certify_dds.yaml",
    "guided-256": "configs/imagenet/certify_msds.yaml",
}


def _pad_to_arg(value: str) -> int | None:
    if value.lower() in ("none", "0"):
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'none', got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msds convert-openai",
        description="Convert an OpenAI improved-diffusion / guided-diffusion UNet checkpoint (.pt) into a "
        "diffusers denoiser folder (unet/, scheduler/, denoiser_config.json) for DiffusionDenoiser.from_pretrained.",
        epilog="kinds: " + "; ".join(f"{k.name} = {k.checkpoint} ({k.description})" for k in KINDS.values()),
    )
    parser.add_argument("src", help="the OpenAI checkpoint, e.g. cifar10_uncond_50M_500K.pt")
    parser.add_argument("dst", help="output folder, e.g. checkpoints/cifar10/improved_diffusion_uncond_50M")
    parser.add_argument("--kind", required=True, choices=sorted(KINDS), help="which released network it is")
    parser.add_argument(
        "--pad-to",
        type=_pad_to_arg,
        default=_KIND_DEFAULT,
        metavar="N|none",
        help="reflection-pad inputs to N x N before the UNet and crop back (default: none for "
        "improved-cifar10, 256 for guided-256)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``msds convert-openai SRC.pt DST_DIR --kind {improved-cifar10,guided-256} [--pad-to N|none]``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        dst = convert_openai_checkpoint(
            args.src, args.dst, args.kind, args.pad_to, overwrite=args.overwrite, verbose=True
        )
    except (ValueError, OSError) as err:
        print(f"msds convert-openai: error: {err}", file=sys.stderr)
        return 2
    spec = KINDS[args.kind]
    saved = json.loads((dst / "denoiser_config.json").read_text())
    print(
        f"wrote {dst}: {spec.description}; diffusers UNet2DModel ({spec.num_parameters:,} parameters, "
        f"safetensors) + DDPMScheduler; rescale_timesteps={saved['rescale_timesteps']}, pad_to={saved['pad_to']}"
    )
    print(f"use it:  msds certify -c {_USAGE_CONFIGS[args.kind]} --model.denoiser.init_args.path {dst}")
    print(f"or:      DiffusionDenoiser.from_pretrained({str(dst)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
