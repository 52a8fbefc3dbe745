"""Certification as a Lightning ``predict`` run.

``trainer.predict`` (not ``test``): Lightning's predict sampler splits the data set across ranks without
padding, while the test/validate ``DistributedSampler`` pads with repeated images, which would certify
some images twice and bias every number computed from the rows.

Each predict step certifies one data-loader batch of images with the batched
:class:`~msds_lightning.smoothing.Engine` (noisy samples of several images per forward, per-image noise
streams) and returns one row dict per image; the
:class:`~msds_lightning.callbacks.CertificationWriter` callback writes them to per-rank shards and merges.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from lightning.pytorch import LightningModule

from ..models import DenoiseAndClassify
from ..smoothing import NOISE_BLOCK, Engine, IgnoreSigma
from ..smoothing.adaptive import AdaptiveSampling, check_sampling
from ..smoothing.checks import check_alpha, check_count
from ..smoothing.multiscale import UNIFORM_WEIGHT, check_prediction_p0

PREDICT_MODES = ("predict", "official_empirical")


class SmoothedClassifierModule(LightningModule):
    """What certification and prediction share: the base classifier f(x_noisy, σ) — ``classifier`` alone
    (Gaussian smoothing) or ``classifier(denoiser(x_noisy, σ))`` — the :class:`Engine` over the σ, and the
    indices finished by an earlier, interrupted run (``skip_indices``, set by the writer). Arguments as in
    :class:`CertifyModule`."""

    def __init__(self, classifier, denoiser, num_classes, sigma, p0, **engine_options):
        super().__init__()
        self.classifier = classifier
        self.denoiser = denoiser
        # the base classifier f(x_noisy, σ): denoise at σ then classify, or classify x + δ as it is
        self.base_classifier = (
            IgnoreSigma(classifier) if denoiser is None else DenoiseAndClassify(denoiser, classifier)
        )
        # a list of σ, even of one, is a cascade (its own rows); one number is Cohen's rule
        cascade = isinstance(sigma, list | tuple)
        self.engine = Engine(self.base_classifier, num_classes, sigma, p0, cascade=cascade, **engine_options)
        self.sigmas, self.p0, self.num_classes = self.engine.sigmas, self.engine.p0, self.engine.num_classes
        if hasattr(denoiser, "timestep_for_sigma"):  # fail now, not hours into a run, if σ is out of reach
            for s in self.sigmas:
                denoiser.timestep_for_sigma(s)
        self.skip_indices: set[int] = set()

    def forward(self, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.base_classifier(x_noisy, sigma)

    def clean_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier alone on the un-noised images (no noise, no denoiser), as the official MSDS code's
        fallback and empirical prediction use it: logits [B, num_classes]."""
        with torch.inference_mode():
            return self.classifier(images)

    def to_do(self, batch) -> tuple[torch.Tensor, list[int], list[int]]:
        """The images, labels and indices of a batch that no earlier run finished."""
        images, labels, indices = batch
        todo = [k for k, i in enumerate(indices.tolist()) if i not in self.skip_indices]
        return images[todo], labels[todo].tolist(), indices[todo].tolist()


def _adaptive(sampling, radii, tolerance, first_checkpoint, checkpoint_ratio, final_share):
    if check_sampling(sampling) != "adaptive":
        return None
    return AdaptiveSampling(first_checkpoint, checkpoint_ratio, final_share, tolerance, tuple(radii or ()))


