import math

import numpy as np
import pytest
from scipy.stats import beta, norm
from statsmodels.stats.proportion import proportion_confint

from msds_lightning.results import format_radius
from msds_lightning.smoothing import (
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    decide,
    gaussian_radius,
)

# ../shared/research/certify.md §1.3: alpha = 0.001, sigma = 0.25
GOLDEN = [
    (0, 100000, 0.0, None, "0.0"),
    (50489, 100000, 0.4999989484886355, None, "0.0"),
    (50490, 100000, 0.5000089487744035, 5.607812736243578e-06, "5.61e-06"),
    (90000, 100000, 0.8970364962238291, 0.31621117258435805, "0.316"),
    (99000, 100000, 0.9889893403774748, 0.5724999888034416, "0.572"),
    (100000, 100000, 0.9999309248330094, 0.9528641408474786, "0.953"),
    (10000, 10000, 0.9993094630025899, 0.7996443786845846, "0.8"),
    (100, 100, 0.933254300796991, 0.3751187560301591, "0.375"),
]


@pytest.mark.parametrize("n_a,n,p_lower,radius,text", GOLDEN)
def test_golden_clopper_pearson_and_radius(n_a, n, p_lower, radius, text):
    got = clopper_pearson_lower(n_a, n, 0.001)
    assert got == pytest.approx(p_lower, rel=1e-12, abs=1e-15)
    cert = decide(0, n_a, n, 0.001, 0.25)
    if radius is None:
        assert cert.prediction == -1 and cert.radius == 0.0
    else:
        assert cert.prediction == 0
        assert cert.radius == pytest.approx(radius, rel=1e-9)
    assert format_radius(cert.radius) == text


def _counts(rng, n):
    ks = np.unique(np.concatenate([[0, 1, n - 1, n], rng.integers(0, n + 1, size=50)]))
    return ks[(ks >= 0) & (ks <= n)]


def test_bounds_are_bitwise_statsmodels_reference_call():
    # Our one-sided bounds at α are the two ends of statsmodels' two-sided interval at 2α.
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 100, 1000, 10000, 100000, 1000000):
        for alpha in (1e-6, 0.0005, 0.001, 0.01, 0.05, 0.3):
            for k in _counts(rng, n):
                reference = proportion_confint(int(k), n, alpha=2 * alpha, method="beta")
                assert clopper_pearson_lower(int(k), n, alpha) == reference[0]
                assert clopper_pearson_upper(int(k), n, alpha) == reference[1]


def test_vectorised_bounds_are_bitwise_statsmodels():
    rng = np.random.default_rng(1)
    for n in (1, 7, 100, 100000):
        ks = _counts(rng, n)
        for alpha in (0.001, 0.05):
            lower, upper = proportion_confint(ks, n, alpha=2 * alpha, method="beta")
            got_lower, got_upper = clopper_pearson_interval(ks, n, alpha)
            assert np.array_equal(got_lower, lower) and np.array_equal(got_upper, upper)
            assert np.array_equal(clopper_pearson_lower(ks, np.full_like(ks, n), alpha), lower)


def test_upper_bound_is_isf_not_one_minus_alpha_ppf():
    # beta.ppf(1 - α, ...) is the same bound mathematically but not always to the last bit; statsmodels'
    # beta.isf(α, ...) is what the upper bound reproduces.
    rng = np.random.default_rng(2)
    differ = 0
    for n in (10, 1000, 100000):
        ks = _counts(rng, n)
        ks = ks[ks < n]
        upper = clopper_pearson_upper(ks, n, 0.001)
        assert np.array_equal(upper, beta.isf(0.001, ks + 1.0, n - ks + 0.0))
        differ += int(np.count_nonzero(upper != beta.ppf(1 - 0.001, ks + 1, n - ks)))
    assert differ > 0


def test_edges_are_exact_and_never_nan():
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    assert clopper_pearson_upper(100, 100, 0.001) == 1.0
    # closed form at k = n: lower = alpha ** (1 / n); at k = 0: upper = 1 - alpha ** (1 / n)
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
    assert clopper_pearson_upper(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100), rel=1e-12)
    ks = np.arange(0, 101)
    lo, hi = clopper_pearson_interval(ks, 100, 0.01)
    assert not np.isnan(lo).any() and not np.isnan(hi).any()
    assert (lo <= ks / 100).all() and (hi >= ks / 100).all() and (np.diff(lo) > 0).all()
    # a zero count never becomes a radius
    cert = decide(3, 0, 1000, 0.001, 0.5)
    assert cert.prediction == -1 and cert.radius == 0.0 and not math.isnan(cert.p_lower)


def test_threshold_counts_from_research_table():
    # smallest nA that does not abstain at alpha = 0.001 (certify.md §1.3)
    for n, k_min in [(100, 66), (1000, 550), (10000, 5156), (100000, 50490)]:
        assert clopper_pearson_lower(k_min, n, 0.001) >= 0.5 > clopper_pearson_lower(k_min - 1, n, 0.001)


def test_invalid_counts_rejected():
    for k, n in [(-1, 10), (11, 10), (0, 0)]:
        with pytest.raises(ValueError):
            clopper_pearson_lower(k, n, 0.01)


def test_gaussian_radius_is_sigma_times_probit():
    assert gaussian_radius(0.9, 0.5) == 0.5 * norm.ppf(0.9)
