"""``msds demo [--stages ...|--all] [--quick] [--workdir DIR] [--force]``: the embedded default, the MSDS
experiment on scikit-learn digits (:mod:`msds_lightning.demo`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..demo import STAGES, STORY, run_demo


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="msds demo", description="The embedded default: the MSDS experiment on "
                                "real data (scikit-learn digits) on a CPU in minutes.")  # fmt: skip
    p.add_argument("--stages", nargs="+", choices=STAGES,
                   help=f"stages to run (default: the MSDS story, {' '.join(STORY)})")  # fmt: skip
    p.add_argument("--all", action="store_true", help="every stage (make demo-all): adds DiffSmooth, "
                   "adversarial training with generated data and IDC")  # fmt: skip
    p.add_argument("--workdir", default=".", help="outputs go to WORKDIR/outputs/demo")
    p.add_argument("--quick", action="store_true", help="reduced demo (few steps and images): a smoke test")
    p.add_argument("--force", action="store_true", help="retrain models even when their outputs exist")
    args = p.parse_args(argv)
    if args.all and args.stages:
        p.error("--all and --stages exclude each other")
    run_demo(STAGES if args.all else (args.stages or STORY), args.workdir, args.quick, args.force)
    return 0
