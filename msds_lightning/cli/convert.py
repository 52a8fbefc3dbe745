"""``msds convert-openai SRC.pt DST_DIR --kind {improved-cifar10,guided-256} [--pad-to N|none]``: an OpenAI
diffusion UNet checkpoint → a diffusers folder that ``DiffusionDenoiser.from_pretrained`` loads
(:mod:`msds_lightning.convert`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ..convert import KINDS, convert_openai_checkpoint
from ..convert.kinds import KIND_DEFAULT

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
        default=KIND_DEFAULT,
        metavar="N|none",
        help="reflection-pad inputs to N x N before the UNet and crop back (default: none for "
        "improved-cifar10, 256 for guided-256)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    return parser


def main(argv: Sequence[str]) -> int:
    """``msds convert-openai SRC.pt DST_DIR --kind {improved-cifar10,guided-256} [--pad-to N|none]``."""
    args = build_parser().parse_args(argv)
    dst = convert_openai_checkpoint(args.src, args.dst, args.kind, args.pad_to, overwrite=args.overwrite, verbose=True)
    spec = KINDS[args.kind]
    saved = json.loads((dst / "denoiser_config.json").read_text())
    print(
        f"wrote {dst}: {spec.description}; diffusers UNet2DModel ({spec.num_parameters:,} parameters, "
        f"safetensors) + DDPMScheduler; rescale_timesteps={saved['rescale_timesteps']}, pad_to={saved['pad_to']}"
    )
    print(f"use it:  msds certify -c {_USAGE_CONFIGS[args.kind]} --model.denoiser.init_args.path {dst}")
    print(f"or:      DiffusionDenoiser.from_pretrained({str(dst)!r})")
    return 0
