"""``msds convert-openai SRC.pt DST_DIR (--kind {improved-cifar10,guided-256} | --model-flags "FLAGS"
[--library L]) [--pad-to N|none]``: an OpenAI diffusion UNet checkpoint → a diffusers folder that
``DiffusionDenoiser.from_pretrained`` loads (:mod:`msds_lightning.convert`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from ..convert import KINDS, convert_openai_checkpoint
from ..convert.checkpoint import CONVERSION_RECORD
from ..convert.flags import LIBRARIES
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
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--kind", choices=sorted(KINDS), help="which released network it is")
    which.add_argument(
        "--model-flags",
        metavar='"FLAGS"',
        help="any other improved-/guided-diffusion UNet: the model and diffusion flags it was trained with, "
        'as one string, e.g. "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True '
        '--diffusion_steps 4000 --noise_schedule cosine"; the architecture is read off the checkpoint, the flags '
        "give the attention heads and the diffusion and must agree with the checkpoint",
    )
    parser.add_argument(
        "--library",
        choices=LIBRARIES,
        help="with --model-flags: the repository whose scripts trained the model, when the flags do not tell "
        "(its default for rescale_timesteps is what differs)",
    )
    parser.add_argument(
        "--pad-to",
        type=_pad_to_arg,
        default=KIND_DEFAULT,
        metavar="N|none",
        help="reflection-pad inputs to N x N before the UNet and crop back (default: none for "
        "improved-cifar10 and --model-flags, 256 for guided-256)",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    return parser


def main(argv: Sequence[str]) -> int:
    """``msds convert-openai SRC.pt DST_DIR (--kind K | --model-flags "FLAGS" [--library L]) [--pad-to N|none]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.library is not None and args.model_flags is None:
        parser.error("--library goes with --model-flags")
    dst = convert_openai_checkpoint(
        args.src,
        args.dst,
        args.kind,
        args.pad_to,
        model_flags=args.model_flags,
        library=args.library,
        overwrite=args.overwrite,
        verbose=True,
    )
    saved = json.loads((dst / "denoiser_config.json").read_text())
    settings = f"rescale_timesteps={saved['rescale_timesteps']}, pad_to={saved['pad_to']}"
    if args.kind is not None:
        spec = KINDS[args.kind]
        print(
            f"wrote {dst}: {spec.description}; diffusers UNet2DModel ({spec.num_parameters:,} parameters, "
            f"safetensors) + DDPMScheduler; {settings}"
        )
        print(f"use it:  msds certify -c {_USAGE_CONFIGS[args.kind]} --model.denoiser.init_args.path {dst}")
    else:
        record = json.loads((dst / CONVERSION_RECORD).read_text())
        scheduler = record["scheduler"]
        print(
            f"wrote {dst}: {record['library']} UNet read off the checkpoint and --model-flags "
            f"(UNetModel config in {CONVERSION_RECORD}); diffusers UNet2DModel (safetensors) + DDPMScheduler "
            f"({scheduler['beta_schedule']}, T = {scheduler['num_train_timesteps']}, "
            f"{scheduler['prediction_type']} prediction, {scheduler['variance_type']} variance); {settings}"
        )
        print(f"use it:  msds certify -c CONFIG --model.denoiser.init_args.path {dst}")
    print(f"or:      DiffusionDenoiser.from_pretrained({str(dst)!r})")
    return 0
