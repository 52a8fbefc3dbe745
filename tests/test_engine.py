import dataclasses
import math

import pytest
import torch

from msds_lightning.smoothing import ESTIMATION, SELECTION, Smooth, SmoothingEngine, sample_counts

from .conftest import TemplateClassifier

F = TemplateClassifier()
IMAGES = torch.stack([F.image(c, s) for c, s in [(3, 0.6), (1, 1.0), (7, 2.0), (0, 4.0), (5, 0.3)]])
INDICES = [11, 3, 250, 7, 42]


def counts(batch_size, images=IMAGES, indices=INDICES, seed=0, num=1000, stream=(ESTIMATION,)):
    return sample_counts(F, images, indices, num, 0.5, 10, seed=seed, stream=stream, batch_size=batch_size)


def test_counts_independent_of_batch_size():
    reference = counts(1000)
    assert reference.sum(1).tolist() == [1000] * len(INDICES)
    for batch_size in (7, 64, 999, 5000):
        assert torch.equal(counts(batch_size), reference), batch_size


def test_counts_independent_of_batch_mates_and_order():
    together = counts(64)
    for k in range(len(INDICES)):
        alone = counts(64, IMAGES[k : k + 1], INDICES[k : k + 1])
        assert torch.equal(alone[0], together[k])
    reversed_ = counts(64, IMAGES.flip(0), INDICES[::-1])
    assert torch.equal(reversed_.flip(0), together)


def test_streams_seed_and_index_change_the_noise():
    base = counts(64)
    assert not torch.equal(counts(64, seed=1), base)
    assert not torch.equal(counts(64, stream=(SELECTION,)), base)
    assert not torch.equal(counts(64, indices=[i + 1 for i in INDICES]), base)


def test_certificates_independent_of_batch_size_and_consistent_with_counts():
    results = {}
    for batch_size in (7, 64, 1000):
        engine = SmoothingEngine(F, 10, 0.5, seed=5, batch_size=batch_size)
        results[batch_size] = engine.certify(IMAGES, INDICES, 100, 2000, 0.001)
    assert results[7] == results[64] == results[1000]
    certs = results[64]
    assert {c.prediction for c in certs} - {-1}, "some image must certify"
    assert any(c.prediction == -1 for c in certs), "some image must abstain"
    for c in certs:
        assert c.n == 2000 and (c.prediction == -1) == (c.p_lower < 0.5)
        if c.prediction != -1:
            assert math.isclose(
                c.radius,
                0.5
                * torch.distributions.Normal(0, 1).icdf(torch.tensor(c.p_lower, dtype=torch.float64)).item(),
                rel_tol=1e-9,
            )


def test_predict_independent_of_batch_size():
    a = SmoothingEngine(F, 10, 0.25, seed=1, batch_size=13).predict(IMAGES, INDICES, 500, 0.001)
    b = SmoothingEngine(F, 10, 0.25, seed=1, batch_size=500).predict(IMAGES, INDICES, 500, 0.001)
    assert a == b and a[3] == 0


def test_engine_agrees_with_smooth_on_clear_images():
    engine = SmoothingEngine(F, 10, 0.25, seed=0, batch_size=1000).certify(IMAGES, INDICES, 100, 10000, 0.001)
    for k, cert in enumerate(engine):
        torch.manual_seed(k)
        prediction, radius = Smooth(F, 10, 0.25).certify(IMAGES[k], 100, 10000, 0.001, 1000)
        assert prediction == cert.prediction
        assert abs(radius - cert.radius) < 0.05  # same distribution, different streams


