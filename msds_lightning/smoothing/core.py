"""Randomized smoothing with Gaussian noise (Cohen, Rosenfeld & Kolter, ICML 2019).

``Smooth`` is a drop-in replacement for locuslab/smoothing's ``core.Smooth``: the same constructor, the
same ``certify``/``predict`` signatures and return values, ``ABSTAIN = -1``, and the same random stream.

Reproducibility guarantee
-------------------------
With the same global seed (``torch.manual_seed``) and the same device, ``Smooth.certify`` and
``Smooth.predict`` return predictions and radii identical (float ``==``) to the reference algorithm,
because they draw the same random numbers in the same order:

* noise comes from the global generator of ``x``'s device via ``torch.randn_like`` on a batch of
  ``min(batch_size, remaining)`` copies of ``x``, scaled by σ, then added to the copies (float32);
* batches are full first, the remainder last; the n0 selection samples are drawn before, and apart
  from, the n estimation samples (the selection samples are never reused);
* the selected class is the first maximum of the selection counts (ties go to the lowest class);
* the lower bound is the one-sided Clopper–Pearson bound (exactly statsmodels'
  ``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]``) and the radius σ·Φ⁻¹(p_lower).

The reference hard-codes ``device='cuda'``; this class uses ``x``'s device, which is the same stream when
``x`` lives on the GPU. For throughput (many images per forward, per-image noise streams independent of
batch size and process count) use :class:`msds_lightning.smoothing.engine.Engine`.

Units: ``x`` is a single image [C,H,W] with pixels in [0,1]; σ and the radius are l2 distances in the
same [0,1] pixel units. Normalisation belongs inside ``base_classifier`` (noise is added before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .adaptive import SequentialPlan, fixed_plan
from .bounds import binomial_test_pvalue, gaussian_radius
from .checks import check_alpha, check_certify_call, check_count, check_images, check_num_classes, check_sigma
from .outcome import ABSTAIN, Outcome


@dataclass(frozen=True)
class Certificate:
    """Outcome of one CERTIFY call, with the statistics behind it.

    ``prediction`` is the certified class or ``ABSTAIN``; ``radius`` the l2 radius in [0,1] pixel units
    (0.0 on abstention); ``n_a`` the estimation count of the selected class ``selected`` out of ``n``;
    ``p_lower`` its one-sided (1 − α) Clopper–Pearson lower bound.
    """

    prediction: int
    radius: float
    selected: int
    n_a: int
    n: int
    p_lower: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def decide(
    selected: int, n_a: int, n: int, alpha: float, sigma: float,
    plan: SequentialPlan | None = None, checkpoint: int = -1,
) -> Certificate | None:  # fmt: skip
    """Cohen's decision from counts (for :class:`Smooth` and the engine alike): abstain if p_lower < 1/2,
    else certify radius σ·Φ⁻¹(p_lower).

    Only a strict ``<`` abstains (p_lower == 1/2 certifies radius 0), as in the reference. With an adaptive
    ``plan``, n is the size of checkpoint ``checkpoint`` and its rules apply (:meth:`SequentialPlan.steps`:
    bound at α_k, early certification or abstention); ``None`` then means "draw up to the next checkpoint".
    """
    plan = plan or fixed_plan(n, alpha)
    outcome, p_lower = plan.step(checkpoint % len(plan.checkpoints), n_a, sigma)
    if outcome == Outcome.CONTINUE:
        return None
    if outcome == Outcome.ABSTAIN:
        return Certificate(ABSTAIN, 0.0, selected, n_a, n, p_lower)
    return Certificate(selected, float(gaussian_radius(p_lower, sigma)), selected, n_a, n, p_lower)


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I)."""

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float):
        """
        :param base_classifier: maps a batch [B,C,H,W] of [0,1] pixels (plus noise) to logits [B,num_classes]
        :param num_classes: number of classes (>= 2)
        :param sigma: noise std in [0,1] pixel units (> 0)
        """
        self.base_classifier = base_classifier
        self.num_classes = check_num_classes(num_classes)
        self.sigma = check_sigma(sigma)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        """Monte-Carlo CERTIFY: ``(prediction, radius)``, or ``(ABSTAIN, 0.0)``.

        With probability at least 1 − α over the noise, the result either abstains or equals g(x), and g is
        then constant within the returned l2 radius around x.
        """
        cert = self.certify_with_details(x, n0, n, alpha, batch_size)
        return cert.prediction, cert.radius

    def certify_with_details(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
    ) -> Certificate:
        """``certify`` returning the full :class:`Certificate` (counts and bound included)."""
        n0, n, alpha, batch_size = check_certify_call(x, n0, n, alpha, batch_size)
        self.base_classifier.eval()
        counts_selection = self._sample_noise(x, n0, batch_size)
        selected = int(counts_selection.argmax())  # first maximum: ties go to the lowest class
        counts_estimation = self._sample_noise(x, n, batch_size)
        return decide(selected, int(counts_estimation[selected]), n, alpha, self.sigma)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Monte-Carlo PREDICT: the top class if a two-sided binomial test of the top two counts rejects
        equality at level α, else ``ABSTAIN``. Returns g(x) with probability >= 1 − α when it answers."""
        check_images(x)
        n, alpha, batch_size = check_count(n, "n"), check_alpha(alpha), check_count(batch_size, "batch_size")
        self.base_classifier.eval()
        counts = self._sample_noise(x, n, batch_size)
        return predict_from_counts(counts, alpha)

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        return reference_counts(self.base_classifier, x, num, self.sigma, self.num_classes, batch_size)


def reference_counts(
    base_classifier, x: torch.Tensor, num: int, sigma: float, num_classes: int, batch_size: int
) -> np.ndarray:
    """Class counts of f(x + δ) over ``num`` draws from the global generator of x's device, in batches of
    ``min(batch_size, remaining)`` copies of x: the reference's random stream."""
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            this_batch = min(batch_size, remaining)
            remaining -= this_batch
            batch = x.repeat((this_batch, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            labels = predicted_labels(base_classifier, batch + noise, num_classes)
            counts += torch.bincount(labels, minlength=num_classes)
    return counts.cpu().numpy()  # one host sync per call


def predicted_labels(base_classifier, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """argmax labels of ``base_classifier(noisy)``, checking that it returns logits [B, num_classes]."""
    logits = base_classifier(noisy)
    if logits.dim() != 2 or logits.shape != (noisy.shape[0], num_classes):
        raise ValueError(
            f"base_classifier must return logits of shape [batch, num_classes] = [{noisy.shape[0]}, "
            f"{num_classes}], got {tuple(logits.shape)}"
        )
    return logits.argmax(1)


def predict_from_counts(counts: np.ndarray, alpha: float) -> int:
    """Cohen's PREDICT decision on a count vector: top class, or ABSTAIN when the binomial test of the two
    largest counts has p-value > α (a tie for first place always abstains)."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    top, second = int(order[0]), int(order[1])
    if binomial_test_pvalue(counts[top], counts[second]) > alpha:
        return ABSTAIN
    return top


def _eval(module) -> None:
    if isinstance(module, torch.nn.Module):
        module.eval()
