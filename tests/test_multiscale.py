"""Multi-scale (cascaded) smoothing: decisions, radius formula, equivalence with Smooth, soundness."""

import numpy as np
import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import multinomial_proportions_confint, proportion_confint

from msds_lightning.smoothing import (
    MultiScaleEngine,
    MultiScaleSmooth,
    Smooth,
    SmoothingEngine,
    off_class_upper_bound,
    pooled_categories,
)

from .conftest import TemplateClassifier
from .test_linear_soundness import make_case

X0 = torch.full((1, 4, 4), 0.5)


class ChosenProbabilities(torch.nn.Module):
    """At noise level σ, returns class k with probability probs[σ][k] (for inputs X0 + N(0, σ²)):
    u = Φ(δ_0/σ) is uniform, and the class is the inverse CDF of probs[σ] at u."""

    def __init__(self, probs: dict[float, list[float]]):
        super().__init__()
        self.cdf = {s: torch.tensor(np.cumsum(p) / np.sum(p), dtype=torch.float64) for s, p in probs.items()}
        self.num_classes = len(next(iter(probs.values())))

    def forward(self, x_noisy, sigma):
        u = torch.special.ndtr(((x_noisy[:, 0, 0, 0] - 0.5) / sigma).double())
        labels = torch.searchsorted(self.cdf[sigma], u).clamp(max=self.num_classes - 1)
        return torch.nn.functional.one_hot(labels, self.num_classes).float()


def expected_radius(cert, alpha: float, p0: float = 0.5) -> float:
    """The cascade radius recomputed from the recorded counts, with statsmodels only."""
    s = cert.level
    alpha_s = alpha / (s + 1)
    final = cert.levels[s]
    n = sum(final.counts)
    p_lower = proportion_confint(final.n_a, n, alpha=2 * alpha_s, method="beta")[0]
    radius = final.sigma * (norm.ppf(p_lower) - norm.ppf(p0))
    return min([radius, *(-r for r in expected_off_class_radii(cert, alpha, p0))])


def expected_off_class_radii(cert, alpha: float, p0: float = 0.5) -> list[float]:
    """σ_j(Φ⁻¹(pB_j) − Φ⁻¹(p0)) of every higher level j passed before the last record's level fired (the
    terms whose max the official certify.py writes as r_neg), with statsmodels only."""
    final = cert.levels[-1]
    alpha_s = alpha / len(cert.levels)
    radii = []
    for higher in cert.levels[:-1]:
        counts = np.array(higher.counts)
        c = final.selected
        others = np.sort(np.delete(counts, c))[::-1]
        big, small = others[others >= 5].tolist(), others[others < 5].tolist()
        cats, pool = [int(counts[c]), *big], 0
        for v in small:
            pool += v
            if pool >= 5:
                cats.append(pool)
                pool = 0
        cats[-1] += pool
        if len(cats) <= 2:
            p_other = (
                1 - proportion_confint(int(counts[c]), int(counts.sum()), alpha=2 * alpha_s, method="beta")[0]
            )
        else:
            p_other = multinomial_proportions_confint(cats, alpha=2 * alpha_s, method="goodman")[1:, 1].max()
        radii.append(higher.sigma * (norm.ppf(p_other) - norm.ppf(p0)))
    return radii


SIGMAS = [0.25, 0.5, 1.0]


def test_fires_at_expected_level_with_formula_radius():
    f = ChosenProbabilities(
        {1.0: [0.3, 0.25, 0.2, 0.15, 0.1], 0.5: [0.05, 0.02, 0.9, 0.02, 0.01], 0.25: [0, 0, 1, 0, 0]}
    )
    torch.manual_seed(0)
    cert = MultiScaleSmooth(f, 5, SIGMAS).certify_with_details(X0, 100, 5000, 0.001, 1000)
    assert (cert.prediction, cert.level, cert.stage, cert.sigma) == (2, 1, 1, 0.5)
    assert len(cert.levels) == 2 and cert.levels[0].p_upper < 0.5 <= cert.levels[1].p_lower
    assert cert.radius == pytest.approx(expected_radius(cert, 0.001), rel=1e-12)
    # the off-class bound of the higher level is what limits the radius here
    assert cert.radius < 0.5 * norm.ppf(cert.levels[1].p_lower)
    # the official r_neg: that bound as a negative radius, in [0,1] pixel units
    assert cert.negative_radius == pytest.approx(max(expected_off_class_radii(cert, 0.001)), rel=1e-12)
    assert cert.negative_radius == pytest.approx(-cert.radius, rel=1e-12)


def test_highest_level_answers_when_confident():
    f = ChosenProbabilities({1.0: [0.1, 0.8, 0.1], 0.5: [0, 1, 0], 0.25: [0, 1, 0]})
    torch.manual_seed(1)
    cert = MultiScaleSmooth(f, 3, SIGMAS).certify_with_details(X0, 100, 2000, 0.001, 500)
    assert (cert.prediction, cert.level) == (1, 0) and len(cert.levels) == 1
    assert cert.radius == pytest.approx(1.0 * norm.ppf(cert.levels[0].p_lower), rel=1e-12)
    assert cert.negative_radius == -100.0  # no higher level: the official sentinel


