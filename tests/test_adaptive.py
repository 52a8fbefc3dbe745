"""Adaptive (sequential) certification: schedule, equivalence with fixed sampling, early stopping, and
soundness on the analytic linear classifier over many independent noise streams."""

import math

import pytest
import torch
from scipy.stats import norm

from msds_lightning.smoothing import MultiScaleEngine, SmoothingEngine, sample_counts
from msds_lightning.smoothing.adaptive import AdaptiveSampling, SequentialPlan
from msds_lightning.smoothing.multiscale import cascade_decision
from msds_lightning.smoothing.outcome import ABSTAIN, Outcome
from tests.test_linear_soundness import make_case

CIFAR_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def test_plan_checkpoints_and_levels():
    plan = AdaptiveSampling().plan(100_000, 0.001)
    assert plan.checkpoints == (1000, 2000, 4000, 8000, 16000, 32000, 64000, 100_000)
    assert math.isclose(sum(plan.alphas), 0.001, rel_tol=1e-12)  # the union bound spends exactly α
    assert plan.alphas[-1] == 0.0005 and len(set(plan.alphas[:-1])) == 1
    assert AdaptiveSampling(first=5000).plan(3000, 0.01).checkpoints == (3000,)  # budget <= first: fixed
    assert AdaptiveSampling(first=5000).plan(3000, 0.01).alphas == (0.01,)
    assert AdaptiveSampling(ratio=1.5, first=100).plan(500, 0.1).checkpoints == (100, 150, 225, 337, 500)


def test_one_outcome_vocabulary_for_cohen_adaptive_and_cascade():
    plan = AdaptiveSampling(radii=(0.0, 0.25)).plan(10_000, 0.001)  # 1000/1000 already certifies r > 0.25
    assert plan.step(0, 1000, 0.25) == (Outcome.CERTIFY, pytest.approx(plan.interval(0, 1000)[0]))
    assert plan.step(0, 0, 0.25)[0] is Outcome.ABSTAIN  # hopeless: abstain at the first checkpoint
    assert plan.step(0, 530, 0.25)[0] is Outcome.CONTINUE  # straddles 1/2
    assert plan.step(len(plan.checkpoints) - 1, 4000, 0.25)[0] is Outcome.ABSTAIN  # the budget decides
    codes, _ = plan.steps(0, [1000, 0, 530], 0.25)
    assert codes.tolist() == [Outcome.CERTIFY, Outcome.ABSTAIN, Outcome.CONTINUE]
    # the cascade's four outcomes, from counts of 100 at p0 = 0.5 (fixed sampling)
    top, low, mid = [100, 0], [0, 100], [50, 50]
    assert cascade_decision(0, 0.5, top, top, 0.001, 0.5, [])[0] is Outcome.CERTIFY
    assert cascade_decision(0, 0.5, top, low, 0.001, 0.5, [])[0] is Outcome.LOWER
    outcome, cert, _ = cascade_decision(0, 0.5, top, mid, 0.001, 0.5, [])
    assert outcome is Outcome.ABSTAIN and cert.prediction == ABSTAIN == -1  # the prediction keeps Cohen's -1
    assert Outcome.ABSTAIN != ABSTAIN  # a decision code is never a prediction


@pytest.mark.parametrize(
    "kwargs",
    [dict(first=0), dict(ratio=1.0), dict(final_share=0.0), dict(final_share=1.5), dict(tolerance=-0.1),
     dict(radii=(0.25, -1.0))],
)  # fmt: skip
def test_invalid_settings_rejected(kwargs):
    with pytest.raises(ValueError):
        AdaptiveSampling(**kwargs)


def test_sample_ranges_add_up_and_padding_changes_nothing():
    f, x = make_case(0.05, seed=0)
    images = torch.stack([x, x.flip(-1)])
    common = dict(seed=4, stream=(1,), batch_size=300, noise_block=256)
    whole = sample_counts(f, images, [3, 8], 1000, 0.5, 2, **common)
    parts = sample_counts(f, images, [3, 8], 333, 0.5, 2, **common) + sample_counts(
        f, images, [3, 8], 667, 0.5, 2, start=333, **common
    )
    assert torch.equal(whole, parts)
    assert torch.equal(whole, sample_counts(f, images, [3, 8], 1000, 0.5, 2, pad=True, **common))
    assert int(whole.sum()) == 2000


def test_image_running_to_the_budget_sees_the_fixed_run_samples():
    """Without a grid or tolerance nothing settles early: the adaptive count at the budget is the fixed
    run's count (same draws), bounded at α_K instead of α."""
    f, x = make_case(0.1, seed=2)  # p ≈ Φ(0.4): undecided until the end
    fixed = SmoothingEngine(f, 2, 0.25, seed=1).certify(x[None], [5], 100, 4000, 0.01)[0]
    adaptive = SmoothingEngine(f, 2, 0.25, seed=1, sampling=AdaptiveSampling(first=500)).certify(
        x[None], [5], 100, 4000, 0.01
    )[0]
    assert adaptive.n == fixed.n == 4000 and adaptive.n_a == fixed.n_a
    assert adaptive.p_lower < fixed.p_lower  # the last checkpoint gets only half of α


class Constant(torch.nn.Module):
    """Ignores the noise: always class 3 of 10 (a certain image)."""

    def forward(self, x, sigma=None):
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 3] = 1
        return logits


class NoiseArgmax(torch.nn.Module):
    """The class is decided by the noise alone (uniform over 10 classes: a hopeless image)."""

    def forward(self, x, sigma=None):
        return x.flatten(1)[:, :10]