class CertifyModule(SmoothedClassifierModule):
    """Certify a (denoised-)smoothed classifier over a data set.

    :param classifier: maps [B,C,H,W] pixels in [0,1] to logits [B,num_classes] (normalisation inside)
    :param denoiser: optional one-shot denoiser ``denoiser(x_noisy, sigma) -> [0,1] pixels``; with it the
        base classifier is ``classifier(denoiser(x + δ, σ))`` (Carlini et al. 2023), without it plain
        Gaussian smoothing of ``classifier`` (Cohen et al. 2019)
    :param num_classes: number of classes
    :param sigma: smoothing noise std in [0,1] pixel units; a list of several σ certifies the multi-scale
        cascade (Jeong & Shin 2023): highest σ first, lower ones when it is confidently below ``p0``
    :param p0: cascade threshold on the top-class probability (0.5 in the paper; unused for one σ)
    :param n0: selection samples per image (field default 100)
    :param n: estimation samples per image (field defaults: 100,000 CIFAR-10, 10,000 ImageNet)
    :param alpha: failure probability of each certificate (field default 0.001)
    :param batch_size: noisy samples per forward pass (images per step is the data loader's batch size), or
        ``"auto"``: measured once on the first image (the largest batch that fits in the device's memory while
        throughput still grows; :func:`~msds_lightning.smoothing.probe_batch_size`). Rows do not depend on it
    :param seed: noise seed; with the dataset index it keys every image's noise, so rows do not depend on
        batch sizes, the number of GPUs, or resumption
    :param noise_block: samples per RNG block (part of the reproducibility key; keep the default)
    :param compile: ``torch.compile`` the base classifier with fixed shapes (``True`` or a mode name;
        ``"reduce-overhead"`` adds CUDA graphs); see :class:`~msds_lightning.smoothing.Engine`. For bf16/fp16
        set the trainer's ``precision: bf16-mixed`` (autocast around each step): certificates then hold for
        the reduced-precision classifier and no longer match fp32 runs bitwise.
    :param sampling: ``"fixed"`` (n estimation samples per image and level, the field's procedure) or
        ``"adaptive"``: n becomes a budget; samples are checked at checkpoints ``first_checkpoint ×
        checkpoint_ratio^k`` (and n) with α split over them (union bound: the same 1 − α guarantee), and an
        image or cascade level stops once more samples cannot change its answer (see
        :mod:`msds_lightning.smoothing.adaptive`)
    :param radii: adaptive stopping grid ([0,1] pixel units): stop once no radius of the grid lies between
        the current radius and the best the budget could reach. The CLI links it to ``results.radii``
    :param tolerance: adaptive: also stop once the budget could raise the radius by at most this much
    :param first_checkpoint: adaptive: estimation samples at the first look
    :param checkpoint_ratio: adaptive: growth factor between looks
    :param final_share: adaptive: share of α kept for the last look (the budget n)
    :param official_columns: also write the official MSDS ``certify.py`` per-image columns after the others:
        ``r_neg`` (cascade only; the largest off-class radius σ_j(Φ⁻¹(pB_j) − Φ⁻¹(p0)) of the higher levels
        passed, in [0,1] pixel units — half the official value, which is in [−1,1] model units — and −100
        when no level reached p0 or none was passed; > 0 means that bound made the cascade abstain),
        ``clean`` (the classifier alone on the un-noised image), ``pred_uc`` (``predict``, or ``clean`` on
        abstention) and ``corr_uc`` (``pred_uc == label``: the certify-or-fallback accuracy, whose fallback
        part carries no guarantee). Off by default, so earlier outputs keep their header and resume
    """

    def __init__(
        self,
        classifier: torch.nn.Module,
        denoiser: torch.nn.Module | None = None,
        num_classes: int = 10,
        sigma: float | list[float] = 0.25,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int | Literal["auto"] = 1000,
        seed: int = 0,
        noise_block: int = NOISE_BLOCK,
        p0: float = 0.5,
        compile: bool | str = False,
        sampling: str = "fixed",
        radii: list[float] | None = None,
        tolerance: float = 0.0,
        first_checkpoint: int = 1000,
        checkpoint_ratio: float = 2.0,
        final_share: float = 0.5,
        official_columns: bool = False,
    ):
        super().__init__(classifier, denoiser, num_classes, sigma, p0, batch_size=batch_size, seed=seed,
                         noise_block=noise_block, compile=compile,
                         sampling=_adaptive(sampling, radii, tolerance, first_checkpoint, checkpoint_ratio, final_share))  # fmt: skip
        # kept in ``self.hparams`` and checkpoints, not logged: the data module logs its own, and Lightning
        # refuses to merge the two when a shared key (batch_size) differs
        self.save_hyperparameters(ignore=["classifier", "denoiser"], logger=False)
        self.n0, self.n = check_count(n0, "n0"), check_count(n, "n")
        self.alpha = check_alpha(alpha)
        self.sampling = check_sampling(sampling)
        if self.engine.cascade:
            per_level = [f"{name}@{s:g}" for s in self.sigmas for name in ("c", "nA", "N", "pL", "pU")]
            self.extra_columns = ("level", "sigma", "stage", "n0", "n", "p0", "samples", *per_level)
        else:
            self.extra_columns = ("sigma", "n0", "n", "nA", "pA_lower", "samples")
        self.official_columns = bool(official_columns)
        if self.official_columns:
            official = ("r_neg", "clean", "pred_uc", "corr_uc") if self.engine.cascade else ("clean", "pred_uc", "corr_uc")
            self.extra_columns += official

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        images, labels, indices = self.to_do(batch)
        if not indices:
            return []
        start = time.perf_counter()
        certificates = self.engine.certify(images, indices, self.n0, self.n, self.alpha)
        clean = self.clean_logits(images).argmax(1).tolist() if self.official_columns else None
        seconds = (time.perf_counter() - start) / len(indices)  # images of a step share forwards: split evenly
        rows = []
        for i, y, c in zip(indices, labels, certificates):
            row = dict(
                idx=i, label=y, predict=c.prediction, radius=c.radius, seconds=seconds, n0=self.n0, n=self.n
            )
            if self.engine.cascade:
                row.update(level=c.level, sigma=c.sigma if c.level >= 0 else 0.0, stage=c.stage, p0=self.p0,
                           samples=c.samples(self.n0))  # fmt: skip
                visited = {r.sigma: r for r in c.levels}
                for s in self.sigmas:
                    r = visited.get(s)
                    row.update({f"c@{s:g}": r.selected if r else "", f"nA@{s:g}": r.n_a if r else "",
                                f"N@{s:g}": r.n if r else "", f"pL@{s:g}": r.p_lower if r else "",
                                f"pU@{s:g}": r.p_upper if r else ""})  # fmt: skip
            else:
                row.update(sigma=self.sigmas[0], n=c.n, nA=c.n_a, pA_lower=c.p_lower, samples=self.n0 + c.n)
            if clean is not None:
                fallback = c.prediction if c.prediction >= 0 else clean[len(rows)]
                row.update(clean=clean[len(rows)], pred_uc=fallback, corr_uc=int(fallback == y))
                if self.engine.cascade:
                    row.update(r_neg=c.negative_radius)
            rows.append(row)
        return rows