def test_abstains_when_interval_straddles_p0_without_going_lower():
    f = ChosenProbabilities({1.0: [0.5, 0.3, 0.2], 0.5: [1, 0, 0], 0.25: [1, 0, 0]})
    torch.manual_seed(2)
    cert = MultiScaleSmooth(f, 3, SIGMAS).certify_with_details(X0, 100, 2000, 0.001, 500)
    assert (cert.prediction, cert.radius, cert.level, cert.stage) == (-1, 0.0, -1, 0)
    assert cert.levels[0].p_lower < 0.5 <= cert.levels[0].p_upper
    assert cert.negative_radius == -100.0  # no level reached p0


def test_abstains_when_every_level_is_below_p0():
    f = ChosenProbabilities({s: [0.34, 0.33, 0.33] for s in SIGMAS})
    torch.manual_seed(3)
    cert = MultiScaleSmooth(f, 3, SIGMAS).certify_with_details(X0, 100, 2000, 0.001, 500)
    assert (cert.prediction, cert.level, cert.stage) == (-1, -1, 2) and len(cert.levels) == 3


def test_negative_radius_abstains():
    # level 0: class 0 just below 1/2 (CP upper < 1/2) but, with many categories, the Goodman upper bound
    # of class 0 at level 1 exceeds 1/2: another class could switch on at the top level -> abstain
    probs = {1.0: [0.484] + [0.516 / 9] * 9, 0.5: [0, 1] + [0] * 8, 0.25: [0, 1] + [0] * 8}
    f = ChosenProbabilities(probs)
    found = False
    for seed in range(6):
        torch.manual_seed(seed)
        cert = MultiScaleSmooth(f, 10, SIGMAS).certify_with_details(X0, 100, 10000, 0.001, 10000)
        if len(cert.levels) == 2 and cert.levels[1].p_lower >= 0.5:
            formula = expected_radius(type(cert)(1, 0.0, 1, 1, 0.5, cert.levels), 0.001)
            assert (cert.prediction == -1) == (formula < 0)
            # r_neg > 0 flags exactly this abstention (the official certify.py's negative-radius flag)
            r_neg = max(expected_off_class_radii(cert, 0.001))
            assert cert.negative_radius == pytest.approx(r_neg, rel=1e-12) and (r_neg > 0) == (formula < 0)
            found |= formula < 0
    assert found, "no seed produced the negative-radius case"


@pytest.mark.parametrize("sigma", [0.12, 0.5])
@pytest.mark.parametrize("n0,n,batch", [(100, 1000, 37), (50, 3000, 1000)])
def test_single_level_equals_smooth_exactly(sigma, n0, n, batch):
    f = TemplateClassifier()
    for seed, strength in enumerate((0.6, 1.0, 2.0, 4.0)):
        x = f.image(3, strength)
        torch.manual_seed(seed)
        expected = Smooth(f, 10, sigma).certify(x, n0, n, 0.001, batch)
        torch.manual_seed(seed)
        got = MultiScaleSmooth(lambda z, s: f(z), 10, [sigma]).certify(x, n0, n, 0.001, batch)
        assert got[:2] == expected and got[2] == (0 if expected[0] != -1 else -1)


def test_engine_levels_share_streams_with_single_sigma_engine():
    f = TemplateClassifier()
    images = torch.stack([f.image(c, s) for c, s in [(3, 0.6), (1, 1.0), (7, 2.0), (0, 4.0)]])
    single = SmoothingEngine(f, 10, 0.5, seed=4, batch_size=64).certify(
        images, [5, 6, 7, 8], 100, 1000, 0.001
    )
    cascade = MultiScaleEngine(lambda z, s: f(z), 10, [0.5], seed=4, batch_size=999).certify(
        images, [5, 6, 7, 8], 100, 1000, 0.001
    )
    assert [(c.prediction, c.radius) for c in cascade] == [(c.prediction, c.radius) for c in single]


def test_engine_matches_decisions_and_is_batch_size_independent():
    f = ChosenProbabilities(
        {1.0: [0.3, 0.25, 0.2, 0.15, 0.1], 0.5: [0.05, 0.02, 0.9, 0.02, 0.01], 0.25: [0, 0, 1, 0, 0]}
    )
    images = X0.expand(6, 1, 4, 4).contiguous()
    runs = [MultiScaleEngine(f, 5, SIGMAS, seed=0, batch_size=b).certify(images, range(6), 100, 3000, 0.001)
            for b in (7, 500)]  # fmt: skip
    assert runs[0] == runs[1]
    for cert in runs[0]:
        assert (cert.prediction, cert.level) == (2, 1)
        assert cert.radius == pytest.approx(expected_radius(cert, 0.001), rel=1e-12)


