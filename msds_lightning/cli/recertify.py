"""``msds recertify RUN.tsv [RUN.tsv ...] --output OUT.tsv [--alpha A] [--p0 P] [--sigmas S ...] [--cascade]
[--off-class goodman|complement] [--radii R ...] [--overwrite]``: re-decide certification runs from their
counts sidecars, without a forward pass (:mod:`msds_lightning.results.recertify`); prints the summary table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from ..results.analysis import CIFAR10_RADII
    from ..smoothing.multiscale import OFF_CLASS_METHODS

    p = argparse.ArgumentParser(
        prog="msds recertify",
        description="re-decide certification runs from their recorded counts (no forward pass): another alpha, "
        "p0, off-class bound or sigma subset, or a cascade assembled from single-sigma runs of the same seed",
    )
    p.add_argument("runs", nargs="+", help="result TSV(s) of msds certify, each with its .fingerprint.json and "
                   ".counts beside it; several: single-sigma runs (or cascades) of the same seed, n0, n and models")  # fmt: skip
    p.add_argument("--output", "-o", required=True, help="the new result TSV (its .counts and .fingerprint.json "
                   "are written beside it)")  # fmt: skip
    p.add_argument("--alpha", type=float, help="failure probability (default: the run's)")
    p.add_argument("--p0", type=float, help="cascade threshold (default: the run's)")
    p.add_argument("--sigmas", nargs="+", type=float, help="the levels, in [0,1] pixel units (default: every sigma "
                   "of the inputs)")  # fmt: skip
    p.add_argument("--cascade", action="store_true", default=None, help="decide one sigma as a one-level cascade "
                   "(several sigma always are)")  # fmt: skip
    p.add_argument("--off-class", choices=OFF_CLASS_METHODS, default="goodman",
                   help="cascade: bound on the passed levels' other classes (default: %(default)s)")  # fmt: skip
    p.add_argument("--stop-radii", nargs="+", type=float, help="adaptive runs: the stopping grid (default: the "
                   "run's)")  # fmt: skip
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii of the summary table (default: %(default)s)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..results import read_results
    from ..results.analysis import format_markdown, summarize
    from ..results.recertify import recertify

    count = recertify(
        args.runs, args.output, alpha=args.alpha, p0=args.p0, sigmas=args.sigmas, cascade=args.cascade,
        off_class=args.off_class, radii=args.stop_radii, overwrite=args.overwrite,
    )  # fmt: skip
    table = format_markdown([summarize(read_results(args.output), args.radii)])
    sys.stdout.write(f"{count} images re-decided -> {args.output}\n\n{table}")
    return 0
