"""``msds analyze RESULTS... [--radii R...] [--format markdown|latex|csv] [--output FILE] [--plot PNG]
[--high-prob ALPHA RHO] [--ci [LEVEL]]``: certified accuracy, ACR and abstention per result file, optionally Cohen
et al.'s high-probability accuracy and intervals over the test set (:mod:`msds_lightning.results.analysis`). A shift
run (rows with ``corruption`` and ``severity``) also gets its table per corruption and severity with the mean
over corruptions (mCA), and ``--plot`` then draws certified accuracy vs severity."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..results.analysis import CIFAR10_RADII, FORMATTERS

    p = argparse.ArgumentParser(prog="msds analyze", description="tabulate certified accuracy, ACR and abstention "
                                "from result TSVs")  # fmt: skip
    p.add_argument(
        "results", nargs="*", help="result TSV files (columns idx label predict radius correct time ...)"
    )
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii for the table, in [0,1] pixel units (default: %(default)s; ImageNet: 0 0.5 1 1.5 2 2.5 3)")  # fmt: skip
    p.add_argument("--format", choices=sorted(FORMATTERS), default="markdown", help="table format")
    p.add_argument("--output", "-o", help="also write the table to this file")
    p.add_argument("--plot", help="write a certified-accuracy-vs-radius plot (PNG) to this path; when every file "
                   "is a shift run (corruption and severity columns): certified accuracy vs severity instead")  # fmt: skip
    p.add_argument("--high-prob", nargs=2, type=float, metavar=("ALPHA", "RHO"),
                   help="also give Cohen et al.'s high-probability accuracy at each radius: a lower bound on the "
                   "certified accuracy holding with probability 1-RHO, for certificates that each fail with "
                   "probability ALPHA (certify's alpha); e.g. 0.001 0.001")  # fmt: skip
    p.add_argument("--ci", nargs="?", type=float, const=0.95, default=None, metavar="LEVEL",
                   help="also give intervals over the test set at confidence LEVEL (default 0.95): Clopper-Pearson "
                   "for the certified accuracy at each radius, a seeded BCa bootstrap for the ACR")  # fmt: skip
    p.add_argument("--compare", metavar="NAME",
                   help="also print each file under a published result of that name, with the differences "
                   "(`--compare list` lists the registry: msds_lightning/results/published.yaml)")  # fmt: skip
    p.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples for --ci (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed for --ci (default: %(default)s)")
    return p


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare == "list":
        from ..results.published import published_results

        for entry in published_results().values():
            print(f"{entry.name}: {entry.paper}; {entry.data}; σ = {entry.sigma}")
        return 0
    if not args.results:
        parser.error("the following arguments are required: results")
    import numpy as np

    from ..results import read_results
    from ..results.analysis import (
        FORMATTERS,
        check_ci_level,
        check_high_prob_levels,
        format_shift,
        is_shift_run,
        plot_certified_accuracy,
        plot_shift,
        summarize,
        summarize_shift,
    )

    if any(r < 0 for r in args.radii):
        raise ValueError(f"--radii must be >= 0, got {args.radii}")
    high_prob = None if args.high_prob is None else check_high_prob_levels(*args.high_prob)
    published = None
    if args.compare is not None:
        from ..results.published import published_result

        published = published_result(args.compare)
    if args.ci is not None:
        check_ci_level(args.ci)
        if args.resamples < 100:
            raise ValueError(f"--resamples must be >= 100 for a bootstrap interval, got {args.resamples}")
    results = [read_results(p) for p in args.results]
    for path, res in zip(args.results, results):
        if len(res) == 0:
            raise ValueError(f"{path} has no result rows (only a header): nothing to tabulate")
        nan, inf = int(np.isnan(res.radius).sum()), int(np.isinf(res.radius).sum())
        if nan or inf:  # NaN never counts as certified, inf counts at every radius: say so
            print(f"msds analyze: warning: {path} has {nan} NaN and {inf} infinite radius value(s); NaN rows "
                  f"count as not certified, infinite ones as certified at every radius", file=sys.stderr)  # fmt: skip
    summaries = [summarize(r, args.radii, high_prob, args.ci, args.resamples, args.seed) for r in results]
    table = FORMATTERS[args.format](summaries)
    # a shift run (CIFAR-10-C, ImageNet-C, ...) also gets its table per corruption and severity, with the mCA
    shifts = [summarize_shift(r, args.radii) for r in results if is_shift_run(r)]
    for shift in shifts:
        table += "\n" + format_shift(shift, args.format)
    if published is not None:
        from ..results.published import format_comparison

        table += "\n" + format_comparison(published, results)
    sys.stdout.write(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        if shifts and len(shifts) == len(results):
            plot_shift(shifts, args.plot)
        else:
            plot_certified_accuracy(results, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
