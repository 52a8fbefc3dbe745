"""``msds generate --denoiser DIR --num-per-class N --num-classes K --output FILE.npz [--steps 20]
[--filter-classifier-name NAME --filter-checkpoint F --keep-per-class K]``: sample a class-conditional
diffusion UNet (EDM Heun, :mod:`msds_lightning.generation`) into generated training data."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..data.generated_files import save_npz
from ..generation.edm import EDM_SIGMA_MAX, EDM_SIGMA_MIN, generate, require_class_embeddings
from ..generation.filtering import filter_top_k
from .classifier_flags import add_classifier_arguments, classifier_kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msds generate",
        description="Class-conditional images from a diffusion UNet (EDM's deterministic Heun sampler) into an "
        ".npz (keys image uint8 N×H×W×C, label int64 N), optionally filtered per class by a classifier's "
        "confidence in the conditioning class (Wang, Pang et al. 2023).",
    )
    p.add_argument("--denoiser", required=True, metavar="DIR",
                   help="DiffusionDenoiser folder (unet/ with num_class_embeds, scheduler/)")  # fmt: skip
    p.add_argument("--num-per-class", type=int, required=True, help="images generated per class")
    p.add_argument("--num-classes", type=int, required=True, help="classes 0..K-1 to generate")
    p.add_argument(
        "--steps", type=int, default=20, help="sampler steps (2n-1 UNet calls; default %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per UNet call (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--sigma-min", type=float, default=EDM_SIGMA_MIN, help="default %(default)s (EDM)")
    p.add_argument("--sigma-max", type=float, default=EDM_SIGMA_MAX, help="default %(default)s (EDM)")
    p.add_argument("--output", "-o", required=True, metavar="FILE.npz", help="output file")
    f = p.add_argument_group("pseudo-label filtering (optional)")
    add_classifier_arguments(f, "--filter-classifier-name", prefix="filter-")
    f.add_argument("--keep-per-class", type=int,
                   help="keep this many images per class (those with the highest probability of their class)")  # fmt: skip
    return p


def _build_filter(args: argparse.Namespace) -> nn.Module:
    from msds_lightning.models import Classifier

    if args.filter_checkpoint and not Path(args.filter_checkpoint).expanduser().is_file():
        raise FileNotFoundError(f"--filter-checkpoint: {args.filter_checkpoint} not found")
    if (args.filter_mean is None) != (args.filter_std is None):
        raise ValueError("--filter-mean and --filter-std must be given together")
    kwargs = classifier_kwargs(args, prefix="filter-")
    return Classifier(args.filter_classifier_name, **{**kwargs, "num_classes": kwargs.get("num_classes", args.num_classes)})


def _run(args: argparse.Namespace) -> str:
    from msds_lightning.models import DiffusionDenoiser

    filtering = args.filter_classifier_name is not None
    if filtering != (args.keep_per_class is not None):
        raise ValueError("--filter-classifier-name and --keep-per-class must be given together")
    if filtering and args.keep_per_class > args.num_per_class:
        raise ValueError(
            f"--keep-per-class ({args.keep_per_class}) exceeds --num-per-class ({args.num_per_class})"
        )
    output = Path(args.output).expanduser()
    if output.suffix != ".npz":
        raise ValueError(f"--output must end in .npz, got {output}")
    denoiser = DiffusionDenoiser.from_pretrained(args.denoiser)
    require_class_embeddings(denoiser.unet, args.num_classes, where=f"denoiser {args.denoiser}")
    classifier = _build_filter(args) if filtering else None  # fail early, before a long generation

    total = args.num_per_class * args.num_classes
    step = max(1, total // 10)
    shown = [0]

    def progress(done: int, n: int) -> None:
        if done - shown[0] >= step or done == n:
            shown[0] = done
            print(f"generated {done}/{n}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    images, labels = generate(denoiser, args.num_per_class, args.num_classes, steps=args.steps,
                              batch_size=args.batch_size, seed=args.seed, device=args.device,
                              sigma_min=args.sigma_min, sigma_max=args.sigma_max, progress=progress)  # fmt: skip
    kept = ""
    if classifier is not None:
        images, labels = filter_top_k(
            images, labels, classifier, args.keep_per_class, batch_size=args.batch_size, device=args.device
        )
        kept = f", kept the top {args.keep_per_class}/class by {args.filter_classifier_name}"
    save_npz(output, images, labels)
    n, h, w, c = images.shape
    return (
        f"wrote {output}: {n} images {h}x{w}x{c} uint8 ({args.num_classes} classes, "
        f"{args.num_per_class}/class generated{kept}; {args.steps} Heun steps, seed {args.seed}) "
        f"in {time.perf_counter() - start:.1f} s"
    )


def main(argv: Sequence[str]) -> int:
    """``msds generate --denoiser DIR --num-per-class N --num-classes K --output FILE.npz [...]``."""
    print(_run(build_parser().parse_args(argv)))
    return 0