X = torch.full((3, 8, 8), 0.5)
BAD_SMOOTH_CALLS = [
    ("sigma", lambda: Smooth(F, 10, 0.0)),
    ("sigma", lambda: Smooth(F, 10, -0.25)),
    ("sigma", lambda: Smooth(F, 10, float("nan"))),
    ("num_classes", lambda: Smooth(F, 1, 0.25)),
    ("alpha", lambda: Smooth(F, 10, 0.25).certify(X, 10, 100, 0.0, 10)),
    ("alpha", lambda: Smooth(F, 10, 0.25).certify(X, 10, 100, 1.0, 10)),
    ("n0", lambda: Smooth(F, 10, 0.25).certify(X, 0, 100, 0.001, 10)),
    ("n", lambda: Smooth(F, 10, 0.25).certify(X, 10, 0, 0.001, 10)),
    ("n", lambda: Smooth(F, 10, 0.25).predict(X, 2.5, 0.001, 10)),
    ("batch_size", lambda: Smooth(F, 10, 0.25).certify(X, 10, 100, 0.001, 0)),
    ("single image", lambda: Smooth(F, 10, 0.25).certify(X[None], 10, 100, 0.001, 10)),
    ("[0,1]", lambda: Smooth(F, 10, 0.25).certify(X * 2.1, 10, 100, 0.001, 10)),
    ("[0,1]", lambda: Smooth(F, 10, 0.25).certify(X - 0.6, 10, 100, 0.001, 10)),
    ("floating", lambda: Smooth(F, 10, 0.25).certify((X * 255).to(torch.uint8), 10, 100, 0.001, 10)),
    ("logits", lambda: Smooth(F, 11, 0.25).certify(X, 10, 100, 0.001, 10)),
]
BAD_ENGINE_CALLS = [
    ("sigma", lambda: SmoothingEngine(F, 10, 0)),
    ("seed", lambda: SmoothingEngine(F, 10, 0.25, seed=-1)),
    ("batch_size", lambda: SmoothingEngine(F, 10, 0.25, batch_size=0)),
    ("noise_block", lambda: SmoothingEngine(F, 10, 0.25, noise_block=0)),
    ("alpha", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES, INDICES, 10, 100, 1.5)),
    ("n0", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES, INDICES, -1, 100, 0.001)),
    ("n", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES, INDICES, 10, 0, 0.001)),
    ("B,C,H,W", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES[0], INDICES, 10, 100, 0.001)),
    ("[0,1]", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES + 1, INDICES, 10, 100, 0.001)),
    ("indices", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES, INDICES[:2], 10, 100, 0.001)),
    ("indices", lambda: SmoothingEngine(F, 10, 0.25).certify(IMAGES, [-1, 0, 1, 2, 3], 10, 100, 0.001)),
]


