"""The LightningCLI behind the config-driven commands (``msds certify`` and the training commands)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence


def lightning_cli(model_class, argv: Sequence[str], prog: str, add_arguments=None, **kwargs):
    """A LightningCLI over ``model_class`` and any data module (``data: class_path: ...``), not run."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            if "num_classes" in inspect.signature(model_class).parameters:
                parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            if add_arguments:
                add_arguments(parser)

    # LightningCLI reads sys.argv; give it ours for parsing, then restore the real one, which DDP's
    # launcher re-executes to start the other ranks.
    real_argv, sys.argv = sys.argv, [prog, *argv]
    try:
        return CLI(model_class, LightningDataModule, subclass_mode_data=True, run=False, **kwargs)
    finally:
        sys.argv = real_argv
