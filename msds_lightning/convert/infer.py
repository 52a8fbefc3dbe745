"""An OpenAI UNet's architecture read off its state dict (names and shapes), completed by the training
script's flags (:mod:`.flags`) into the ``UNetModel`` config and the diffusion settings of the checkpoint.

What the tensors determine: ``in_channels``, ``model_channels`` (``time_embed.0``), ``out_channels``
(so ``learn_sigma``), the channels of every level (so ``channel_mult``), ``num_res_blocks``, the levels with
attention, ``resblock_updown`` (ResBlock vs. convolution resampling), ``use_scale_shift_norm`` (the width of
``emb_layers``) and class conditioning (``label_emb``). What only the flags know: the attention heads
(``num_heads``, ``num_head_channels``, ``num_heads_upsample``) and ``use_new_attention_order`` (the ``qkv``
weights have the same shape either way), ``image_size``, ``dropout`` and the whole diffusion (steps, noise
schedule, ``predict_xstart``, ``sigma_small``, ``rescale_timesteps``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .flags import (
    GUIDED,
    IMPROVED,
    ModelFlags,
    attention_factors,
    channel_mult_of,
    scheduler_config,
)
from .kinds import CheckpointMismatchError


@dataclass(frozen=True)
class Layout:
    """The architecture an OpenAI ``UNetModel`` state dict shows."""

    in_channels: int
    model_channels: int
    out_channels: int
    level_channels: tuple[int, ...]  # output channels of each resolution level's ResBlocks
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    resblock_updown: bool
    use_scale_shift_norm: bool
    num_classes: int | None

    @property
    def channel_mult(self) -> tuple[float, ...]:
        return tuple(_mult(c, self.model_channels) for c in self.level_channels)


def _mult(channels: int, model_channels: int) -> float:
    return channels // model_channels if channels % model_channels == 0 else channels / model_channels


def _shape(shapes: Mapping[str, Sequence[int]], key: str, source: str, ndim: int) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None or len(shape) != ndim:
        found = "missing" if shape is None else f"of shape {list(shape)}"
        raise CheckpointMismatchError(
            f"{source} is not an OpenAI improved-/guided-diffusion UNet state dict: {key} is {found} "
            f"(expected a {ndim}-D tensor)"
        )
    return tuple(int(s) for s in shape)


def _submodule(shapes: Mapping[str, Sequence[int]], prefix: str) -> str | None:
    """What ``prefix`` (e.g. ``output_blocks.3.2``) is: "resblock", "attention", "conv" (an Up/Downsample
    convolution), or ``None`` when the state dict has nothing under it."""
    if f"{prefix}.in_layers.0.weight" in shapes:
        return "resblock"
    if f"{prefix}.qkv.weight" in shapes:
        return "attention"
    if f"{prefix}.conv.weight" in shapes or f"{prefix}.op.weight" in shapes:
        return "conv"
    return None


def infer_layout(shapes: Mapping[str, Sequence[int]], source: str = "the state dict") -> Layout:
    """Read the architecture of an OpenAI ``UNetModel`` off its parameter names and shapes.

    The number of levels and ``num_res_blocks`` come from where the up path resamples (every
    ``num_res_blocks + 1`` output blocks, except after the last level), the rest from individual tensors.
    The result is checked in full afterwards, when every tensor is mapped (:func:`.keymap.mismatches`).

    Raises :class:`CheckpointMismatchError` (naming ``source``) for a state dict that is no such UNet, or
    whose resampling layers have no parameters (``conv_resample=False``, average pooling).
    """
    time_in = _shape(shapes, "time_embed.0.weight", source, 2)
    stem = _shape(shapes, "input_blocks.0.0.weight", source, 4)
    out = _shape(shapes, "out.2.weight", source, 4)
    mid = _shape(shapes, "middle_block.0.out_layers.3.weight", source, 4)
    mid_emb = _shape(shapes, "middle_block.0.emb_layers.1.weight", source, 2)
    label = shapes.get("label_emb.weight")

    def indices(name: str) -> list[int]:
        found = {int(m.group(1)) for key in shapes if (m := re.match(rf"{name}\.(\d+)\.", key))}
        if not found or sorted(found) != list(range(max(found) + 1)):
            raise CheckpointMismatchError(
                f"{source}: {name} {sorted(found)} are not numbered 0..n without gaps; parameter-free "
                f"resampling (conv_resample=False, average pooling) has no UNet2DModel equivalent"
            )
        return sorted(found)

    n_in, n_out = len(indices("input_blocks")), len(indices("output_blocks"))
    upsample = {}  # output block → its resampling layer's kind
    for k in range(n_out):
        for j in (1, 2):
            kind = _submodule(shapes, f"output_blocks.{k}.{j}")
            if kind in ("resblock", "conv"):
                upsample[k] = kind
    positions = sorted(upsample)
    per_level = positions[0] + 1 if positions else n_out  # num_res_blocks + 1
    levels = n_out // per_level
    if (
        per_level < 2
        or n_out % per_level
        or positions != [per_level * (level + 1) - 1 for level in range(levels - 1)]
        or n_in != 1 + levels * per_level - 1
        or len(set(upsample.values())) > 1
    ):
        raise CheckpointMismatchError(
            f"{source}: cannot read an OpenAI UNet's levels off its blocks ({n_in} input blocks, {n_out} output "
            f"blocks, upsampling in output blocks {positions}); it is not an improved-/guided-diffusion UNetModel"
        )
    num_res_blocks = per_level - 1
    resblock_updown = upsample.get(positions[0]) == "resblock" if positions else False
    firsts = [1 + level * per_level for level in range(levels)]  # each level's first ResBlock input block
    level_channels = tuple(
        _shape(shapes, f"input_blocks.{i}.0.out_layers.3.weight", source, 4)[0] for i in firsts
    )
    return Layout(
        in_channels=stem[1],
        model_channels=time_in[1],
        out_channels=out[0],
        level_channels=level_channels,
        num_res_blocks=num_res_blocks,
        attention_levels=tuple(_submodule(shapes, f"input_blocks.{i}.1") == "attention" for i in firsts),
        resblock_updown=resblock_updown,
        use_scale_shift_norm=mid_emb[0] == 2 * mid[0],
        num_classes=int(label[0]) if label is not None else None,
    )


def _fmt(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)


def _levels_text(levels: Sequence[bool], image_size: int) -> str:
    sizes = [f"{image_size // 2**level}" for level, on in enumerate(levels) if on]
    return f"attention_resolutions {','.join(sizes) or '(none)'}"


@dataclass(frozen=True)
class OpenAISetup:
    """A checkpoint's ``UNetModel`` config and diffusion, from its tensors and its script flags."""

    library: str
    openai_config: dict[str, Any]
    scheduler: dict[str, Any]
    rescale_timesteps: bool
    flags: ModelFlags
    layout: Layout


