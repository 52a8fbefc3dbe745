"""Multi-scale (cascaded) randomized smoothing (Jeong & Shin, NeurIPS 2023).

Several noise levels σ_1 > σ_2 > … share one base classifier ``f(x_noisy, σ)`` (for diffusion denoised
smoothing: denoise at the timestep of σ, then classify). The cascade visits levels from the highest σ
down and answers at the first level that is confidently above ``p0``:

=====================================  ======================================================
stage s (σ_s, α_s = α/(s+1))            interval [pL, pU] of ĉ's probability (coverage 1 − 2α_s)
=====================================  ======================================================
pL >= p0                                answer ĉ here; radius R = σ_s(Φ⁻¹(pL) − Φ⁻¹(p0)), lowered
                                        to min_j σ_j(Φ⁻¹(p0) − Φ⁻¹(pB_j)) over higher levels j
pU >= p0 > pL                           abstain (undecided; never go lower from here)
pU < p0                                 go to the next lower σ
no level left, or R < 0                 abstain
=====================================  ======================================================

pB_j bounds from above the probability of every class other than ĉ at the higher level j (which fell
below p0), from that level's estimation counts: within R no higher level can switch on with another
class. The bounds used by the answer — one lower bound and s upper bounds, each at α_s — fail together
with probability at most α (union bound).

Deviation from the official code (jh-jeong/smoothing-multiscale): when at most two categories remain
after pooling, the official code bounds that level's *own* top class ĉ_j, which is the right bound only
when ĉ_j = ĉ. We bound the classes other than ĉ: pB_j = 1 − (Clopper–Pearson lower bound of ĉ's count at
level j, at α_s).

The official code's empirical prediction (``predict_mdds.py``) is here too, as
:func:`empirical_cascade_prediction`, so its numbers can be reproduced; it carries no guarantee. The
sound PREDICT rule is :func:`cascade_prediction`.

Units: x is [C,H,W] with pixels in [0,1]; σ and radii are l2 distances in [0,1] pixel units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import multinomial_proportions_confint

from .adaptive import SequentialPlan, fixed_plan
from .bounds import clopper_pearson_interval, clopper_pearson_lower
from .checks import (
    check_alpha,
    check_certify_call,
    check_count,
    check_images,
    check_num_classes,
    check_p0,
    check_sigmas,
)
from .core import ABSTAIN, _eval, reference_counts
from .outcome import Outcome

MIN_CATEGORY = 5  # classes with fewer samples are pooled before the Goodman intervals (as the official code)
NO_NEGATIVE_RADIUS = -100.0  # the official certify.py's r_neg when no higher level bounds the answer


def pooled_categories(counts: np.ndarray, c: int, min_count: int = MIN_CATEGORY) -> list[int]:
    """Categories for the simultaneous off-class bound: ``[counts[c]]`` followed by the other classes
    sorted by count (descending); a class with >= ``min_count`` samples is its own category, rarer ones
    are pooled into a bin that becomes a category once it holds >= ``min_count``; a remainder joins the
    last category. Pooling is conservative: a pooled category's bound bounds each of its classes."""
    counts = np.asarray(counts, dtype=np.int64)
    others = sorted((int(v) for k, v in enumerate(counts) if k != c), reverse=True)
    categories, pool = [int(counts[c])], 0
    for value in others:
        if value >= min_count:
            categories.append(value)
            continue
        pool += value
        if pool >= min_count:
            categories.append(pool)
            pool = 0
    categories[-1] += pool
    return categories


OFF_CLASS_METHODS = ("goodman", "complement")
"""How a passed level bounds the classes other than the answer (both hold with probability >= 1 − α):
``goodman`` — simultaneous Goodman intervals on the pooled categories (the official code's choice, tighter
when the other classes spread over several categories); ``complement`` — 1 − the Clopper–Pearson lower
bound of the answer's own probability (one binomial bound; tighter when one other class dominates)."""


def check_off_class(method: str) -> str:
    if method not in OFF_CLASS_METHODS:
        raise ValueError(f"off_class must be one of {OFF_CLASS_METHODS}, got {method!r}")
    return method


def off_class_upper_bound(counts: np.ndarray, c: int, alpha: float, method: str = "goodman") -> float:
    """Upper bound, holding with probability >= 1 − α, on the largest probability of any class != c.

    ``method="goodman"`` (the default): Goodman simultaneous intervals (statsmodels, at ``2α`` as the
    official code) on the pooled categories when there are three or more; otherwise, and always with
    ``method="complement"``, 1 − (Clopper–Pearson lower bound of c at α).
    """
    categories = pooled_categories(counts, c)
    if check_off_class(method) == "complement" or len(categories) <= 2:
        return 1.0 - clopper_pearson_lower(int(np.asarray(counts)[c]), int(np.sum(counts)), alpha)
    intervals = multinomial_proportions_confint(categories, alpha=2 * alpha, method="goodman")
    return float(np.max(intervals[1:, 1]))


