"""Certification as a Lightning ``predict`` run.

``trainer.predict`` (not ``test``): Lightning's predict sampler splits the data set across ranks without
padding, while the test/validate ``DistributedSampler`` pads with repeated images, which would certify
some images twice and bias every number computed from the rows.

Each predict step certifies one data-loader batch of images with :class:`SmoothingEngine` (noisy samples
of several images per forward, per-image noise streams) and returns one row dict per image; the
:class:`~msds_lightning.callbacks.CertificationWriter` callback writes them to per-rank shards and merges.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch import LightningModule

from ..models import DenoiseAndClassify
from ..smoothing import NOISE_BLOCK, SmoothingEngine
from ..smoothing.checks import check_alpha, check_count, check_num_classes, check_sigma


class CertifyModule(LightningModule):
    """Certify a (denoised-)smoothed classifier over a data set.

    :param classifier: maps [B,C,H,W] pixels in [0,1] to logits [B,num_classes] (normalisation inside)
    :param denoiser: optional one-shot denoiser ``denoiser(x_noisy, sigma) -> [0,1] pixels``; with it the
        base classifier is ``classifier(denoiser(x + δ, σ))`` (Carlini et al. 2023), without it plain
        Gaussian smoothing of ``classifier`` (Cohen et al. 2019)
    :param num_classes: number of classes
    :param sigma: smoothing noise std in [0,1] pixel units
    :param n0: selection samples per image (field default 100)
    :param n: estimation samples per image (field defaults: 100,000 CIFAR-10, 10,000 ImageNet)
    :param alpha: failure probability of each certificate (field default 0.001)
    :param batch_size: noisy samples per forward pass (images per step is the data loader's batch size)
    :param seed: noise seed; with the dataset index it keys every image's noise, so rows do not depend on
        batch sizes, the number of GPUs, or resumption
    :param noise_block: samples per RNG block (part of the reproducibility key; keep the default)
    """

    extra_columns = ("sigma", "n0", "n", "nA", "pA_lower")

    def __init__(
        self,
        classifier: torch.nn.Module,
        denoiser: torch.nn.Module | None = None,
        num_classes: int = 10,
        sigma: float = 0.25,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int = 1000,
        seed: int = 0,
        noise_block: int = NOISE_BLOCK,
    ):
        super().__init__()
        self.sigma = check_sigma(sigma)
        self.n0, self.n = check_count(n0, "n0"), check_count(n, "n")
        self.alpha = check_alpha(alpha)
        self.num_classes = check_num_classes(num_classes)
        self.classifier = classifier
        self.denoiser = denoiser
        if denoiser is not None:
            self.base_classifier = DenoiseAndClassify(denoiser, classifier, self.sigma)
            # fail now, not hours into a run, if the denoiser's schedule cannot reach σ
            if hasattr(denoiser, "timestep_for_sigma"):
                denoiser.timestep_for_sigma(self.sigma)
        else:
            self.base_classifier = classifier
        self.engine = SmoothingEngine(
            self.base_classifier,
            self.num_classes,
            self.sigma,
            seed=seed,
            batch_size=batch_size,
            noise_block=noise_block,
        )
        self.skip_indices: set[int] = (
            set()
        )  # finished images of an earlier, interrupted run (set by the writer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_classifier(x)

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        images, labels, indices = batch
        todo = [k for k, i in enumerate(indices.tolist()) if i not in self.skip_indices]
        if not todo:
            return []
        images, labels, indices = images[todo], labels[todo].tolist(), indices[todo].tolist()
        start = time.perf_counter()
        certificates = self.engine.certify(images, indices, self.n0, self.n, self.alpha)
        seconds = (time.perf_counter() - start) / len(todo)  # images of a step share forwards: split evenly
        return [
            dict(idx=i, label=y, predict=c.prediction, radius=c.radius, seconds=seconds, sigma=self.sigma,
                 n0=self.n0, n=self.n, nA=c.n_a, pA_lower=c.p_lower)
            for i, y, c in zip(indices, labels, certificates)
        ]  # fmt: skip