class PredictModule(SmoothedClassifierModule):
    """PREDICT a (denoised-)smoothed classifier over a data set (Cohen et al.'s ``predict.py``): one row per
    image with g(x) or -1 (abstain); an answer differs from g(x) with probability at most ``alpha``.

    One σ: Cohen's PREDICT (a binomial test of the top two of ``n`` draws at level α; ``n0`` unused). A list
    of σ: the cascade top down, :func:`~msds_lightning.smoothing.multiscale.cascade_prediction` at each
    level (``n0`` selection draws choose the class, ``n`` fresh draws decide, α/(2L) per bound; p0 >= 1/2).
    Arguments as in :class:`CertifyModule`; field defaults of ``predict.py``: n = 100,000, α = 0.001.

    :param mode: ``"predict"`` (the default: the sound rule above) or ``"official_empirical"``: the official
        MSDS ``predict_mdds.py`` rule, which carries NO guarantee (:meth:`Engine.predict_empirical
        <msds_lightning.smoothing.Engine.predict_empirical>`: n draws per level, the official N being 200, and
        no selection draws; a level fires when its top count reaches p0·n; the answer is the argmax of the
        clean classifier's logits plus the log of the firing level's frequencies mixed with a uniform prior
        of weight ``unif_w``, or of the clean logits alone when no level fires; never -1). ``n0`` and
        ``alpha`` are unused there, and any p0 in (0, 1) is allowed. Its rows add ``pred0`` (the class that
        fired, -1 if none), ``clean`` (the classifier alone on the un-noised image) and ``c_max`` (its largest
        softmax probability); ``level``/``sigma`` name the level that fired, and ``n0`` is written 0
    :param unif_w: ``official_empirical``: weight of the uniform prior (official default 0.1)
    """

    def __init__(
        self,
        classifier: torch.nn.Module,
        denoiser: torch.nn.Module | None = None,
        num_classes: int = 10,
        sigma: float | list[float] = 0.25,
        n0: int = 100,
        n: int = 100_000,
        alpha: float = 0.001,
        batch_size: int | Literal["auto"] = 1000,
        seed: int = 0,
        noise_block: int = NOISE_BLOCK,
        p0: float = 0.5,
        compile: bool | str = False,
        mode: Literal["predict", "official_empirical"] = "predict",
        unif_w: float = UNIFORM_WEIGHT,
    ):
        super().__init__(classifier, denoiser, num_classes, sigma, p0, batch_size=batch_size, seed=seed,
                         noise_block=noise_block, compile=compile)  # fmt: skip
        self.save_hyperparameters(ignore=["classifier", "denoiser"], logger=False)
        self.n0, self.n = check_count(n0, "n0"), check_count(n, "n")
        self.alpha = check_alpha(alpha)
        if mode not in PREDICT_MODES:
            raise ValueError(f"mode must be one of {PREDICT_MODES}, got {mode!r}")
        if not 0.0 <= float(unif_w) <= 1.0:
            raise ValueError(f"unif_w must lie in [0, 1], got {unif_w!r}")
        self.mode, self.unif_w = mode, float(unif_w)
        if self.mode == "official_empirical":
            self.extra_columns = ("level", "sigma", "stage", "n0", "n", "p0", "nA", "nB", "samples", "pred0",
                                  "clean", "c_max")  # fmt: skip
        elif self.engine.cascade:
            check_prediction_p0(self.p0)
            self.extra_columns = ("level", "sigma", "stage", "n0", "n", "p0", "nA", "nB", "samples")
        else:
            self.extra_columns = ("sigma", "n", "nA", "nB", "samples")

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        images, labels, indices = self.to_do(batch)
        if not indices:
            return []
        start = time.perf_counter()
        if self.mode == "official_empirical":
            return self._empirical_rows(images, labels, indices, start)
        predictions = self.engine.predict_with_levels(images, indices, self.n, self.alpha, self.n0)
        seconds = (time.perf_counter() - start) / len(indices)  # images of a step share forwards: split evenly
        rows = []
        for i, y, p in zip(indices, labels, predictions):
            top, second = sorted(p.counts, reverse=True)[:2]
            row = dict(idx=i, label=y, predict=p.prediction, seconds=seconds, n=self.n, nA=top, nB=second,
                       samples=p.samples)  # fmt: skip
            if self.engine.cascade:
                row.update(level=p.level, sigma=p.sigma if p.level >= 0 else 0.0, stage=p.stage, n0=self.n0,
                           p0=self.p0)  # fmt: skip
            else:
                row.update(sigma=self.sigmas[0])
            rows.append(row)
        return rows

    def _empirical_rows(self, images, labels, indices, start) -> list[dict]:
        predictions = self.engine.predict_empirical(images, indices, self.n, self.clean_logits(images), self.unif_w)
        seconds = (time.perf_counter() - start) / len(indices)
        rows = []
        for i, y, p in zip(indices, labels, predictions):
            top, second = sorted(p.counts[-1], reverse=True)[:2]
            rows.append(dict(
                idx=i, label=y, predict=p.prediction, seconds=seconds, level=p.level,
                sigma=p.sigma if p.level >= 0 else 0.0, stage=p.stage, n0=0, n=self.n, p0=self.p0, nA=top,
                nB=second, samples=p.samples, pred0=p.fired, clean=p.clean, c_max=p.confidence,
            ))  # fmt: skip
        return rows