@dataclass(frozen=True)
class LevelRecord:
    """What one visited level measured: selected class, its estimation count and interval."""

    sigma: float
    selected: int
    n_a: int
    p_lower: float
    p_upper: float
    counts: tuple[int, ...] = field(repr=False)
    share: float = 1.0  # fraction of the stage's α its bounds were taken at (adaptive checkpoints)

    @property
    def n(self) -> int:
        """Estimation samples drawn at this level."""
        return int(sum(self.counts))


@dataclass(frozen=True)
class MultiScaleCertificate:
    """``prediction`` (class or ABSTAIN), ``radius`` ([0,1] pixel units, 0.0 on abstain), ``level`` (index
    in the cascade, 0 = highest σ, of the level that answered; -1 on abstain), ``stage`` (last level
    visited) and the per-level records."""

    prediction: int
    radius: float
    level: int
    stage: int
    sigma: float
    levels: tuple[LevelRecord, ...]
    off_class_radius: float = math.inf
    """When a level's lower bound reached p0: the cap min_j σ_j(Φ⁻¹(p0) − Φ⁻¹(pB_j)) from the higher levels
    passed (negative: it made the cascade abstain); ``inf`` when no higher level was passed or no level
    reached p0."""

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    @property
    def negative_radius(self) -> float:
        """The official ``certify.py``'s ``r_neg`` column, in [0,1] pixel units: max over the higher levels
        passed of σ_j(Φ⁻¹(pB_j) − Φ⁻¹(p0)) = −:attr:`off_class_radius` (> 0: a higher level may switch on
        with another class, so the cascade abstained); ``NO_NEGATIVE_RADIUS`` (−100, the official sentinel,
        not a radius) when there is none. The official value is in the model's [−1,1] units, twice ours."""
        return -self.off_class_radius if math.isfinite(self.off_class_radius) else NO_NEGATIVE_RADIUS

    def samples(self, n0: int) -> int:
        """Forward passes spent on this image: n0 selection plus the estimation draws of each visited level."""
        return sum(n0 + record.n for record in self.levels)


def cascade_decision(
    stage: int,
    sigma: float,
    counts_selection: np.ndarray,
    counts: np.ndarray,
    alpha: float,
    p0: float,
    passed: Sequence[LevelRecord],
    *,
    plan: SequentialPlan | None = None,
    checkpoint: int = -1,
    off_class: str = "goodman",
) -> tuple[Outcome, MultiScaleCertificate | None, LevelRecord]:
    """Decide one level from its counts: ``(Outcome.CERTIFY, certificate, record)``, ``(Outcome.ABSTAIN,
    certificate, record)``, ``(Outcome.LOWER, None, record)`` or, with adaptive sampling,
    ``(Outcome.CONTINUE, None, record)``; ``passed`` are the records of the higher levels already passed.

    ``plan`` (adaptive sampling) is this stage's schedule, whose levels add up to α_s = α/(s+1), and
    ``checkpoint`` the index of the checkpoint ``counts`` were taken at: every bound of the stage is then
    taken at α_s·(share of that checkpoint), so each one holds at whatever checkpoint sampling stopped
    (union bound over checkpoints, :mod:`.adaptive`). Without a plan: one checkpoint with all of α_s.
    ``off_class`` is the bound on the passed levels' other classes (:data:`OFF_CLASS_METHODS`).
    """  # fmt: skip
    alpha_s = alpha / (stage + 1)
    n = int(np.sum(counts))
    plan = plan or fixed_plan(n, alpha_s)
    k = checkpoint % len(plan.checkpoints)
    share = plan.alphas[k] / alpha_s
    last = k == len(plan.checkpoints) - 1
    selected = int(np.argmax(counts_selection))  # first maximum: ties go to the lowest class
    n_a = int(counts[selected])
    p_lower, p_upper = clopper_pearson_interval(n_a, n, alpha_s * share)
    record = LevelRecord(sigma, selected, n_a, p_lower, p_upper, tuple(int(v) for v in counts), share)
    history = (*passed, record)
    if p_lower >= p0:
        cap = min(
            (higher.sigma * (norm.ppf(p0) - norm.ppf(off_class_upper_bound(np.asarray(higher.counts), selected, alpha_s * higher.share, off_class)))
             for higher in passed), default=math.inf,
        )  # fmt: skip
        radius = min(sigma * (norm.ppf(p_lower) - norm.ppf(p0)), cap)
        if radius < 0:  # a higher level may switch to another class: more samples here cannot help
            cert = MultiScaleCertificate(ABSTAIN, 0.0, -1, stage, sigma, history, float(cap))
            return Outcome.ABSTAIN, cert, record
        if not last:
            best = min(sigma * (norm.ppf(plan.best_lower(p_upper)) - norm.ppf(p0)), cap)
            if not plan.settled(radius, best):
                return Outcome.CONTINUE, None, record
        return (
            Outcome.CERTIFY,
            MultiScaleCertificate(selected, float(radius), stage, stage, sigma, history, float(cap)),
            record,
        )
    if p_upper >= p0:
        if last:
            return Outcome.ABSTAIN, MultiScaleCertificate(ABSTAIN, 0.0, -1, stage, sigma, history), record
        return Outcome.CONTINUE, None, record
    return Outcome.LOWER, None, record  # this level cannot fire (proven below p0): go to the next lower σ


