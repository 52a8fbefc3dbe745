"""Adaptive vs fixed sampling: mean samples per image and certified accuracy, single σ and the cascade.

    .venv/bin/python bench/adaptive_samples.py RESULTS_σ1 [RESULTS_σ2 ...] --sigmas σ1 [σ2 ...] [--out FILE]
    make bench    (on ../shared/fixtures/cohen2019: CIFAR-10, σ = 0.25 / 0.5 / 1.0, every 20th test image)

A replay at the level of counts, at the budget N = 100,000 of the papers, with real per-image statistics:
each result file (ours or Cohen et al.'s) gives, per image, the predicted class, whether it is correct,
and its top-class probability p = Φ(radius/σ) (the certified lower bound at N, a slight underestimate;
abstentions get p = 0.45, not certifiable). Counts are drawn as Binomial(draws, p) and fed to the
library's own decision code (``AdaptiveSampling.plan(...).step``, ``cascade_decision``), the same code the
engines run, so this measures the procedure, not a re-implementation. The forward passes are what this
skips: an engine run costs (samples) × (cost of one forward), whatever the model.

Files given with several σ must hold the same images (same idx); the cascade then visits σ from the
highest, with the class and probability of each level from its file (the other classes' mass on one
runner-up class).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import norm

from msds_lightning.results import read_results
from msds_lightning.results.analysis import CIFAR10_RADII, certified_accuracy
from msds_lightning.smoothing.adaptive import AdaptiveSampling, fixed_plan
from msds_lightning.smoothing.multiscale import cascade_decision
from msds_lightning.smoothing.outcome import Outcome

ABSTAIN_P = 0.45


def load(path: str, sigma: float):
    r = read_results(path)
    p = np.where(r.predict >= 0, norm.cdf(r.radius / sigma), ABSTAIN_P)
    return dict(
        idx=r.idx, predict=r.predict, correct=r.correct.astype(bool) & (r.predict >= 0), p=p, label=r.label
    )


def single(level, sigma, n, alpha, settings, rng):
    """(radius or -1, correct, estimation samples) per image at one σ."""
    plan = settings.plan(n, alpha) if settings else fixed_plan(n, alpha)
    out = []
    for p, correct in zip(level["p"], level["correct"]):
        n_a = drawn = 0
        for k, checkpoint in enumerate(plan.checkpoints):
            n_a += rng.binomial(checkpoint - drawn, p)
            drawn = checkpoint
            outcome, p_lower = plan.step(k, n_a, sigma)
            if outcome != Outcome.CONTINUE:
                break
        out.append((sigma * norm.ppf(p_lower) if outcome == Outcome.CERTIFY else -1.0, correct, drawn))
    return out


def cascade(levels, sigmas, n0, n, alpha, settings, rng, p0=0.5):
    """(radius or -1, correct, total samples incl. n0 per visited level) per image, σ from the highest."""
    order = np.argsort(sigmas)[::-1]
    out = []
    for i in range(len(levels[0]["p"])):
        passed, samples, result = [], 0, (-1.0, True)
        for stage, j in enumerate(order):
            level, sigma = levels[j], sigmas[j]
            predicted = int(level["predict"][i]) if level["predict"][i] >= 0 else 0
            other = (predicted + 1) % 10
            selection = np.zeros(10, dtype=int)
            selection[predicted] = n0
            plan = settings.plan(n, alpha / (stage + 1)) if settings else fixed_plan(n, alpha / (stage + 1))
            counts, drawn = np.zeros(10, dtype=int), 0
            for k, checkpoint in enumerate(plan.checkpoints):
                hits = rng.binomial(checkpoint - drawn, level["p"][i])
                counts[predicted] += hits
                counts[other] += checkpoint - drawn - hits
                drawn = checkpoint
                outcome, cert, record = cascade_decision(
                    stage, sigma, selection, counts, alpha, p0, passed, plan=plan, checkpoint=k
                )
                if outcome != Outcome.CONTINUE:
                    break
            samples += n0 + drawn
            if outcome == Outcome.LOWER:
                passed.append(record)
                continue
            if outcome == Outcome.CERTIFY:
                correct = bool(level["correct"][i]) and level["predict"][i] >= 0
                result = (cert.radius, correct)
            break
        out.append((*result, samples))
    return out


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
    levels = [load(path, s) for path, s in zip(args.results, args.sigmas)]
    if any(not np.array_equal(levels[0]["idx"], lv["idx"]) for lv in levels):
        p.error("the result files must hold the same images (idx) for the cascade")
    settings = AdaptiveSampling(radii=tuple(args.radii))
    rows = []
    for level, sigma in zip(levels, args.sigmas):
        for name, mode in (("fixed", None), ("adaptive", settings)):
            results = single(level, sigma, args.n, args.alpha, mode, np.random.default_rng(args.seed))
            results = [(r, c, s + args.n0) for r, c, s in results]
            rows.append(row(f"σ = {sigma:g}, {name}", results, args.radii))
    if len(levels) > 1:
        label = "{" + ", ".join(f"{s:g}" for s in sorted(args.sigmas)) + "}"
        for name, mode in (("fixed", None), ("adaptive", settings)):
            results = cascade(
                levels, args.sigmas, args.n0, args.n, args.alpha, mode, np.random.default_rng(args.seed)
            )
            rows.append(row(f"cascade {label}, {name}", results, args.radii))
    single_fixed = args.n0 + args.n
    lines = [
        "## Adaptive sampling (count-level replay)", "",
        f"`{' '.join(['python', *sys.argv])}`; N = {args.n:,}, n0 = {args.n0}, α = {args.alpha}, "
        f"{len(levels[0]['p'])} images; adaptive = `AdaptiveSampling(radii=table radii)` (defaults: first "
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
