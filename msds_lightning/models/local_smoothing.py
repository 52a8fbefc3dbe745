"""DiffSmooth's local smoothing (Zhang et al., USENIX Security 2023): vote a classifier over m small noises.

DiffSmooth's base classifier is ``f(x + δ) = vote_i classifier(denoise(x + δ, σ) + η_i)``, η_i ~ N(0, σ'²I),
i = 1..m: the purified image is classified under m extra Gaussian noises of a small std σ' (the noise the
classifier was trained with) and the m outputs are aggregated into one decision. Compose it as::

    DenoiseAndClassify(denoiser, LocalSmoothing(classifier, sigma=0.25, m=5))

One Monte-Carlo sample of the outer smoothing (:class:`~msds_lightning.smoothing.Engine`,
``msds certify``) is then one outer draw δ, one denoising and m classifier forwards, giving one vote.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_VOTES = ("soft", "hard")


class LocalSmoothing(nn.Module):
    """A classifier voted over m local Gaussian noises; use it as the classifier of a denoised base classifier.

    Args:
        classifier: maps [B, C, H, W] pixels in [0, 1] to logits [B, K] (normalization inside, e.g.
            :class:`~msds_lightning.models.Classifier`).
        sigma: local noise std σ' in [0, 1] pixel units (>= 0; 0 adds no noise). DiffSmooth uses the σ the
            classifier was trained with (e.g. 0.25 under an outer σ of 0.5), and suggests + 0.01/0.02 for
            the blur of purification. Independent of the outer σ, which alone sets the radius.
        m: number of local noises (classifier forwards per sample), >= 1. DiffSmooth's default is 5.
        vote: ``"soft"`` (default, as the official code): scores are ``log mean_i softmax(classifier(x +
            η_i))``, so the vote is the argmax of the averaged softmax. ``"hard"`` (the paper's text: a
            majority vote): scores are the number of copies voting for each class, as floats; ties go to
            the lowest class index (``argmax`` takes the first maximum).
        fixed_noise: draw η_1..η_m once and reuse them for every input and call (the official code's
            default). They come from ``torch.Generator().manual_seed(noise_seed)`` on the CPU at the
            [m, C, H, W] shape of the first input (one draw per image shape), then move to the input's
            device and dtype, so they are the same on every device and for every batch. ``False`` draws
            fresh noise per row and call from the global generator of the input's device: rows then depend
            on the random state, i.e. on batch composition and order, which breaks the engine's guarantee
            that an image's row depends only on (seed, index).
        noise_seed: seed of the fixed noises (42 in the official code).

    ``forward(x)`` takes purified images [B, C, H, W] ([0, 1] pixels) and returns [B, K] scores whose
    argmax is the vote. ``x + η_i`` is not clamped (as the official certification code). The m copies are
    m forwards of B inputs each, so peak memory stays that of one batch.

    Certification: with fixed noise this module is a deterministic function, so the composite base
    classifier is too and Cohen's certificate at the *outer* σ holds unchanged. (Fresh noise keeps it valid
    for the η-averaged classifier, but is not reproducible.)
    """

    def __init__(
        self,
        classifier: nn.Module,
        sigma: float = 0.25,
        m: int = 5,
        vote: str = "soft",
        fixed_noise: bool = True,
        noise_seed: int = 42,
    ) -> None:
        super().__init__()
        number = isinstance(sigma, int | float) and not isinstance(sigma, bool)
        if not (number and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0 ([0, 1] pixel units), got {sigma!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an integer >= 1, got {m!r}")
        if vote not in _VOTES:
            raise ValueError(f"vote must be one of {_VOTES}, got {vote!r}")
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int):
            raise ValueError(f"noise_seed must be an integer, got {noise_seed!r}")
        self.classifier = classifier
        self.num_classes = getattr(classifier, "num_classes", None)
        self.sigma, self.m, self.vote = float(sigma), m, vote
        self.fixed_noise, self.noise_seed = bool(fixed_noise), noise_seed
        # Not buffers: drawn lazily per image shape, and configuration rather than weights.
        self._cpu_noise: dict[tuple[int, ...], torch.Tensor] = {}
        self._device_noise: dict[tuple, torch.Tensor] = {}

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed local noises η_1..η_m [m, C, H, W] (std σ') used for images like ``x``, on its device
        and dtype. Only with ``fixed_noise`` (fresh noise is drawn inside ``forward``)."""
        if not self.fixed_noise:
            raise RuntimeError("noise(): fixed_noise is False, the local noise is drawn afresh in forward")
        shape = (self.m, *x.shape[1:])
        key = (*shape, x.device, x.dtype)
        noise = self._device_noise.get(key)
        if noise is None:
            cpu = self._cpu_noise.get(shape)
            if cpu is None:
                generator = torch.Generator().manual_seed(self.noise_seed)
                cpu = self._cpu_noise[shape] = torch.randn(shape, generator=generator) * self.sigma
            noise = self._device_noise[key] = cpu.to(device=x.device, dtype=x.dtype)
        return noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x: expected a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        fixed = self.noise(x) if self.fixed_noise else None
        scores = None
        for i in range(self.m):
            # fixed: η_i [C, H, W] broadcast over the batch; fresh: an independent noise for every row
            eta = fixed[i] if fixed is not None else torch.randn_like(x) * self.sigma
            logits = self.classifier(x + eta)
            if self.vote == "soft":  # running log-sum of the softmax vectors
                log_probs = torch.log_softmax(logits.float(), dim=1)
                scores = log_probs if scores is None else torch.logaddexp(scores, log_probs)
            else:
                votes = torch.zeros_like(logits, dtype=torch.float32)
                votes.scatter_(1, logits.argmax(1, keepdim=True), 1.0)
                scores = votes if scores is None else scores + votes
        return scores - math.log(self.m) if self.vote == "soft" else scores

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, m={self.m}, vote={self.vote!r}, fixed_noise={self.fixed_noise}, "
            f"noise_seed={self.noise_seed}"
        )
