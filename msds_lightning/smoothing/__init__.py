"""Randomized-smoothing certification core: pure torch + scipy/statsmodels, no Lightning.

* :class:`Smooth` — Cohen et al.'s CERTIFY/PREDICT, same random stream as locuslab/smoothing.
* :class:`MultiScaleSmooth` — cascaded smoothing over several σ (MSDS), same stream as the official code.
* :class:`Engine` — batched, per-image-seeded certification over one σ (Cohen's rule) or several (the
  cascade), for throughput and distributed runs; base classifier ``f(x_noisy, sigma)``, and
  :class:`IgnoreSigma` for a classifier without σ. ``SmoothingEngine`` (f(x), one σ) and
  ``MultiScaleEngine`` are the former names, kept as thin subclasses.
* :class:`AdaptiveSampling` — adaptive (sequential) sampling for the engine: same (1 − α) guarantee,
  far fewer samples (union bound over fixed checkpoints).
* Clopper–Pearson bounds and the Gaussian radius in :mod:`.bounds`; the decisions' vocabulary
  (:class:`Outcome`, and ``ABSTAIN = -1`` for a prediction) in :mod:`.outcome`.

Units: images are [C,H,W] (or [B,C,H,W]) tensors with pixels in [0,1]; σ and radii are l2 distances in
those [0,1] pixel units.
"""

from .adaptive import AdaptiveSampling, SequentialPlan
from .bounds import (
    binomial_test_pvalue,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    gaussian_radius,
)
from .core import Certificate, Smooth, decide, predict_from_counts
from .engine import (
    EMPIRICAL_PREDICTION,
    ESTIMATION,
    NOISE_BLOCK,
    PREDICTION,
    PREDICTION_SELECTION,
    SELECTION,
    AcceleratedForward,
    EmpiricalPrediction,
    Engine,
    IgnoreSigma,
    MultiScaleEngine,
    Prediction,
    SmoothingEngine,
    noise_seed,
    probe_batch_size,
    sample_counts,
)
from .multiscale import (
    EmpiricalDecision,
    MultiScaleCertificate,
    MultiScaleSmooth,
    empirical_cascade_prediction,
    off_class_upper_bound,
    pooled_categories,
)
from .outcome import ABSTAIN, Outcome

__all__ = [
    "ABSTAIN",
    "AcceleratedForward",
    "AdaptiveSampling",
    "SequentialPlan",
    "Certificate",
    "EMPIRICAL_PREDICTION",
    "ESTIMATION",
    "EmpiricalDecision",
    "EmpiricalPrediction",
    "Engine",
    "IgnoreSigma",
    "NOISE_BLOCK",
    "Outcome",
    "PREDICTION",
    "PREDICTION_SELECTION",
    "SELECTION",
    "MultiScaleCertificate",
    "MultiScaleEngine",
    "Prediction",
    "MultiScaleSmooth",
    "Smooth",
    "SmoothingEngine",
    "binomial_test_pvalue",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "decide",
    "empirical_cascade_prediction",
    "gaussian_radius",
    "noise_seed",
    "off_class_upper_bound",
    "pooled_categories",
    "predict_from_counts",
    "probe_batch_size",
    "sample_counts",
]
