"""The ``msds`` command.

``msds analyze RESULTS... [--radii R...] [--format markdown|latex|csv] [--output FILE] [--plot PNG]``
    tabulate certified accuracy, ACR and abstention from result TSVs.

Each sub-command registers itself in ``COMMANDS`` (name → (help, add_arguments, run)).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run):
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return register


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    from .analysis import CIFAR10_RADII, FORMATTERS

    p.add_argument(
        "results", nargs="+", help="result TSV files (columns idx label predict radius correct time ...)"
    )
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii for the table, in [0,1] pixel units (default: %(default)s; ImageNet: 0 0.5 1 1.5 2 2.5 3)")  # fmt: skip
    p.add_argument("--format", choices=sorted(FORMATTERS), default="markdown", help="table format")
    p.add_argument("--output", "-o", help="also write the table to this file")
    p.add_argument("--plot", help="write a certified-accuracy-vs-radius plot (PNG) to this path")


@command("analyze", "tabulate certified accuracy, ACR and abstention from result TSVs", _analyze_arguments)
def _analyze(args: argparse.Namespace) -> int:
    from .analysis import FORMATTERS, plot_certified_accuracy, summarize
    from .results import read_results

    if any(r < 0 for r in args.radii):
        raise ValueError(f"--radii must be >= 0, got {args.radii}")
    results = [read_results(p) for p in args.results]
    table = FORMATTERS[args.format]([summarize(r, args.radii) for r in results])
    sys.stdout.write(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_certified_accuracy(results, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msds", description="Certified robustness with diffusion denoisers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (ValueError, FileNotFoundError) as err:  # bad input: a clear message, no traceback
        print(f"msds {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