def test_certain_image_stops_at_the_first_checkpoint_and_hopeless_abstains_early():
    settings = AdaptiveSampling(radii=CIFAR_RADII)
    x = torch.full((1, 1, 4, 4), 0.5)
    engine = SmoothingEngine(Constant(), 10, 0.12, sampling=settings)
    cert = engine.certify(x, [0], 100, 100_000, 0.001)[0]
    assert (cert.prediction, cert.n, cert.n_a) == (3, 1000, 1000)
    assert 0.25 <= cert.radius < 0.12 * norm.ppf(1 - 1e-4)  # past the last reachable grid radius
    hopeless = SmoothingEngine(NoiseArgmax(), 10, 0.12, sampling=settings)
    cert = hopeless.certify(torch.full((1, 1, 4, 4), 0.5), [0], 100, 100_000, 0.001)[0]
    assert cert.abstained and cert.n == 1000


def test_cascade_rejects_levels_that_cannot_fire_early():
    """σ ∈ {1.0, 0.5, 0.25} on a linear classifier at distance 0.2: P(correct) is Φ(0.2) = 0.58,
    Φ(0.4) = 0.66 and Φ(0.8) = 0.79, so with p0 = 0.7 the two high levels cannot fire and must be left
    once proven below p0, long before the budget."""
    f, x = make_case(0.8 * 0.25, seed=1)
    settings = AdaptiveSampling(radii=CIFAR_RADII)
    engine = MultiScaleEngine(lambda z, s: f(z), 2, [1.0, 0.5, 0.25], p0=0.7, sampling=settings)
    cert = engine.certify(x[None], [0], 100, 100_000, 0.001)[0]
    used = [record.n for record in cert.levels]
    assert cert.level == 2 and cert.prediction == 1
    assert used[0] <= 2000 and used[1] <= 8000  # proven below p0 after a few looks
    fixed = MultiScaleEngine(lambda z, s: f(z), 2, [1.0, 0.5, 0.25], p0=0.7).certify(
        x[None], [0], 100, 100_000, 0.001
    )[0]
    assert fixed.level == 2 and fixed.samples(100) == 3 * 100_100
    assert cert.samples(100) < 0.5 * fixed.samples(100)


# --- soundness: certified radius above the exact radius happens with probability <= α -------------------
# The stopping rule is made adversarial: the grid holds the exact radius d itself, so sampling goes on
# while the radius is below d and could still pass it, and stops the moment it overshoots (a violation).
# Many looks (ratio 1.5 from 200) give peeking every chance to accumulate.


class Peeking(AdaptiveSampling):
    """Deliberately unsound: every look bounded at the full α (no union bound)."""

    def plan(self, n, alpha):
        honest = super().plan(n, alpha)
        return SequentialPlan(
            honest.checkpoints, (alpha,) * len(honest.checkpoints), self.tolerance, self.radii
        )


SOUNDNESS_ALPHA, TRIALS, BUDGET = 0.05, 2000, 8000
# Pass if violations <= α·T + 3·sqrt(α(1-α)T) = 100 + 29 = 129 of 2000 (3 binomial standard deviations
# above α). A procedure whose true failure rate were 0.08 (160 expected, sd 12) would pass with
# probability ~0.5%; the Peeking control shows the test does catch an unsound variant.
LIMIT = SOUNDNESS_ALPHA * TRIALS + 3 * math.sqrt(SOUNDNESS_ALPHA * (1 - SOUNDNESS_ALPHA) * TRIALS)


def violations(make_engine, distance: float) -> int:
    """Certify one image under TRIALS independent noise streams (dataset indices 0..TRIALS-1) and count
    certified radii above the exact radius ``distance`` (or certificates of the wrong class)."""
    f, x = make_case(distance, seed=11)
    settings_cls = make_engine.settings
    engine = make_engine(f, settings_cls(first=200, ratio=1.5, radii=(0.0, distance)))
    images = x[None].expand(TRIALS, -1, -1, -1)
    certs = engine.certify(images, list(range(TRIALS)), 50, BUDGET, SOUNDNESS_ALPHA)
    return sum(c.prediction == 0 or (c.prediction == 1 and c.radius > distance) for c in certs)


def single_sigma(settings):
    def make(f, sampling):
        return SmoothingEngine(f, 2, 0.25, seed=5, batch_size=20000, sampling=sampling)

    make.settings = settings
    return make


def cascade(settings):
    def make(f, sampling):
        return MultiScaleEngine(
            lambda z, s: f(z), 2, [0.5, 0.25], seed=5, batch_size=20000, sampling=sampling
        )

    make.settings = settings
    return make


@pytest.mark.parametrize("p", [0.8, pytest.param(0.95, marks=pytest.mark.slow)])  # ~40 s each
def test_adaptive_single_sigma_is_sound_on_the_linear_classifier(p):
    bad = violations(single_sigma(AdaptiveSampling), 0.25 * norm.ppf(p))
    assert bad <= LIMIT, f"{bad} of {TRIALS} certified radii exceed the exact radius (limit {LIMIT:.0f})"


def test_soundness_test_catches_peeking():
    bad = violations(single_sigma(Peeking), 0.25 * norm.ppf(0.8))
    assert bad > LIMIT, f"the unsound variant made only {bad} violations of {TRIALS}: the test has no power"


def test_adaptive_cascade_is_sound_on_the_linear_classifier():
    """Level σ = 0.5 answers (p0 = 1/2, linear f): the exact radius of the cascade is the distance."""
    bad = violations(cascade(AdaptiveSampling), 0.25 * norm.ppf(0.9))
    assert bad <= LIMIT, f"{bad} of {TRIALS} certified radii exceed the exact radius (limit {LIMIT:.0f})"