def check_prediction_p0(p0: float) -> float:
    """PREDICT's guarantee needs p0 >= 1/2: then a class other than the one above p0 lies below p0 too."""
    if not 0.5 <= check_p0(p0) < 1:
        raise ValueError(f"cascade PREDICT needs 1/2 <= p0 < 1 (its guarantee rests on it), got {p0!r}")
    return float(p0)


def cascade_prediction(
    counts_selection: np.ndarray, counts: np.ndarray, alpha: float, p0: float, levels: int
) -> int | None:
    """PREDICT at one level of a cascade of ``levels`` levels: ĉ = the top class of the n0 selection draws;
    with the n *fresh* estimation draws, each bound at ``α / (2·levels)``:

    * ĉ when the Clopper–Pearson lower bound of its probability exceeds p0;
    * ``None`` (go to the next lower σ) when the upper bound of the *largest* estimation count lies below
      p0, so no class reaches p0 here;
    * ``ABSTAIN`` otherwise.

    With p0 >= 1/2 the answer of the whole cascade differs from g(x) with probability at most α (proof in
    docs/certification.md, "Prediction (PREDICT) and what it guarantees")."""
    n = int(np.sum(counts))
    side = alpha / (2 * levels)
    selected = int(np.argmax(counts_selection))  # first maximum: ties go to the lowest class
    if clopper_pearson_interval(int(counts[selected]), n, side)[0] > p0:
        return selected
    if clopper_pearson_interval(int(np.max(counts)), n, side)[1] < p0:
        return None
    return ABSTAIN


UNIFORM_WEIGHT = 0.1  # the official predict_mdds.py's --unif_w
EMPIRICAL_N = 200  # the official predict_mdds.py's --N: draws per level


def empirical_fires(counts: np.ndarray, p0: float) -> bool:
    """A level of the official empirical rule fires when its largest count reaches p0 of its draws
    (``Smooth.predict_threshold``: abstain iff nA < p·n)."""
    counts = np.asarray(counts)
    return not int(np.max(counts)) < p0 * int(np.sum(counts))


@dataclass(frozen=True)
class EmpiricalDecision:
    """What :func:`empirical_cascade_prediction` decides for one image: the final ``prediction`` (a class,
    never an abstention), the class of the level that fired (``fired``, the official ``pred0``; -1 when
    none did), that level's index ``level`` (0 = highest σ; -1 when none fired), ``stage`` (last level
    visited: the firing level, or the last one), the clean classifier's ``clean`` class and ``confidence``
    (its largest softmax probability, the official ``c_max``)."""

    prediction: int
    fired: int
    level: int
    stage: int
    clean: int
    confidence: float


