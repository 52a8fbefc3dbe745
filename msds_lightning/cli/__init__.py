"""The ``msds`` command: one registry of sub-commands, each a thin module of this package.

A command module parses its own arguments and calls library code (``smoothing``, ``results``,
``robustness``, ``generation``, ``convert``, the Lightning modules). Each entry of :data:`COMMANDS` names
the function ``main(argv) -> int`` that runs it, imported only when the command runs (``msds --help`` stays
fast). :func:`run_command` is the dispatcher (``msds demo`` calls it too): bad input (``ValueError``,
``OSError``) becomes one line ``msds NAME: error: ...`` on stderr and exit code 2, never a traceback.

``msds analyze RESULTS... [--radii R...] [--format markdown|latex|csv] [--output FILE] [--plot PNG]``
``msds compare A.tsv B.tsv [--radii R...] [--resamples 10000] [--seed 0]``
``msds certify -c CONFIG.yaml [--section.key value ...]`` (LightningCLI: trainer, model, data, results)
``msds predict -c CONFIG.yaml [--section.key value ...]`` (the same sections; PREDICT instead of CERTIFY)
``msds recertify RUN.tsv [RUN.tsv ...] --output OUT.tsv [--alpha A] [--p0 P] [--sigmas S ...] [--off-class M]``
``msds plan -c CERTIFY_CONFIG.yaml [--section.key value ...] [--budget 24h] [--warmup-images 2]``
``msds finetune | pretrain-denoiser | train-classifier | adversarial-train | train-idc -c CONFIG.yaml
[--ckpt_path PATH|last]`` (LightningCLI ``fit``)
``msds demo [--stages ...|--all] [--quick]``
``msds attack (--model-name NAME --checkpoint FILE | --idc DIR) ... --output FILE.tsv``
``msds attack-smoothed -c CERTIFY_CONFIG.yaml --output FILE.tsv [--radii R...] [--certified RESULTS.tsv]``
``msds generate --denoiser DIR --num-per-class N --num-classes K --output FILE.npz``
``msds convert-openai SRC.pt DST_DIR (--kind {improved-cifar10,guided-256} | --model-flags "FLAGS" [--library L])``
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> ("module:function" that runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("analyze:main", "tabulate certified accuracy, ACR and abstention from result TSVs"),
    "compare": ("compare:main", "paired comparison A - B over the same images: exact McNemar per radius, "
                "bootstrap ACR"),  # fmt: skip
    "certify": ("certify:main", "certify a data set with a (denoised-)smoothed classifier (LightningCLI config)"),
    "recertify": ("recertify:main", "re-decide certification runs from their recorded counts (no forward): "
                  "another alpha, p0, sigma set; a cascade from single-sigma runs"),  # fmt: skip
    "plan": ("plan:main", "before certifying: the largest radius N can certify, measured samples/s, wall time"),
    "predict": ("certify:predict", "PREDICT a data set: g(x) or abstain per image, one σ or the cascade (config)"),
    "finetune": ("train:finetune", "MSDS fine-tuning of a diffusion denoiser with the classifier frozen"),
    "pretrain-denoiser": ("train:pretrain_denoiser", "DDPM pre-training of a diffusion denoiser (diffusers "
                          "UNet2DModel)"),  # fmt: skip
    "train-classifier": ("train:train_classifier", "train a timm classifier (optionally with Gaussian noise "
                         "augmentation)"),  # fmt: skip
    "adversarial-train": ("train:adversarial_train", "TRADES / PGD adversarial training on real and "
                          "diffusion-generated data"),  # fmt: skip
    "train-idc": ("train:train_idc", "train an image-to-image diffusion classifier (IDC: Brownian bridge to "
                  "label images)"),  # fmt: skip
    "generate": ("generate:main", "sample a class-conditional diffusion UNet (EDM Heun) into an .npz of "
                 "generated training data"),  # fmt: skip
    "attack": ("attack:main", "empirical robustness: clean, PGD-k, EOT-PGD and AutoAttack (torchattacks) accuracy"),
    "attack-smoothed": ("attack_smoothed:main", "SmoothAdv l2 PGD on the smoothed classifier g: empirical vs certified accuracy"),
    "demo": ("demo:main", "the embedded default: the MSDS story on scikit-learn digits in minutes on a CPU"),
    "convert-openai": ("convert:main", "convert an OpenAI improved-/guided-diffusion UNet checkpoint to a "
                       "diffusers denoiser folder"),  # fmt: skip
}


def _message(err: BaseException) -> str:
    """The error's text, with our own message first where jsonargparse wraps it in a Union dump
    ("Does not validate against any of the Union subtypes ... Errors: - <ours> - Expected a NoneType")."""
    text = str(err)
    if "Errors:" in text and "Union subtypes" in text:
        bullets = [line.strip()[2:] for line in text.split("Errors:", 1)[1].splitlines() if line.strip().startswith("- ")]
        ours = [b for b in bullets if not b.startswith(("Expected a ", "Not a valid subclass", "Problem with given class_path"))]
        if ours:
            return ours[0]
    return text


def run_command(name: str, argv: Sequence[str]) -> int:
    """Run ``msds NAME ARGV...`` in this process; returns its exit code (2, with a message, on bad input)."""
    target, _ = COMMANDS[name]
    module_name, _, function = target.partition(":")
    run = getattr(importlib.import_module(f"{__name__}.{module_name}"), function)
    try:
        return run(list(argv))
    except (ValueError, OSError) as err:  # bad config values, flags or files: say which, no traceback
        print(f"msds {name}: error: {_message(err)}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msds", description="Certified robustness with diffusion denoisers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=f"{help_text}; `msds {name} --help` for its options", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    build_parser().parse_args(argv)  # --help, or an unknown command: argparse says so and exits
    return 2
