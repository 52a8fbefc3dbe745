"""Analytic case: a linear binary classifier sign(w·x + b) smoothed with N(0, σ²I) has
P(class of x) = Φ(d/σ) with d = |w·x + b| / ‖w‖, so its exact certified radius is d. Certified radii must
never exceed d and must approach it as n grows."""

import numpy as np
import pytest
import torch

from msds_lightning.smoothing import Smooth, SmoothingEngine


class LinearBinary(torch.nn.Module):
    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x):
        score = (x.flatten(1) * self.w.flatten()).sum(1) + self.b
        return torch.stack([-score, score], dim=1)


def make_case(d: float, seed: int, side: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 4, 4, generator=g)
    w = torch.randn(1, 4, 4, generator=g)
    b = side * d * float(w.norm()) - float((w * x).sum())  # signed distance of x to the boundary = side·d
    return LinearBinary(w, b), x


CASES = [
    (sigma, d) for sigma in (0.25, 0.5, 1.0) for d in (0.1 * sigma, 0.5 * sigma, 1.0 * sigma, 1.8 * sigma)
]


@pytest.mark.parametrize("sigma,d", CASES)
def test_smooth_radius_sound_and_tight(sigma, d):
    gaps = []
    for i, n in enumerate((1000, 10000, 100000)):
        f, x = make_case(d, seed=i, side=1 if i % 2 == 0 else -1)
        torch.manual_seed(100 + i)
        prediction, radius = Smooth(f, 2, sigma).certify(x, 100, n, 0.001, 20000)
        expected_class = 1 if i % 2 == 0 else 0
        if prediction == -1:
            gaps.append(d)
            continue
        assert prediction == expected_class
        assert radius <= d * (1 + 1e-6) + 1e-9, f"unsound: radius {radius} > exact {d} (n={n})"
        gaps.append(d - radius)
    assert gaps[2] < gaps[0]  # tighter with more samples
    assert gaps[2] < 0.12 * sigma  # n = 1e5 is close to exact


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_engine_radius_sound_and_tight(sigma):
    ds = np.array([0.1, 0.5, 1.0, 1.8]) * sigma
    models_inputs = [make_case(d, seed=7 + k) for k, d in enumerate(ds)]
    for n in (1000, 100000):
        for k, ((f, x), d) in enumerate(zip(models_inputs, ds)):
            engine = SmoothingEngine(f, 2, sigma, seed=3, batch_size=25000)
            cert = engine.certify(x[None], [k], 100, n, 0.001)[0]
            if cert.prediction != -1:
                assert cert.prediction == 1 and cert.radius <= d * (1 + 1e-6) + 1e-9
            if n == 100000:
                assert cert.prediction == 1 and d - cert.radius < 0.12 * sigma