def empirical_cascade_prediction(
    counts_per_level: Sequence[np.ndarray],
    clean_logits: np.ndarray,
    p0: float = 0.5,
    unif_w: float = UNIFORM_WEIGHT,
    num_classes: int | None = None,
) -> EmpiricalDecision:
    """The official MSDS empirical prediction (jh-jeong/smoothing-multiscale ``predict_mdds.py``, ``main``),
    from the counts of each level (highest σ first; the official code draws N = 200 per level and no
    selection draws) and the clean classifier's logits on the un-noised image. It carries NO guarantee.

    * Levels are read top down; a level fires when its largest count nA satisfies nA ≥ p0·n (a point
      estimate, no confidence interval; the first largest class on ties). Levels after it are ignored.
    * A level fired: the answer is argmax over classes of ``clean_logits + log(max((1 − w)·counts/n +
      w/K, 1e-20))`` with the *firing level's* counts, w = ``unif_w``, K = number of classes: the clean
      logits decide, the counts act as a prior mixed with a uniform one (so the answer may differ from
      the class that fired).
    * No level fired: the answer is argmax of the clean logits.

    The official code also computes an off-class veto (max of the higher levels' negative radii, abstain
    if >= 0), but over a list it never appends to, so the veto never triggers; this function reproduces
    that behaviour: there is no veto. Ties of the final argmax go to the lowest class (numpy's argmax).
    """
    logits = np.asarray(clean_logits, dtype=np.float64).reshape(-1)
    num_classes = logits.size if num_classes is None else check_num_classes(num_classes)
    if logits.size != num_classes:
        raise ValueError(f"clean_logits has {logits.size} entries for {num_classes} classes")
    p0 = check_p0(p0)
    if not 0.0 <= float(unif_w) <= 1.0:
        raise ValueError(f"unif_w must lie in [0, 1], got {unif_w!r}")
    levels = [np.asarray(c, dtype=np.int64).reshape(-1) for c in counts_per_level]
    if not levels or any(c.size != num_classes or c.sum() <= 0 or c.min() < 0 for c in levels):
        raise ValueError(f"counts_per_level needs at least one level of {num_classes} counts >= 0, not all 0")
    shifted = np.exp(logits - logits.max())
    clean, confidence = int(np.argmax(logits)), float(shifted.max() / shifted.sum())
    for stage, counts in enumerate(levels):
        if empirical_fires(counts, p0):
            fired = int(np.argmax(counts))
            prior = (1 - unif_w) * (counts / int(counts.sum())) + unif_w * (1.0 / num_classes)
            answer = int(np.argmax(logits + np.log(prior.clip(min=1e-20))))
            return EmpiricalDecision(answer, fired, stage, stage, clean, confidence)
    return EmpiricalDecision(clean, ABSTAIN, -1, len(levels) - 1, clean, confidence)


class MultiScaleSmooth:
    """Cascaded smoothing over several σ with one base classifier (reference stream, one image at a time).

    :param base_classifier: ``f(x_noisy, sigma) -> logits [B, num_classes]``, x_noisy in [0,1] pixel units
    :param num_classes: number of classes (>= 2)
    :param sigmas: noise levels in [0,1] pixel units, any order (visited from the highest)
    :param p0: threshold on the top-class probability (0.5 in the paper)

    Random stream: at each level, n0 selection then n estimation draws exactly like ``Smooth.certify``
    (global generator, batches of ``min(batch_size, remaining)`` copies), so a one-level cascade with
    p0 = 0.5 returns exactly ``Smooth``'s prediction and radius for the same seed.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: Callable, num_classes: int, sigmas: Sequence[float], p0: float = 0.5):
        self.base_classifier = base_classifier
        self.num_classes = check_num_classes(num_classes)
        self.sigmas = check_sigmas(sigmas)
        self.p0 = check_p0(p0)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
    ) -> tuple[int, float, int]:
        """``(prediction, radius, level)``; ABSTAIN with radius 0.0 and level -1 when no level answers."""
        cert = self.certify_with_details(x, n0, n, alpha, batch_size)
        return cert.prediction, cert.radius, cert.level

    def certify_with_details(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
    ) -> MultiScaleCertificate:
        n0, n, alpha, batch_size = check_certify_call(x, n0, n, alpha, batch_size)
        _eval(self.base_classifier)
        passed: list[LevelRecord] = []
        for stage, sigma in enumerate(self.sigmas):
            counts_selection = self._sample_noise(x, sigma, n0, batch_size)
            counts = self._sample_noise(x, sigma, n, batch_size)
            outcome, cert, record = cascade_decision(
                stage, sigma, counts_selection, counts, alpha, self.p0, passed
            )
            if cert is not None:
                return cert
            passed.append(record)
        return MultiScaleCertificate(ABSTAIN, 0.0, -1, len(self.sigmas) - 1, self.sigmas[-1], tuple(passed))

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, n0: int = 100) -> int:
        """Top-down PREDICT (:func:`cascade_prediction` at each level: n0 selection draws, then n estimation
        draws, in the order of :meth:`certify`'s stream): g(x) or ``ABSTAIN``; a wrong answer has
        probability at most α. Needs p0 >= 1/2."""
        check_images(x)
        n, alpha, batch_size = check_count(n, "n"), check_alpha(alpha), check_count(batch_size, "batch_size")
        n0, p0 = check_count(n0, "n0"), check_prediction_p0(self.p0)
        _eval(self.base_classifier)
        for sigma in self.sigmas:
            counts_selection = self._sample_noise(x, sigma, n0, batch_size)
            counts = self._sample_noise(x, sigma, n, batch_size)
            answer = cascade_prediction(counts_selection, counts, alpha, p0, len(self.sigmas))
            if answer is not None:
                return answer
        return ABSTAIN

    def _sample_noise(self, x: torch.Tensor, sigma: float, num: int, batch_size: int) -> np.ndarray:
        return reference_counts(
            lambda z: self.base_classifier(z, sigma), x, num, sigma, self.num_classes, batch_size
        )
