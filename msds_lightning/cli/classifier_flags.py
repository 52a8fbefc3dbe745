"""The flags that build a :class:`~msds_lightning.models.Classifier` (``msds attack``'s attacked model,
``msds generate``'s filtering classifier): defined once, named after the constructor's arguments."""

from __future__ import annotations

import argparse
import json

# Classifier argument -> (argparse options, help); the flag is the argument's name with dashes. Defaults are
# the constructor's (run fingerprints record them).
_FLAGS: dict[str, tuple[dict, str]] = {
    "num_classes": ({"type": int}, "number of logits (None: the number of classes of the data)"),
    "checkpoint": ({}, "local weight file (.safetensors, .pt, .pth; read without running code)"),
    "mean": ({"type": float, "nargs": "+"}, "per-channel mean of the [0, 1] pixels (None: timm's pretrained config)"),
    "std": ({"type": float, "nargs": "+"}, "per-channel std (None: timm's pretrained config)"),
    "input_size": ({"type": int}, "resize inputs to N x N before the model"),
    "interpolation": ({"choices": ("nearest", "bilinear", "bicubic", "area"), "default": "bicubic"}, "resize mode"),
    "model_kwargs": ({"metavar": "JSON", "default": {}}, "extra timm.create_model arguments, e.g. '{\"in_chans\": 1}'"),
}


def json_object(text: str) -> dict:
    """A ``--*-kwargs`` value: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"invalid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"in_chans\": 1}}', got {text!r}")
    return value


def add_classifier_arguments(group, name_flag: str, prefix: str = "", exclude: tuple[str, ...] = ()) -> None:
    """``name_flag`` (the timm model name) and ``--{prefix}{argument}`` for each Classifier argument above."""
    group.add_argument(name_flag, default=None, help="timm model name, e.g. msds_small_cnn or wide_resnet28_10")
    for argument, (options, help_text) in _FLAGS.items():
        if argument not in exclude:
            kind = {"type": json_object} if argument == "model_kwargs" else {}
            group.add_argument(f"--{prefix}{argument.replace('_', '-')}", help=help_text,
                               **{"default": None, **options, **kind})  # fmt: skip


def classifier_kwargs(args: argparse.Namespace, prefix: str = "") -> dict:
    """The Classifier keyword arguments of :func:`add_classifier_arguments`' flags (those left unset, None, out)."""
    dest = prefix.replace("-", "_")
    values = {a: getattr(args, dest + a, None) for a in _FLAGS}
    return {a: v for a, v in values.items() if v is not None}
