"""Adaptive certification: stop drawing estimation samples once more of them cannot change the answer.

Guarantee (union bound over a fixed schedule). The estimation samples of an image are looked at only at
checkpoints ``n_1 < n_2 < … < n_K = N`` fixed in advance (geometric, ratio ``ratio`` from ``first``; N is
the budget), and the Clopper–Pearson bound at checkpoint k is taken at level α_k, with Σ_k α_k = α. For
each fixed k the bound from the first n_k draws fails with probability at most α_k (n_k is fixed, the
draws are i.i.d.), so with probability at least 1 − Σ α_k = 1 − α *all* K bounds hold at once, and the
bound reported at any data-dependent stopping checkpoint is valid: the stopping rule cannot break the
certificate, it only decides how many samples are spent. This is the union-bound confidence sequence of
Voráček (NeurIPS 2024, "Treatment of statistical estimation problems in randomized smoothing"), here
with Clopper–Pearson bounds and a full radius; the α split is what it costs (an image that runs to the
budget is bounded at α_K < α, so its radius is slightly below the fixed-N one).

The selection samples (n0, the class ĉ) stay separate from the estimation samples, as in Cohen et al.

Stopping rule at checkpoint k, with (pL, pU) the interval of ĉ at α_k:

* last checkpoint (n_k = N): Cohen's decision at α_K (certify when pL >= ``p_threshold``, 1/2);
* ``hopeless``: even if the true probability were pU, a full budget could not certify (its CP lower
  bound at N and α_K would be < ``p_threshold``): abstain now;
* ``settled``: pL >= ``p_threshold`` certifies radius r and the best radius a full budget could reach if
  p were pU, r_best, is within ``tolerance`` of r, or no radius of the reporting grid ``radii`` lies in
  (r, r_best] (more samples cannot certify the image at any further table radius): stop with r;
* otherwise draw up to the next checkpoint.

Units: σ, radii and ``tolerance`` are l2 distances in [0,1] pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from .bounds import clopper_pearson_interval, clopper_pearson_lower
from .checks import check_alpha, check_count
from .outcome import Outcome

SAMPLING_MODES = ("fixed", "adaptive")


@dataclass(frozen=True)
class AdaptiveSampling:
    """Settings of adaptive (sequential) sampling; ``plan(n, alpha)`` turns them into a schedule.

    :param first: first checkpoint (estimation samples); a budget N <= ``first`` means fixed sampling
    :param ratio: growth factor between checkpoints (> 1)
    :param final_share: share of α given to the last checkpoint (the budget N); the rest is split evenly
        over the earlier ones. A larger share keeps images that need the full budget closer to fixed N.
    :param tolerance: stop once a full budget could raise the radius by at most this much ([0,1] pixels)
    :param radii: reporting grid ([0,1] pixels): stop once no grid radius lies between the current radius
        and the best a full budget could reach. Empty: only ``tolerance`` decides.
    """

    first: int = 1000
    ratio: float = 2.0
    final_share: float = 0.5
    tolerance: float = 0.0
    radii: tuple[float, ...] = field(default=())

    def __post_init__(self):
        check_count(self.first, "first")
        if not self.ratio > 1:
            raise ValueError(f"ratio must be > 1 (growth between checkpoints), got {self.ratio!r}")
        if not 0 < self.final_share <= 1:
            raise ValueError(f"final_share must satisfy 0 < final_share <= 1, got {self.final_share!r}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0 ([0,1] pixel units), got {self.tolerance!r}")
        radii = tuple(sorted(float(r) for r in self.radii))
        if any(r < 0 for r in radii):
            raise ValueError(f"radii must be >= 0 ([0,1] pixel units), got {list(self.radii)}")
        object.__setattr__(self, "radii", radii)

    def plan(self, n: int, alpha: float) -> SequentialPlan:
        """The checkpoints and per-checkpoint levels for a budget of ``n`` samples at total level α."""
        n, alpha = check_count(n, "n"), check_alpha(alpha)
        checkpoints, size = [], float(self.first)
        while size < n:
            if not checkpoints or int(size) > checkpoints[-1]:
                checkpoints.append(int(size))
            size *= self.ratio
        checkpoints.append(n)
        if len(checkpoints) == 1:
            alphas = [alpha]
        else:
            early = alpha * (1 - self.final_share) / (len(checkpoints) - 1)
            alphas = [early] * (len(checkpoints) - 1) + [alpha * self.final_share]
        return SequentialPlan(tuple(checkpoints), tuple(alphas), self.tolerance, self.radii)


@dataclass(frozen=True)
class SequentialPlan:
    """Checkpoints ``n_1 < … < n_K`` (estimation samples) and levels α_k (Σ α_k = α) of one budget."""

    checkpoints: tuple[int, ...]
    alphas: tuple[float, ...]
    tolerance: float = 0.0
    radii: tuple[float, ...] = ()

    @property
    def budget(self) -> int:
        return self.checkpoints[-1]

    def interval(self, k: int, n_a: int) -> tuple[float, float]:
        """(lower, upper) Clopper–Pearson bounds of a count ``n_a`` of ``checkpoints[k]``, each at α_k."""
        return clopper_pearson_interval(int(n_a), self.checkpoints[k], self.alphas[k])

    def best_lower(self, p_upper):
        """The lower bound a full budget would give if the true probability were ``p_upper`` (scalar or
        array)."""
        return clopper_pearson_lower(np.ceil(np.asarray(p_upper) * self.budget), self.budget, self.alphas[-1])

    def settled(self, radius, best_radius):
        """Whether more samples cannot move ``radius`` by more than the tolerance or across a grid radius
        (scalars or arrays)."""
        radius, best_radius = np.asarray(radius, dtype=float), np.asarray(best_radius, dtype=float)
        done = best_radius - radius <= self.tolerance
        if self.radii:  # grid radii in (radius, best_radius]
            grid = np.asarray(self.radii)
            between = np.searchsorted(grid, best_radius, side="right") - np.searchsorted(
                grid, radius, side="right"
            )
            done |= between == 0
        return done if done.ndim else bool(done)

    def steps(self, k: int, n_a, sigma: float, p_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """Decide at checkpoint k for an array of counts ``n_a`` of ĉ: (:class:`~.outcome.Outcome` codes
        ``CONTINUE`` / ``CERTIFY`` / ``ABSTAIN`` as an int array, p_lower). A certified radius is
        σ(Φ⁻¹(p_lower) − Φ⁻¹(p_threshold))."""
        n_a = np.asarray(n_a, dtype=np.int64)
        p_lower, p_upper = clopper_pearson_interval(
            n_a, np.full_like(n_a, self.checkpoints[k]), self.alphas[k]
        )
        p_lower, p_upper = np.atleast_1d(p_lower), np.atleast_1d(p_upper)
        certified = p_lower >= p_threshold
        if k == len(self.checkpoints) - 1:
            return np.where(certified, Outcome.CERTIFY, Outcome.ABSTAIN), p_lower
        best = np.atleast_1d(self.best_lower(p_upper))
        shift = norm.ppf(p_threshold)
        with np.errstate(divide="ignore", invalid="ignore"):
            settled = self.settled(sigma * (norm.ppf(p_lower) - shift), sigma * (norm.ppf(best) - shift))
        codes = np.where(certified & settled, Outcome.CERTIFY, Outcome.CONTINUE)
        return np.where(best < p_threshold, Outcome.ABSTAIN, codes), p_lower

    def step(self, k: int, n_a: int, sigma: float, p_threshold: float = 0.5) -> tuple[Outcome, float]:
        """:meth:`steps` for one count: ``(Outcome.CONTINUE | CERTIFY | ABSTAIN, p_lower)``."""
        codes, p_lower = self.steps(k, [n_a], sigma, p_threshold)
        return Outcome(int(codes[0])), float(p_lower[0])


def check_sampling(sampling: str) -> str:
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    return sampling


def fixed_plan(n: int, alpha: float) -> SequentialPlan:
    """One checkpoint at n with the whole α: exactly fixed-N certification."""
    return SequentialPlan((check_count(n, "n"),), (check_alpha(alpha),))