def resolve_setup(flags: ModelFlags, layout: Layout, source: str = "the checkpoint") -> OpenAISetup:
    """Combine the flags with what the tensors show.

    A flag that was given must agree with the tensors (``ValueError`` naming both values); one that was not
    given is read off the tensors where they show it, else takes the library's default. The library
    (improved- or guided-diffusion) comes from the flags (or ``parse_model_flags(library=...)``), else from
    the tensors (ResBlock resampling is guided-diffusion's) or the image size; it is only needed, and
    asked for, when ``--rescale_timesteps`` is not given, because the two libraries' defaults differ.
    """
    given = flags.given
    library = flags.library
    if layout.resblock_updown and library == IMPROVED:
        raise ValueError(
            f"{source} resamples with ResBlocks (guided-diffusion's resblock_updown), which improved-diffusion "
            f"does not have; the flags say improved-diffusion"
        )
    if library is None:
        size = given.get("image_size")
        if layout.resblock_updown or size in (128, 512):
            library = GUIDED
        elif size == 32:
            library = IMPROVED
    if library is None and "rescale_timesteps" not in given:
        raise ValueError(
            "The model flags do not tell whether improved-diffusion or guided-diffusion trained this "
            "checkpoint, and their default for rescale_timesteps differs (True / False): pass --library "
            f"{IMPROVED} or --library {GUIDED}, or add --rescale_timesteps True/False to the flags"
        )
    flags = ModelFlags(given=given, library=library, text=flags.text)

    def contradiction(flag: str, checkpoint: str) -> ValueError:
        return ValueError(f"{flags.describe(flag)} contradicts {source}, which has {checkpoint}")

    checks = {
        "num_channels": (layout.model_channels, f"model_channels {layout.model_channels}"),
        "num_res_blocks": (layout.num_res_blocks, f"num_res_blocks {layout.num_res_blocks}"),
        "use_scale_shift_norm": (
            layout.use_scale_shift_norm,
            f"use_scale_shift_norm {layout.use_scale_shift_norm} (emb_layers of "
            f"{'2·' if layout.use_scale_shift_norm else ''}the ResBlock width)",
        ),
        "resblock_updown": (
            layout.resblock_updown,
            f"resblock_updown {layout.resblock_updown} ("
            f"{'ResBlock' if layout.resblock_updown else 'convolution'} resampling)",
        ),
        "class_cond": (
            layout.num_classes is not None,
            "a label_emb" if layout.num_classes is not None else "no label_emb (class_cond False)",
        ),
    }
    for flag, (value, text) in checks.items():
        if flag in given and given[flag] != value:
            raise contradiction(flag, text)
    if (
        "learn_sigma" in given
        and layout.out_channels != (2 if given["learn_sigma"] else 1) * layout.in_channels
    ):
        raise contradiction(
            "learn_sigma", f"{layout.out_channels} output channels for {layout.in_channels} inputs"
        )
    if layout.out_channels not in (layout.in_channels, 2 * layout.in_channels):
        raise ValueError(
            f"{source} has {layout.out_channels} output channels for {layout.in_channels} input channels; a "
            f"diffusion UNet has as many (ε) or twice as many (ε and learned variance)"
        )
    learn_sigma = layout.out_channels == 2 * layout.in_channels
    channel_mult = layout.channel_mult
    expected_mult = channel_mult_of(flags)
    if expected_mult is not None and tuple(expected_mult) != channel_mult:
        flag = "channel_mult" if "channel_mult" in given else "image_size"
        implied = (
            ""
            if flag == "channel_mult"
            else f" (in {library or 'both libraries'}: channel_mult {_fmt(expected_mult)})"
        )
        raise ValueError(
            f"{flags.describe(flag)}{implied} contradicts {source}, which has channel_mult {_fmt(channel_mult)} "
            f"(level channels {_fmt(layout.level_channels)} over model_channels {layout.model_channels})"
        )
    image_size = int(flags.value("image_size"))
    factors = attention_factors(flags)
    from_flags = tuple(2**level in factors for level in range(len(channel_mult)))
    if "attention_resolutions" in given and from_flags != layout.attention_levels:
        raise ValueError(
            f"--attention_resolutions {given['attention_resolutions']} (at --image_size {image_size}: "
            f"{_levels_text(from_flags, image_size)}) contradicts {source}, which has attention at "
            f"{_levels_text(layout.attention_levels, image_size)}"
        )

    # Library defaults of UNetModel's own arguments; improved-diffusion's UNetModel lacks guided's extras.
    config: dict[str, Any] = {
        "in_channels": layout.in_channels,
        "model_channels": layout.model_channels,
        "out_channels": layout.out_channels,
        "num_res_blocks": layout.num_res_blocks,
        "attention_resolutions": [2**level for level, on in enumerate(layout.attention_levels) if on],
        "dropout": float(flags.value("dropout")),
        "channel_mult": list(channel_mult),
        "conv_resample": True,
        "dims": 2,
        "num_classes": layout.num_classes,
        "use_checkpoint": bool(flags.value("use_checkpoint")),
        "num_heads": int(flags.value("num_heads")),
        "num_heads_upsample": int(flags.value("num_heads_upsample")),
        "use_scale_shift_norm": layout.use_scale_shift_norm,
    }
    if library != IMPROVED:
        config = {
            "image_size": image_size,
            **config,
            "use_fp16": bool(flags.value("use_fp16", GUIDED)),
            "num_head_channels": int(flags.value("num_head_channels", GUIDED)),
            "resblock_updown": layout.resblock_updown,
            "use_new_attention_order": bool(flags.value("use_new_attention_order", GUIDED)),
        }
        # keep UNetModel's argument order
        order = ["image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
                 "attention_resolutions", "dropout", "channel_mult", "conv_resample", "dims", "num_classes",
                 "use_checkpoint", "use_fp16", "num_heads", "num_head_channels", "num_heads_upsample",
                 "use_scale_shift_norm", "resblock_updown", "use_new_attention_order"]  # fmt: skip
        config = {key: config[key] for key in order}
    scheduler = scheduler_config(ModelFlags(given={**given, "learn_sigma": learn_sigma}, library=library,
                                            text=flags.text))  # fmt: skip
    rescale = bool(
        given["rescale_timesteps"] if "rescale_timesteps" in given else flags.value("rescale_timesteps")
    )
    return OpenAISetup(
        library=library or "improved- or guided-diffusion",
        openai_config=config,
        scheduler=scheduler,
        rescale_timesteps=rescale,
        flags=flags,
        layout=layout,
    )
