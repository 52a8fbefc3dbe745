"""The OpenAI → diffusers state-dict key map: one rule per tensor (OpenAI key, diffusers key(s), how the
tensor is reshaped), derived from a diffusers config by walking its resolution levels."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch

from .kinds import CheckpointMismatchError

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


def key_plan(unet_config: Mapping[str, Any], expected: Mapping[str, torch.Size]) -> list[_Rule]:
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


def diffusers_shapes(unet_config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """``{key: shape}`` of ``UNet2DModel(**unet_config).state_dict()``, in order, without allocating it."""
    return dict(_diffusers_shapes_cached(json.dumps(_unet_kwargs(unet_config), sort_keys=True)))


def openai_shape(rule: str, diffusers_shape: torch.Size) -> tuple[int, ...]:
    if rule == "squeeze":
        return (*diffusers_shape, 1)
    if rule == "qkv":
        if len(diffusers_shape) == 2:
            return (3 * diffusers_shape[0], diffusers_shape[1], 1)
        return (3 * diffusers_shape[0],)
    return tuple(diffusers_shape)


def listing(title: str, items: Sequence[str], limit: int = 8) -> str:
    shown = "; ".join(items[:limit])
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


def mismatches(shapes: Mapping[str, Sequence[int]], unet_config: Mapping[str, Any]) -> list[str]:
    """Problems that stop OpenAI tensors of ``shapes`` from filling ``UNet2DModel(**unet_config)``."""
    expected = diffusers_shapes(unet_config)
    plan = key_plan(unet_config, expected)
    missing, wrong_shape, internal = [], [], []
    for openai_key, diffusers_keys, rule in plan:
        unknown = [key for key in diffusers_keys if key not in expected]
        if unknown:
            internal.append(f"{openai_key} → {', '.join(unknown)}")
            continue
        if openai_key not in shapes:
            missing.append(f"{openai_key} (for {diffusers_keys[0]})")
            continue
        want = openai_shape(rule, expected[diffusers_keys[0]])
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
        problems.append(listing("missing OpenAI keys", missing))
    if unexpected:
        problems.append(listing("unexpected OpenAI keys", unexpected))
    if wrong_shape:
        problems.append(listing("shape mismatches", wrong_shape))
    if not_filled:
        problems.append(listing("diffusers parameters with no OpenAI counterpart", not_filled))
    if internal:
        problems.append(listing("mapped to parameters the diffusers model does not have", internal))
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
    problems = mismatches({key: tuple(value.shape) for key, value in state_dict.items()}, unet_config)
    if problems:
        raise CheckpointMismatchError("; ".join(problems))

    expected = diffusers_shapes(unet_config)
    head_dim = unet_config.get("attention_head_dim")
    converted: dict[str, torch.Tensor] = {}
    for openai_key, diffusers_keys, rule in key_plan(unet_config, expected):
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
