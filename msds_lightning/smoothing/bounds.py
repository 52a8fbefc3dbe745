"""Confidence bounds and radii used by randomized-smoothing certificates.

All bounds are exact (Clopper–Pearson, i.e. inverted binomial tails) and one-sided at level α: a lower
bound ``p_lower`` satisfies P(p < p_lower) <= α. A two-sided interval of coverage 1 − 2α is the pair
(lower at α, upper at α) — this is how Cohen et al. call statsmodels
(``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``). Both bounds are bit-for-bit that call's
two ends: statsmodels halves the two-sided ``alpha`` back to α and takes ``beta.ppf(α, k, n - k + 1)`` for
the lower end and ``beta.isf(α, k + 1, n - k)`` for the upper one, on float64 counts; the functions below
make the same calls (``beta.ppf(1 − α, ...)`` for the upper bound would differ in the last bits).

The edge cases are defined explicitly because ``scipy.stats.beta.ppf`` returns NaN there: the lower bound
is 0 at n_success = 0 and the upper bound is 1 at n_success = n. A NaN must never reach a radius (``NaN <
0.5`` is False, so an unguarded certifier would certify with a NaN radius).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, binomtest, norm


def _as_counts(n_success, n):
    k = np.asarray(n_success)
    total = np.asarray(n)
    if np.any(total < 1) or np.any(k < 0) or np.any(k > total):
        raise ValueError(f"need 0 <= n_success <= n and n >= 1, got n_success={n_success!r}, n={n!r}")
    return k, total


def _scalar_or_array(value: np.ndarray):
    return float(value) if value.ndim == 0 else value


def clopper_pearson_lower(n_success, n, alpha: float):
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    Works on scalars (returns ``float``) and on numpy arrays (element-wise). Equals
    ``beta.ppf(alpha, k, n - k + 1)``, and 0 at k = 0: bit for bit
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    k, total = _as_counts(n_success, n)
    k, total = k.astype(np.float64), total.astype(np.float64)  # statsmodels' array_like(dtype=double)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, np.maximum(k, 1.0), total - k + 1.0)
    return _scalar_or_array(np.where(k == 0, 0.0, bound))


def clopper_pearson_upper(n_success, n, alpha: float):
    """One-sided (1 − α) Clopper–Pearson upper bound on a binomial proportion.

    Equals ``beta.isf(alpha, k + 1, n - k)``, and 1 at k = n: bit for bit
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[1]``.
    """
    k, total = _as_counts(n_success, n)
    k, total = k.astype(np.float64), total.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.isf(alpha, k + 1.0, np.maximum(total - k, 1.0))
    return _scalar_or_array(np.where(k == total, 1.0, bound))


def clopper_pearson_interval(n_success, n, alpha: float):
    """Two-sided Clopper–Pearson interval with coverage 1 − 2α: ``(lower at α, upper at α)``."""
    return clopper_pearson_lower(n_success, n, alpha), clopper_pearson_upper(n_success, n, alpha)


def gaussian_radius(p_lower, sigma: float):
    """Certified l2 radius σ·Φ⁻¹(p_lower) (Cohen et al. 2019, Theorem 1), in the units of σ."""
    return sigma * norm.ppf(p_lower)


def binomial_test_pvalue(count_top: int, count_second: int) -> float:
    """Two-sided binomial test of ``count_top`` successes in ``count_top + count_second`` at p = 1/2.

    This is the test of Cohen et al.'s PREDICT (Hung & Fithian 2019); ``scipy.stats.binom_test``, which the
    reference called, was removed in SciPy 1.12 and ``binomtest(...).pvalue`` is its replacement.
    """
    return float(binomtest(int(count_top), int(count_top) + int(count_second), p=0.5).pvalue)
