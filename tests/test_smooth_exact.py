"""Exactness of ``Smooth`` against the published algorithm (locuslab/smoothing core.py), re-written here
from the paper's pseudo-code and the reference's documented behaviour: global RNG, batches of
min(batch, remaining) copies, randn_like·σ, numpy counting, statsmodels Clopper–Pearson, selection before
estimation, first-max tie rule, binomial test for PREDICT."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from msds_lightning.smoothing import Smooth

from .conftest import TemplateClassifier


class ReferenceSmooth:
    ABSTAIN = -1

    def __init__(self, f, num_classes, sigma, reuse_selection=False):
        self.f, self.num_classes, self.sigma = f, num_classes, sigma
        self.reuse_selection = reuse_selection  # a deliberately wrong variant

    def _counts(self, x, num, batch_size):
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(int(np.ceil(num / batch_size))):
                this = min(batch_size, num)
                num -= this
                batch = x.repeat((this, 1, 1, 1))
                noise = torch.randn_like(batch) * self.sigma
                for p in self.f(batch + noise).argmax(1).cpu().numpy():
                    counts[p] += 1
            return counts

    def certify(self, x, n0, n, alpha, batch_size):
        self.f.eval()
        c0 = self._counts(x, n0, batch_size)
        c_hat = c0.argmax().item()
        counts = c0 if self.reuse_selection else self._counts(x, n, batch_size)
        n_total = n0 if self.reuse_selection else n
        p_lower = proportion_confint(counts[c_hat].item(), n_total, alpha=2 * alpha, method="beta")[0]
        if p_lower < 0.5:
            return self.ABSTAIN, 0.0
        return c_hat, self.sigma * norm.ppf(p_lower)

    def predict(self, x, n, alpha, batch_size):
        self.f.eval()
        counts = self._counts(x, n, batch_size)
        top2 = counts.argsort()[::-1][:2]
        c1, c2 = counts[top2[0]], counts[top2[1]]
        if binomtest(c1, c1 + c2, p=0.5).pvalue > alpha:
            return self.ABSTAIN
        return top2[0]


F = TemplateClassifier()
IMAGES = [F.image(3, s) for s in (0.6, 1.0, 2.0, 4.0)]  # from abstaining to large radii


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("n0,n,batch", [(100, 1000, 400), (100, 1000, 37), (64, 2000, 1000), (10, 5000, 333)])
def test_certify_identical_to_reference(sigma, n0, n, batch):
    ours, ref = Smooth(F, 10, sigma), ReferenceSmooth(F, 10, sigma)
    outcomes = set()
    for seed, x in enumerate(IMAGES):
        torch.manual_seed(seed)
        expected = ref.certify(x, n0, n, 0.001, batch)
        torch.manual_seed(seed)
        got = ours.certify(x, n0, n, 0.001, batch)
        assert got[0] == expected[0] and got[1] == expected[1]  # float ==, not approx
        outcomes.add("abstain" if got[0] == -1 else ("large" if got[1] > sigma else "small"))
    if sigma == 0.25:  # the grid really covers abstentions, small and large radii
        assert outcomes == {"abstain", "small", "large"}


@pytest.mark.parametrize("sigma", [0.25, 1.0])
@pytest.mark.parametrize("n,batch", [(100, 30), (1000, 400), (2000, 2000)])
def test_predict_identical_to_reference(sigma, n, batch):
    ours, ref = Smooth(F, 10, sigma), ReferenceSmooth(F, 10, sigma)
    for seed, x in enumerate(IMAGES):
        torch.manual_seed(seed)
        expected = ref.predict(x, n, 0.001, batch)
        torch.manual_seed(seed)
        assert ours.predict(x, n, 0.001, batch) == expected


def test_harness_catches_a_wrong_variant():
    """Re-using the selection samples for estimation is a classic bug; the comparison must see it."""
    ours, wrong = Smooth(F, 10, 0.25), ReferenceSmooth(F, 10, 0.25, reuse_selection=True)
    differs = False
    for seed, x in enumerate(IMAGES):
        torch.manual_seed(seed)
        a = wrong.certify(x, 100, 1000, 0.001, 100)
        torch.manual_seed(seed)
        differs |= a != ours.certify(x, 100, 1000, 0.001, 100)
    assert differs


def test_selection_ties_go_to_lowest_class():
    class Constant(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 4)
            logits[:, 1] = logits[:, 2] = 1.0  # argmax picks 1 on every sample
            return logits

    assert Smooth(Constant(), 4, 0.5).certify(torch.full((3, 4, 4), 0.5), 10, 100, 0.001, 7)[0] == 1


def test_certify_details_match_pair():
    smooth = Smooth(F, 10, 0.5)
    torch.manual_seed(1)
    cert = smooth.certify_with_details(IMAGES[2], 100, 1000, 0.001, 250)
    torch.manual_seed(1)
    assert smooth.certify(IMAGES[2], 100, 1000, 0.001, 250) == (cert.prediction, cert.radius)
    assert cert.n == 1000 and 0 <= cert.n_a <= 1000
