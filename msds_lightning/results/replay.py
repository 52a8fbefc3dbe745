"""Count-level replay of a sampling plan on earlier results: how many samples adaptive sampling would spend.

A finished run (ours or Cohen et al.'s released files) gives, per image, the predicted class, whether it is
correct, and its top-class probability p = Φ(radius/σ) — the certified lower bound, a slight underestimate
of the true p, so the replay spends slightly *more* samples than a real run would on confident images.
Abstentions get p = :data:`ABSTAIN_P` (not certifiable). Counts are then drawn as Binomial(draws, p) and fed
to the library's own decision code (``AdaptiveSampling.plan(...).step``, ``cascade_decision``), the code the
engines run, so the replay measures the procedure, not a re-implementation of it. It skips the forward
passes: a real run costs (samples) × (one forward), whatever the model.

Used by ``msds plan --replay`` (expected wall time of an adaptive run) and ``bench/adaptive_samples.py``
(accuracy and cost of adaptive vs fixed sampling on Cohen et al.'s CIFAR-10 results).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..smoothing.adaptive import AdaptiveSampling, fixed_plan
from ..smoothing.multiscale import cascade_decision
from ..smoothing.outcome import Outcome
from .certification import read_results

ABSTAIN_P = 0.45  # an abstained image: below 1/2, never certifiable


@dataclass(frozen=True)
class ReplayLevel:
    """One σ's images as the replay sees them: dataset index, predicted class (-1: abstain), correctness,
    and the top-class probability p in (0, 1)."""

    idx: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    p: np.ndarray
    num_classes: int

    @classmethod
    def from_results(cls, path: str | Path, sigma: float) -> ReplayLevel:
        """A single-σ result file (ours or Cohen et al.'s) certified at ``sigma`` (> 0, [0,1] pixel units)."""
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 ([0,1] pixel units), got {sigma!r}")
        r = read_results(path)
        if r.idx.size == 0:
            raise ValueError(f"{path} holds no row to replay")
        p = np.where(r.predict >= 0, norm.cdf(r.radius / sigma), ABSTAIN_P)
        num_classes = max(2, int(max(r.predict.max(), r.label.max())) + 1)
        return cls(r.idx, r.predict, r.correct.astype(bool) & (r.predict >= 0), p, num_classes)


def replay_single(level: ReplayLevel, sigma: float, n: int, alpha: float, sampling, rng) -> list[tuple]:
    """Cohen's rule at one σ: (radius or -1, correct, estimation samples drawn) per image. ``sampling``:
    an :class:`AdaptiveSampling` or None (fixed N)."""
    plan = sampling.plan(n, alpha) if sampling else fixed_plan(n, alpha)
    out = []
    for p, correct in zip(level.p, level.correct):
        n_a = drawn = 0
        for k, checkpoint in enumerate(plan.checkpoints):
            n_a += rng.binomial(checkpoint - drawn, p)
            drawn = checkpoint
            outcome, p_lower = plan.step(k, n_a, sigma)
            if outcome != Outcome.CONTINUE:
                break
        out.append((sigma * norm.ppf(p_lower) if outcome == Outcome.CERTIFY else -1.0, bool(correct), drawn))
    return out


def replay_cascade(
    levels: list[ReplayLevel], sigmas, n0: int, n: int, alpha: float, sampling, rng, p0: float = 0.5
) -> list[tuple]:
    """The cascade from the highest σ: (radius or -1, correct, samples incl. n0 of every visited level) per
    image. ``levels[j]`` holds the same images (idx) certified at ``sigmas[j]``; a level's other classes'
    mass goes to one runner-up class."""
    order = np.argsort(sigmas)[::-1]
    num_classes = max(level.num_classes for level in levels)
    out = []
    for i in range(len(levels[0].p)):
        passed, samples, result = [], 0, (-1.0, True)
        for stage, j in enumerate(order):
            level, sigma = levels[j], sigmas[j]
            predicted = int(level.predict[i]) if level.predict[i] >= 0 else 0
            other = (predicted + 1) % num_classes
            selection = np.zeros(num_classes, dtype=int)
            selection[predicted] = n0
            plan = sampling.plan(n, alpha / (stage + 1)) if sampling else fixed_plan(n, alpha / (stage + 1))
            counts, drawn = np.zeros(num_classes, dtype=int), 0
            for k, checkpoint in enumerate(plan.checkpoints):
                hits = rng.binomial(checkpoint - drawn, level.p[i])
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
                result = (cert.radius, bool(level.correct[i]))
            break
        out.append((*result, samples))
    return out


def load_levels(paths, sigmas) -> list[ReplayLevel]:
    """One result file per σ, holding the same images (checked)."""
    if len(paths) != len(sigmas):
        raise ValueError(f"give one result file per σ: {len(paths)} file(s) for σ {list(sigmas)}")
    levels = [ReplayLevel.from_results(path, s) for path, s in zip(paths, sigmas)]
    for path, level in zip(paths[1:], levels[1:]):
        if not np.array_equal(levels[0].idx, level.idx):
            raise ValueError(
                f"{path} holds other images (idx) than {paths[0]}: a cascade replay needs the same"
            )
    return levels


def mean_samples(
    levels: list[ReplayLevel],
    sigmas,
    *,
    n0: int,
    n: int,
    alpha: float,
    sampling: AdaptiveSampling | None,
    cascade: bool,
    p0: float = 0.5,
    seed: int = 0,
) -> float:
    """Mean samples per image (n0 + estimation samples of every visited level) the plan spends on these images."""
    rng = np.random.default_rng(seed)
    if cascade:
        return float(
            np.mean([s for *_, s in replay_cascade(levels, sigmas, n0, n, alpha, sampling, rng, p0)])
        )
    if len(levels) != 1:
        raise ValueError(f"Cohen's rule certifies one σ; got {len(levels)} levels")
    return float(n0 + np.mean([s for *_, s in replay_single(levels[0], sigmas[0], n, alpha, sampling, rng)]))
