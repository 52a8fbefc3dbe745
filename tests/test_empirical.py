"""The official MSDS empirical prediction (predict_mdds.py; no guarantee): the pure rule against hand
computations, and Engine.predict_empirical against the pure rule on the counts it recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msds_lightning.smoothing import (
    EMPIRICAL_PREDICTION,
    PREDICTION,
    Engine,
    empirical_cascade_prediction,
)

from .test_multiscale import ChosenProbabilities

# 10 draws per level, 3 classes; level 0 below p0 = 1/2 (4 < 5), level 1 fires with class 0 (5 >= 5)
FALL_THEN_FIRE = [[4, 3, 3], [5, 3, 2], [0, 0, 10]]
# the firing level's prior: 0.9 * [0.5, 0.3, 0.2] + 0.1 / 3; log(prior_0 / prior_1) = log(1.45 / 0.91)
GAP = math.log((0.45 + 0.1 / 3) / (0.27 + 0.1 / 3))  # 0.4659: a clean logit margin above it wins


def decide(counts, logits, **kw):
    d = empirical_cascade_prediction(counts, logits, **kw)
    return d.prediction, d.fired, d.level, d.stage


def test_a_level_fires_and_the_clean_logits_are_mixed_with_its_counts():
    assert GAP == pytest.approx(0.46588, abs=1e-5)
    # class 1 leads the clean logits by less than the prior's margin: the firing level's class 0 wins
    assert decide(FALL_THEN_FIRE, [0.0, GAP - 0.01, 0.0]) == (0, 0, 1, 1)
    # by more: the clean classifier overrides the class that fired
    assert decide(FALL_THEN_FIRE, [0.0, GAP + 0.01, 0.0]) == (1, 0, 1, 1)
    # levels below the one that fired are not read (level 2 would say class 2)
    assert decide(FALL_THEN_FIRE[:2], [0.0, GAP + 0.01, 0.0]) == (1, 0, 1, 1)


def test_the_top_level_fires_and_even_a_unanimous_level_can_be_overridden():
    # prior 0.9 * [0, 1, 0] + 0.1 / 3: log(prior_1 / prior_0) = log(28) = 3.332
    margin = math.log(28)
    assert decide([[0, 10, 0], [10, 0, 0]], [margin - 0.01, 0, 0]) == (1, 1, 0, 0)
    assert decide([[0, 10, 0], [10, 0, 0]], [margin + 0.01, 0, 0]) == (0, 1, 0, 0)


def test_no_level_fires_falls_back_to_the_clean_classifier():
    d = empirical_cascade_prediction([[4, 3, 3]] * 3, [0.0, math.log(3), 0.0])
    assert (d.prediction, d.fired, d.level, d.stage, d.clean) == (1, -1, -1, 2, 1)
    assert d.confidence == pytest.approx(0.6, abs=1e-12)  # softmax [1, 3, 1] / 5: the official c_max


def test_threshold_is_top_count_at_least_p0_times_n():
    assert decide([[4, 3, 2]], [0, 0, 1])[2] == -1  # 4 < 0.5 * 9
    assert decide([[5, 2, 2]], [0, 0, 1])[2] == 0  # 5 >= 4.5
    assert decide([[6, 2, 2]], [0, 0, 1], p0=0.7)[2] == -1  # any p0 in (0, 1): 6 < 7
    assert decide([[7, 2, 1]], [0, 0, 1], p0=0.7)[2] == 0


def test_uniform_weight_extremes_and_the_clip():
    # w = 1: the prior is uniform, the clean classifier decides
    assert decide([[0, 10, 0]], [0, 0, 0.1], unif_w=1.0)[0] == 2
    # w = 0: zero frequencies are clipped to 1e-20 (log = -46.05) instead of -inf
    assert decide([[0, 10, 0]], [46.0, 0, 0], unif_w=0.0)[0] == 1
    assert decide([[0, 10, 0]], [46.1, 0, 0], unif_w=0.0)[0] == 0
    # w = 0.5 by hand: prior [0.5 * 0.6 + 0.5 / 3, 0.5 * 0.4 + 0.5 / 3, 0.5 / 3]
    prior = np.array([0.3 + 1 / 6, 0.2 + 1 / 6, 1 / 6])
    assert math.log(prior[0] / prior[1]) == pytest.approx(0.2412, abs=1e-4)
    for margin, answer in [(0.2, 0), (0.3, 1)]:
        logits = np.array([0.0, margin, 0.0])
        assert decide([[6, 4, 0]], logits, unif_w=0.5)[0] == int(np.argmax(logits + np.log(prior))) == answer


def test_ties_go_to_the_lowest_class():
    assert decide([[5, 5, 0]], [0, 0, 0]) == (0, 0, 0, 0)  # tied counts: the first fires; tied scores: 0
    assert decide([[5, 5, 0]], [0, 1e-9, 0])[0] == 1
    assert decide([[3, 3, 3]], [2.0, 2.0, 1.0])[:2] == (0, -1)  # tied clean logits, nothing fired


def test_no_veto_from_higher_levels():
    # level 0 does not fire (99 < 100) but class 1 may well lie above p0 there: the official off-class veto,
    # had it worked, would abstain on level 1's class 0 and answer with the clean logits (class 2 here).
    # The code's actual behaviour, reproduced: the veto's list is never filled, level 1's answer stands.
    from msds_lightning.smoothing import off_class_upper_bound

    higher = [2, 99, 99]
    assert off_class_upper_bound(np.array(higher), 0, 0.001 / 2) > 0.5  # a live veto would trigger
    assert decide([higher, [200, 0, 0]], [0.0, 0.0, 0.3]) == (0, 0, 1, 1)


@pytest.mark.parametrize(
    "counts,logits,kw,word",
    [
        ([[1, 2]], [0, 0, 0], {"num_classes": 2}, "entries"),
        ([], [0, 0], {}, "at least one level"),
        ([[0, 0]], [0, 0], {}, "at least one level"),
        ([[1, 2]], [0, 0], {"unif_w": 1.5}, "unif_w"),
        ([[1, 2]], [0, 0], {"p0": 1.0}, "p0"),
    ],
)
def test_invalid_inputs(counts, logits, kw, word):
    with pytest.raises(ValueError, match=word):
        empirical_cascade_prediction(counts, logits, **kw)


def oracle(counts_per_level, logits, p0, w):
    """The rule written out once more, level loop first, as the official script is structured."""
    chosen = None
    for counts in counts_per_level:
        counts = np.asarray(counts)
        if counts[counts.argmax()] >= p0 * counts.sum():
            chosen = counts / counts.sum()
            break
    scores = np.asarray(logits, dtype=np.float64)
    if chosen is not None:
        scores = scores + np.log(((1 - w) * chosen + w * (1.0 / len(chosen))).clip(min=1e-20))
    return int(scores.argmax())


def test_random_cases_equal_the_oracle():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 6))
        levels = [rng.multinomial(20, rng.dirichlet(np.full(k, 0.5))) for _ in range(int(rng.integers(1, 4)))]
        logits, w = rng.normal(size=k) * 2, float(rng.choice([0.0, 0.1, 0.5]))
        assert empirical_cascade_prediction(levels, logits, 0.5, w).prediction == oracle(
            levels, logits, 0.5, w
        )


SIGMAS = (1.0, 0.5, 0.25)


def test_engine_equals_the_pure_rule_on_its_recorded_counts():
    # top level near p0 (fires for some streams), then a level near p0, then a clear one
    f = ChosenProbabilities({1.0: [0.36, 0.32, 0.32], 0.5: [0.1, 0.45, 0.45], 0.25: [0.1, 0.1, 0.8]})
    images, indices = torch.full((12, 1, 1, 1), 0.5), list(range(100, 112))
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    engine = Engine(f, 3, list(SIGMAS), batch_size=128)
    results = engine.predict_empirical(images, indices, 20, logits, 0.1)
    assert {r.stage for r in results} == {0, 1, 2}  # every outcome occurs
    for k, r in enumerate(results):
        d = empirical_cascade_prediction(r.counts, logits[k].double().numpy(), 0.5, 0.1, 3)
        assert (r.prediction, r.fired, r.level, r.stage, r.clean) == (
            d.prediction,
            d.fired,
            d.level,
            d.stage,
            d.clean,
        )
        assert r.confidence == d.confidence and r.samples == 20 * len(r.counts) and r.sigma == SIGMAS[r.stage]
        assert len(r.counts) == r.stage + 1  # sampled down to the firing level, not below
        for stage, counts in enumerate(r.counts):  # its own noise phase, every level the same δ
            own = engine.counts(
                images[k : k + 1], [indices[k]], 20, (EMPIRICAL_PREDICTION,), sigma=SIGMAS[stage]
            )
            assert tuple(own[0].tolist()) == counts
    other = engine.counts(images[:4], indices[:4], 20, (PREDICTION,), sigma=1.0)
    assert [tuple(c) for c in other.tolist()] != [r.counts[0] for r in results[:4]]
    # batch size and batch-mates do not change an image's answer
    again = Engine(f, 3, list(SIGMAS), batch_size=7).predict_empirical(
        images[5:], indices[5:], 20, logits[5:]
    )
    assert again == results[5:]


def test_engine_checks_the_clean_logits_shape():
    engine = Engine(ChosenProbabilities({1.0: [0.5, 0.5]}), 2, 1.0, batch_size=8)
    with pytest.raises(ValueError, match="clean_logits"):
        engine.predict_empirical(torch.full((2, 1, 1, 1), 0.5), [0, 1], 8, torch.zeros(2, 3))


def test_predict_module_modes():
    from msds_lightning.modules import PredictModule

    from .conftest import TemplateClassifier

    f = TemplateClassifier()
    with pytest.raises(ValueError, match="mode"):
        PredictModule(f, sigma=[0.25, 0.5], mode="empirical")
    with pytest.raises(ValueError, match="unif_w"):
        PredictModule(f, sigma=[0.25, 0.5], mode="official_empirical", unif_w=2.0)
    with pytest.raises(ValueError, match="p0"):  # the sound rule needs p0 >= 1/2 ...
        PredictModule(f, sigma=[0.25, 0.5], p0=0.4)
    # ... the official empirical rule takes any p0, and plain Gaussian smoothing (no denoiser)
    module = PredictModule(f, sigma=[0.25, 0.5], p0=0.4, n=30, batch_size=64, mode="official_empirical")
    images = torch.stack([f.image(c, s) for c, s in [(3, 0.6), (1, 2.0), (7, 0.1)]])
    rows = module.predict_step((images, torch.tensor([3, 1, 0]), torch.tensor([5, 6, 7])), 0)
    assert [set(r) for r in rows] == [{"idx", "label", "predict", "seconds", *module.extra_columns}] * 3
    for row, x in zip(rows, images):
        levels = module.engine.predict_empirical(x[None], [row["idx"]], 30, f(x[None]))[0].counts
        d = empirical_cascade_prediction(levels, f(x[None])[0].double().numpy(), 0.4, 0.1)
        assert (row["predict"], row["pred0"], row["level"], row["clean"]) == (
            d.prediction,
            d.fired,
            d.level,
            d.clean,
        )