@pytest.mark.parametrize("word,call", BAD_SMOOTH_CALLS + BAD_ENGINE_CALLS)
def test_invalid_arguments_raise_clear_errors(word, call):
    with pytest.raises(ValueError, match=word.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_accelerated_forward_rejects_unknown_options():
    from msds_lightning.smoothing import AcceleratedForward

    with pytest.raises(ValueError, match="autocast"):
        AcceleratedForward(torch.nn.Identity(), autocast="int8")
    with pytest.raises(ValueError, match="compile"):
        AcceleratedForward(torch.nn.Identity(), compile=3)


def test_bf16_autocast_changes_numerics_not_the_procedure():
    """bf16 logits (returned as fp32) still give valid counts; on a margin-free input the labels agree."""
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(2, 1, 4, 4)
    fp32 = SmoothingEngine(f, 3, 0.1, batch_size=64).counts(x, [0, 1], 200, (1,))
    bf16 = SmoothingEngine(f, 3, 0.1, batch_size=64, autocast="bf16").counts(x, [0, 1], 200, (1,))
    assert bf16.sum(1).tolist() == [200, 200]
    assert (fp32 - bf16).abs().sum() <= 0.1 * 400  # same classifier up to rounding near the boundaries


@pytest.mark.slow
def test_compiled_engine_counts_equal_eager():
    """torch.compile with padded fixed shapes (slow: compiles on first call) gives the eager counts."""
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(3, 1, 4, 4)
    eager = SmoothingEngine(f, 3, 0.25, batch_size=128).certify(x, [0, 1, 2], 50, 300, 0.01)
    compiled = SmoothingEngine(f, 3, 0.25, batch_size=128, compile=True).certify(x, [0, 1, 2], 50, 300, 0.01)
    assert [(c.selected, c.n_a) for c in eager] == [(c.selected, c.n_a) for c in compiled]


# --- one engine over a tuple of σ ---------------------------------------------------------------------
# Certificates (prediction, radius, selected, n_a, n, p_lower) of SmoothingEngine(F, 10, 0.5, seed=5,
# batch_size=64) on IMAGES, recorded before the single-σ and multi-σ engines became one.
RECORDED_FIXED = [
    (-1, 0.0, 6, 603, 2000, 0.2702495558158309),
    (1, 0.22352784978129292, 1, 1410, 2000, 0.6725825780341764),
    (7, 0.9990444667082888, 7, 1974, 2000, 0.9771464903469501),
    (0, 1.350916479018628, 0, 2000, 2000, 0.9965520801347684),
    (-1, 0.0, 6, 821, 2000, 0.3766054921854249),
]
RECORDED_ADAPTIVE = [  # sampling=AdaptiveSampling(first=200, radii=(0.0, 0.25, 0.5))
    (-1, 0.0, 6, 64, 200, 0.20720239078251376),
    (1, 0.2205918087584141, 1, 1410, 2000, 0.670459963835752),
    (7, 0.71700962842016, 7, 197, 200, 0.9242166161974088),
    (0, 0.8533370753975255, 0, 200, 200, 0.9560586828280303),
    (-1, 0.0, 6, 72, 200, 0.24195510262323072),
]


def test_one_level_engine_reproduces_the_former_single_sigma_engine_bitwise():
    from msds_lightning.smoothing import Engine, IgnoreSigma
    from msds_lightning.smoothing.adaptive import AdaptiveSampling

    adaptive = AdaptiveSampling(first=200, radii=(0.0, 0.25, 0.5))
    for sampling, recorded in ((None, RECORDED_FIXED), (adaptive, RECORDED_ADAPTIVE)):
        for engine in (
            Engine(IgnoreSigma(F), 10, (0.5,), seed=5, batch_size=64, sampling=sampling),
            Engine(IgnoreSigma(F), 10, 0.5, seed=5, batch_size=1000, sampling=sampling),
            SmoothingEngine(F, 10, 0.5, seed=5, batch_size=64, sampling=sampling),
        ):
            certs = engine.certify(IMAGES, INDICES, 100, 2000, 0.001)
            assert [dataclasses.astuple(c) for c in certs] == recorded


def test_engine_takes_f_of_x_and_sigma_and_ignore_sigma_wraps_a_sigma_free_classifier():
    from msds_lightning.smoothing import Engine, IgnoreSigma

    seen = []

    def f(x, sigma):
        seen.append(sigma)
        return F(x)

    wrapped = IgnoreSigma(F)
    x = IMAGES[:2]
    assert torch.equal(wrapped(x, 0.25), F(x)) and torch.equal(wrapped(x), F(x))
    a = Engine(f, 10, [0.5, 0.25], seed=1, batch_size=64).predict(IMAGES, INDICES, 300, 0.001)
    b = Engine(wrapped, 10, [0.25, 0.5], seed=1, batch_size=64).predict(IMAGES, INDICES, 300, 0.001)
    assert a == b and set(seen) <= {0.5, 0.25} and seen[0] == 0.5  # the highest σ first


@pytest.mark.parametrize(
    "sigmas,kwargs,word",
    [(0, {}, "sigma must be finite and > 0"), (float("inf"), {}, "sigma must be finite"),
     (True, {}, "sigma must be a positive number"), ([0.5, -1], {}, "sigmas must be finite"),
     ([], {}, "non-empty"), ([0.5, 0.5], {}, "distinct"), ([0.5, 0.25], {"cascade": False}, "Cohen's rule"),
     ([0.5], {"p0": 1.0}, "p0")],
)  # fmt: skip
def test_engine_rejects_invalid_sigma_with_a_clear_message(sigmas, kwargs, word):
    from msds_lightning.smoothing import Engine, IgnoreSigma

    with pytest.raises(ValueError, match=word):
        Engine(IgnoreSigma(F), 10, sigmas, **kwargs)


def test_sigma_is_checked_once_per_certifier(monkeypatch):
    import msds_lightning.smoothing.engine as engine_module
    from msds_lightning.modules.certify import CertifyModule

    calls = []
    check = engine_module.check_sigmas
    monkeypatch.setattr(engine_module, "check_sigmas", lambda s: calls.append(s) or check(s))
    module = CertifyModule(F, sigma=[0.25, 0.5], n=100)
    assert calls == [[0.25, 0.5]] and module.sigmas == (0.5, 0.25) and module.engine.cascade
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        CertifyModule(F, sigma=-0.25)
    single = CertifyModule(F, sigma=0.25, n=100)
    assert not single.engine.cascade and single.extra_columns[0] == "sigma"
    assert CertifyModule(F, sigma=[0.25], n=100).engine.cascade  # a list, even of one σ, is a cascade
    assert dict(single.hparams)["sigma"] == 0.25 and "classifier" not in single.hparams
