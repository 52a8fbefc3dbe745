"""The cascade's PREDICT is sound: over independent noise streams, an answer that is not g(x) is at most as
frequent as α (within 3 standard deviations), on constructed classifiers whose class probabilities per
level are known, including the worst cases; a rule without the guarantee fails the same check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from statsmodels.stats.proportion import proportion_confint

from msds_lightning.smoothing import ABSTAIN, PREDICTION, Engine, MultiScaleSmooth

from .test_multiscale import ChosenProbabilities

SIGMAS = (1.0, 0.5, 0.25)
ALPHA, P0, STREAMS = 0.05, 0.5, 2000
LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / STREAMS)  # 0.0646

NEAR = [0.499, 0.499, 0.002]  # two classes just under p0
CASES = {
    # per level (highest σ first) the class probabilities; g(x) = the top class of the first level above p0
    "two classes just under p0 at the top level": ([NEAR, [0, 0, 1], [0, 0, 1]], 2),
    "the same after falling through a level": ([[0.34, 0.33, 0.33], NEAR, [0, 0, 1]], 2),
    "one class just above p0, another class below": ([[0.51, 0.49, 0], [0, 1, 0], [0, 1, 0]], 0),
    "g abstains: no level above p0": ([NEAR, NEAR, NEAR], ABSTAIN),
}


def streams(probabilities):
    f = ChosenProbabilities(dict(zip(SIGMAS, probabilities)))
    images = torch.full((STREAMS, 1, 1, 1), 0.5)  # the classifier reads only δ (see ChosenProbabilities)
    return f, images, list(range(STREAMS))  # one index per image: independent noise streams


def wrong_rate(answers, truth) -> float:
    answers = np.asarray(answers)
    return float(np.mean((answers != ABSTAIN) & (answers != truth)))


def check_case(name: str, n: int, n0: int = 100):
    probabilities, truth = CASES[name]
    f, images, indices = streams(probabilities)
    answers = Engine(f, 3, SIGMAS, P0, batch_size=100_000).predict(images, indices, n, ALPHA, n0)
    rate = wrong_rate(answers, truth)
    assert rate <= LIMIT, f"{name}, n={n}: wrong answers {rate:.4f} > {LIMIT:.4f}"
    return answers


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_answers_are_at_most_alpha(name):
    answers = check_case(name, n=500)
    if CASES[name][1] != ABSTAIN:  # the test has power: most streams answer g(x) where it exists... or abstain
        assert np.mean(np.asarray(answers) == CASES[name][1]) + np.mean(np.asarray(answers) == ABSTAIN) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("n", [100, 5000])
@pytest.mark.parametrize("name", list(CASES))
def test_wrong_answers_are_at_most_alpha_at_small_and_large_n(name, n):
    check_case(name, n)


def test_clear_cases_answer_g():
    f, images, indices = streams([[0.3, 0.3, 0.4], [0.05, 0.9, 0.05], [0, 1, 0]])  # g = 1, from level 0.5
    predictions = Engine(f, 3, SIGMAS, P0, batch_size=100_000).predict_with_levels(images[:50], indices[:50], 1000, 0.001)
    assert {(p.prediction, p.level, p.sigma) for p in predictions} == {(1, 1, 0.5)}
    assert {p.samples for p in predictions} == {2 * (100 + 1000)}
    torch.manual_seed(0)
    assert MultiScaleSmooth(f, 3, SIGMAS).predict(torch.full((1, 1, 1), 0.5), 1000, 0.001, 500) == 1


def test_negative_control_without_the_guarantee_fails():
    """The former rule — ĉ and its bound from the same n draws, one-sided at the full α at every level —
    answers one of the two near-p0 classes far more often than α: the check above can fail."""
    probabilities, truth = CASES["two classes just under p0 at the top level"]
    f, images, indices = streams(probabilities)
    engine = Engine(f, 3, SIGMAS, P0, batch_size=100_000)
    n = 500
    answers = np.full(STREAMS, ABSTAIN)
    active = np.arange(STREAMS)
    for sigma in SIGMAS:
        counts = engine.counts(images[active], [int(i) for i in active], n, (PREDICTION,), sigma=sigma).numpy()
        top = counts.argmax(1)
        lower = np.array([proportion_confint(c[t], n, alpha=2 * ALPHA, method="beta")[0] for c, t in zip(counts, top)])
        upper = np.array([proportion_confint(c[t], n, alpha=2 * ALPHA, method="beta")[1] for c, t in zip(counts, top)])
        answers[active[lower > P0]] = top[lower > P0]
        active = active[upper < P0]
    assert wrong_rate(answers, truth) > LIMIT


def test_predict_needs_p0_of_at_least_one_half():
    f, images, indices = streams(CASES["g abstains: no level above p0"][0])
    with pytest.raises(ValueError, match="cascade PREDICT needs 1/2 <= p0 < 1"):
        Engine(f, 3, SIGMAS, 0.4).predict(images[:1], indices[:1], 100, ALPHA)
    with pytest.raises(ValueError, match="cascade PREDICT needs 1/2 <= p0 < 1"):
        MultiScaleSmooth(f, 3, SIGMAS, 0.4).predict(torch.full((1, 1, 1), 0.5), 100, ALPHA, 100)
