"""Adaptive vs fixed sampling: mean samples per image and certified accuracy, single σ and the cascade.

    .venv/bin/python bench/adaptive_samples.py RESULTS_σ1 [RESULTS_σ2 ...] --sigmas σ1 [σ2 ...] [--out FILE]
    make bench    (on ../shared/fixtures/cohen2019: CIFAR-10, σ = 0.25 / 0.5 / 1.0, every 20th test image)

A replay at the level of counts (``msds_lightning.results.replay``, which ``msds plan --replay`` uses too), at
the budget N = 100,000 of the papers, with real per-image statistics: each result file (ours or Cohen et
al.'s) gives, per image, the predicted class, whether it is correct, and its top-class probability
p = Φ(radius/σ) (the certified lower bound at N, a slight underestimate; abstentions get p = 0.45, not
certifiable). Counts are drawn as Binomial(draws, p) and fed to the library's own decision code, the same
code the engines run, so this measures the procedure, not a re-implementation. The forward passes are what
this skips: an engine run costs (samples) × (cost of one forward), whatever the model.

Files given with several σ must hold the same images (same idx); the cascade then visits σ from the
highest, with the class and probability of each level from its file (the other classes' mass on one
runner-up class).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from msds_lightning.results.analysis import CIFAR10_RADII, certified_accuracy
from msds_lightning.results.replay import load_levels, replay_cascade, replay_single
from msds_lightning.smoothing.adaptive import AdaptiveSampling


def row(name, results, radii):
    radius = np.array([r for r, _, _ in results])
    correct = np.array([c for _, c, _ in results]) & (radius >= 0)
    accuracy = certified_accuracy(np.where(radius >= 0, radius, -1.0), correct, radii)
    return name, accuracy, float(np.mean([s for _, _, s in results]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--sigmas", nargs="+", type=float, required=True)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the tables to this markdown file")
    args = p.parse_args(argv)
    if len(args.results) != len(args.sigmas):
        p.error("give one σ per result file")
    levels = load_levels(args.results, args.sigmas)
    settings = AdaptiveSampling(radii=tuple(args.radii))
    rows = []
    for level, sigma in zip(levels, args.sigmas):
        for name, mode in (("fixed", None), ("adaptive", settings)):
            results = replay_single(level, sigma, args.n, args.alpha, mode, np.random.default_rng(args.seed))
            results = [(r, c, s + args.n0) for r, c, s in results]
            rows.append(row(f"σ = {sigma:g}, {name}", results, args.radii))
    if len(levels) > 1:
        label = "{" + ", ".join(f"{s:g}" for s in sorted(args.sigmas)) + "}"
        for name, mode in (("fixed", None), ("adaptive", settings)):
            results = replay_cascade(
                levels, args.sigmas, args.n0, args.n, args.alpha, mode, np.random.default_rng(args.seed)
            )
            rows.append(row(f"cascade {label}, {name}", results, args.radii))
    single_fixed = args.n0 + args.n
    lines = [
        "## Adaptive sampling (count-level replay)", "",
        f"`{' '.join(['python', *sys.argv])}`; N = {args.n:,}, n0 = {args.n0}, α = {args.alpha}, "
        f"{len(levels[0].p)} images; adaptive = `AdaptiveSampling(radii=table radii)` (defaults: first "
        f"look at {settings.first}, ratio {settings.ratio:g}, half of α on the last look). Samples/image "
        f"counts n0 + estimation draws of every visited level; cost = samples/image ÷ (n0 + N), a single-σ fixed-N run.", "",
        "| run | " + " | ".join(f"r={r:g}" for r in args.radii) + " | samples/image | cost |",
        "|---|" + "---|" * (len(args.radii) + 2),
    ]  # fmt: skip
    for name, accuracy, samples in rows:
        lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accuracy)
                     + f" | {samples:,.0f} | {samples / single_fixed:.3f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
