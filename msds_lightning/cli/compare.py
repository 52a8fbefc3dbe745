"""``msds compare A.tsv B.tsv [--radii R...] [--resamples 10000] [--seed 0] [--format markdown|latex|csv]``:
the paired difference A - B over the same images — exact McNemar test and interval per radius, paired
bootstrap interval of the ACR (:mod:`msds_lightning.results.compare`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..results.analysis import CIFAR10_RADII
    from ..results.compare import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, FORMATTERS

    p = argparse.ArgumentParser(prog="msds compare", description="paired comparison A - B over the same images: "
                                "exact McNemar per radius, bootstrap ACR")  # fmt: skip
    p.add_argument("a", help="result TSV of method A")
    p.add_argument("b", help="result TSV of method B (rows are paired with A's by idx)")
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii for certified accuracy, in [0,1] pixel units (default: %(default)s)")  # fmt: skip
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples for the ACR")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level")
    p.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), help="labels in the table (default: file names)")
    p.add_argument("--format", choices=sorted(FORMATTERS), default="markdown", help="table format")
    p.add_argument("--output", "-o", help="also write the table to this file")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..results.compare import FORMATTERS, compare_files

    comparison = compare_files(args.a, args.b, args.radii, args.resamples, args.seed, args.confidence, args.names)
    table = FORMATTERS[args.format](comparison)
    sys.stdout.write(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    return 0