class UniformAboveLinearBelow(torch.nn.Module):
    """Above σ_fire: a pseudo-random class (~uniform over 10, whatever x), so those levels never reach
    p0 anywhere; at σ <= σ_fire: the linear binary classifier (classes 0/1)."""

    def __init__(self, linear, sigma_fire):
        super().__init__()
        self.linear, self.sigma_fire = linear, sigma_fire

    def forward(self, z, sigma):
        if sigma > self.sigma_fire:
            labels = ((z.flatten(1)[:, 0] * 1e4).frac().abs() * 10).long().clamp(max=9)
            return torch.nn.functional.one_hot(labels, 10).float()
        logits = torch.full((z.shape[0], 10), -1e9)
        logits[:, :2] = self.linear(z)
        return logits


@pytest.mark.parametrize("fire_level", [0, 1, 2])
def test_linear_soundness_at_every_level(fire_level):
    levels = sorted(SIGMAS, reverse=True)
    for k, d_over_sigma in enumerate((0.3, 1.0, 1.8)):
        d = d_over_sigma * levels[fire_level]
        linear, x = make_case(d, seed=20 + k)
        f = UniformAboveLinearBelow(linear, levels[fire_level])
        torch.manual_seed(k)
        cert = MultiScaleSmooth(f, 10, SIGMAS).certify_with_details(x, 100, 20000, 0.001, 20000)
        assert cert.level == fire_level and cert.prediction == 1
        assert cert.radius <= d * (1 + 1e-6) + 1e-9, f"unsound at level {fire_level}: {cert.radius} > {d}"
        assert cert.radius > 0.5 * d  # and not vacuous
        engine = MultiScaleEngine(f, 10, SIGMAS, seed=k, batch_size=20000).certify(
            x[None], [k], 100, 20000, 0.001
        )[0]
        assert engine.level == fire_level and engine.radius <= d * (1 + 1e-6) + 1e-9


def test_pooled_categories_and_bounds_with_2_3_and_many_categories():
    # many classes, rare ones pooled: others sorted 40, 4, 3, 2, 1 -> 40 | 4+3=7 | remainder 2+1 -> last
    assert pooled_categories([50, 3, 2, 1, 40, 4], 0) == [50, 40, 10]
    b = off_class_upper_bound(np.array([50, 3, 2, 1, 40, 4]), 0, 0.001)
    assert b == multinomial_proportions_confint([50, 40, 10], alpha=0.002, method="goodman")[1:, 1].max()
    # two categories: bound the classes other than c, from c's own count
    assert pooled_categories([90, 10], 0) == [90, 10]
    assert off_class_upper_bound(np.array([90, 10]), 0, 0.001) == pytest.approx(
        1 - proportion_confint(90, 100, alpha=0.002, method="beta")[0], rel=1e-12
    )
    # c is NOT that level's top class: the official quirk would bound class 1 by 1 - CP_lower(90) ~ 0.17,
    # below its observed 0.9; ours bounds it by 1 - CP_lower(10) and stays above 0.9
    quirk = 1 - proportion_confint(90, 100, alpha=0.002, method="beta")[0]
    ours = off_class_upper_bound(np.array([10, 90]), 0, 0.001)
    assert quirk < 0.9 < ours
    # one category (everything else rare): still bounds the rest from c's count
    assert pooled_categories([100, 1, 1, 1], 0) == [103]
    assert off_class_upper_bound(np.array([100, 1, 1, 1]), 0, 0.001) == pytest.approx(
        1 - proportion_confint(100, 103, alpha=0.002, method="beta")[0], rel=1e-12
    )
    # many categories, none pooled
    counts = np.array([500, 100, 90, 80, 70, 60, 50, 30, 15, 5])
    assert pooled_categories(counts, 0) == counts.tolist()
    expected = multinomial_proportions_confint(counts.tolist(), alpha=0.002, method="goodman")[1:, 1].max()
    assert off_class_upper_bound(counts, 0, 0.001) == expected > 100 / 1000


def test_predict_top_down():
    f = ChosenProbabilities({1.0: [0.4, 0.3, 0.3], 0.5: [0.05, 0.9, 0.05], 0.25: [0, 1, 0]})
    torch.manual_seed(0)
    assert MultiScaleSmooth(f, 3, SIGMAS).predict(X0, 1000, 0.001, 500) == 1
    g = ChosenProbabilities({1.0: [0.5, 0.3, 0.2], 0.5: [1, 0, 0], 0.25: [1, 0, 0]})
    assert MultiScaleSmooth(g, 3, SIGMAS).predict(X0, 1000, 0.001, 500) == -1
    images = X0.expand(3, 1, 4, 4).contiguous()
    assert MultiScaleEngine(f, 3, SIGMAS).predict(images, [0, 1, 2], 1000, 0.001) == [1, 1, 1]


@pytest.mark.parametrize(
    "kwargs,word",
    [({"sigmas": []}, "sigmas"), ({"sigmas": [0.5, 0.5]}, "distinct"), ({"sigmas": [0.5, -1]}, "sigmas"),
     ({"sigmas": [0.5], "p0": 1.0}, "p0"), ({"sigmas": [0.5], "p0": 0}, "p0")],
)  # fmt: skip
def test_invalid_cascade_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        MultiScaleSmooth(lambda z, s: z, 10, **kwargs)
