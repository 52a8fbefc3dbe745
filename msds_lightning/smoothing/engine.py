"""Batched certification engine: many images × many noise samples per forward pass, over one σ or several.

:class:`Smooth` and :class:`MultiScaleSmooth` reproduce the reference streams one image at a time. This
engine is for throughput and for distributed, resumable runs:

* samples of several images share one forward of up to ``batch_size`` noisy inputs;
* class counts are accumulated on the device (``scatter_add_``, which, unlike CUDA's ``bincount``, needs no
  host sync) and copied to the host once per call: inside the sampling loop nothing waits for the GPU;
* the noise of image ``index`` comes from its own stream, keyed by ``(seed, index, *stream, block)``: the
  n samples of a phase are split into blocks of ``noise_block`` samples and block b is drawn from a
  generator seeded with a hash (numpy ``SeedSequence``) of that key.

So the counts of an image depend only on (seed, dataset index, phase, noise_block, device type) and the
base classifier — not on ``batch_size``, on which other images share its forwards, on the number of
processes, or on where an interrupted run was resumed. (They differ from :class:`Smooth`'s global stream;
the two agree statistically, not bitwise. Across batch sizes the counts are identical as long as f itself
classifies each input independently of its batch-mates, i.e. in eval mode, up to float non-associativity
of batched kernels, which can only matter for inputs on a decision boundary.)

Streams: phase ``SELECTION`` (n0 draws that choose the class), ``ESTIMATION`` (n fresh draws that bound
its probability), ``PREDICTION`` (PREDICT's n draws) and ``PREDICTION_SELECTION`` (the cascade PREDICT's
n0 draws that choose the class before its n ``PREDICTION`` draws) and ``EMPIRICAL_PREDICTION`` (the n draws
per level of the official empirical rule, :meth:`Engine.predict_empirical`). The level of a cascade is *not* part of the key: every level draws
the same δ (common random numbers), so level k's counts equal a one-σ run at σ_k with the same seed; each
level's bound holds on its own, and the union bound over levels needs no independence between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .adaptive import AdaptiveSampling, fixed_plan
from .checks import check_alpha, check_count, check_images, check_num_classes, check_p0, check_sigmas
from .core import ABSTAIN, Certificate, _eval, decide, predict_from_counts, predicted_labels
from .multiscale import (
    UNIFORM_WEIGHT,
    LevelRecord,
    MultiScaleCertificate,
    cascade_decision,
    cascade_prediction,
    check_prediction_p0,
    empirical_cascade_prediction,
    empirical_fires,
)
from .outcome import Outcome

SELECTION, ESTIMATION, PREDICTION, PREDICTION_SELECTION, EMPIRICAL_PREDICTION = 0, 1, 2, 3, 4
AUTO = "auto"
NOISE_BLOCK = 256
"""Default number of samples drawn per RNG block. Part of the reproducibility key: changing it changes
the noise (keep it fixed across the shards and resumptions of one run)."""


def noise_seed(seed: int, index: int, stream: Sequence[int], block: int) -> int:
    """63-bit seed of noise block ``block`` of image ``index`` in ``stream`` (a hash of the whole key)."""
    entropy = [int(seed), int(index), *(int(s) for s in stream), int(block)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _noisy_batches(
    images: torch.Tensor,
    indices: Sequence[int],
    num: int,
    sigma: float,
    seed: int,
    stream: Sequence[int],
    batch_size: int,
    noise_block: int,
    start: int = 0,
    pad: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(noisy, owner)`` batches of at most ``batch_size`` samples: draws ``start .. start + num``
    of each image's stream, image-major; ``owner[j]`` is the position in ``images`` of sample j. With
    ``pad`` the last batch is filled up to ``batch_size`` with copies owned by -1 (fixed shapes for
    ``torch.compile`` / CUDA graphs; their predictions are discarded)."""
    generator = torch.Generator(device=images.device)
    pieces: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    filled = 0
    first_block, end = start // noise_block, start + num
    for position, (x, index) in enumerate(zip(images, indices)):
        for block in range(first_block, -(-end // noise_block)):
            lo, hi = block * noise_block, (block + 1) * noise_block
            generator.manual_seed(noise_seed(seed, index, stream, block))
            noise = torch.randn((noise_block, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
            noise = noise[max(start, lo) - lo : min(end, hi) - lo]  # a block is always drawn whole
            noisy = x.unsqueeze(0) + noise * sigma  # same order as the reference: randn·σ, then add
            while noisy.shape[0] > 0:
                take = min(batch_size - filled, noisy.shape[0])
                pieces.append(noisy[:take])
                owners.append(torch.full((take,), position, dtype=torch.long, device=x.device))
                noisy, filled = noisy[take:], filled + take
                if filled == batch_size:
                    yield torch.cat(pieces), torch.cat(owners)
                    pieces, owners, filled = [], [], 0
    if filled:
        if pad:
            pieces.append(pieces[-1][-1:].expand(batch_size - filled, *pieces[-1].shape[1:]))
            owners.append(torch.full((batch_size - filled,), -1, dtype=torch.long, device=images.device))
        yield torch.cat(pieces), torch.cat(owners)


def sample_counts(
    base_classifier: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    indices: Sequence[int],
    num: int,
    sigma: float,
    num_classes: int,
    *,
    seed: int,
    stream: Sequence[int],
    batch_size: int,
    noise_block: int = NOISE_BLOCK,
    start: int = 0,
    pad: bool = False,
) -> torch.Tensor:
    """Counts [B, num_classes] (on ``images``' device) of f(x_i + δ) over draws ``start .. start + num``
    of each image's stream (so counts of consecutive ranges add up to the counts of their union).

    ``images`` [B,C,H,W] hold pixels in [0,1]; σ is in the same units; ``indices`` are the images' dataset
    indices, which key their noise streams; ``pad`` fills the last forward up to ``batch_size``.
    """
    count = images.shape[0]
    counts = torch.zeros(count * num_classes + 1, dtype=torch.long, device=images.device)
    with torch.inference_mode():
        for noisy, owner in _noisy_batches(
            images, indices, num, sigma, seed, stream, batch_size, noise_block, start, pad
        ):
            labels = predicted_labels(base_classifier, noisy, num_classes)
            # padded samples (owner -1) land in the extra last bin, which is dropped. scatter_add_, not
            # bincount: CUDA's bincount reads the largest slot back to the host (a sync per forward).
            slot = torch.where(owner >= 0, owner * num_classes + labels, count * num_classes)
            counts.scatter_add_(0, slot, torch.ones_like(slot))
    return counts[:-1].view(count, num_classes)


def probe_batch_size(
    forward: Callable[[torch.Tensor], torch.Tensor],
    example: torch.Tensor,
    *,
    start: int = 64,
    limit: int | None = None,
    gain: float = 1.05,
    max_seconds: float = 10.0,
) -> tuple[int, dict[int, float]]:
    """The batch size for ``forward`` on inputs like ``example`` [1,C,H,W] (pixels in [0,1]), measured.

    Doubles the batch from ``start`` up to ``limit`` (2**16 on a GPU, 2**12 on the CPU) while it fits in
    memory (an out-of-memory or other runtime error at a size above ``start`` ends the probe; at ``start``
    it is raised), one forward takes at most
    ``max_seconds``, and throughput still grows by the factor ``gain``; each size is timed on its second
    forward (the first one pays for allocation and kernel selection). Returns the size with the best
    throughput and ``{batch size: samples/s}`` of every size that ran. The probe's inputs are copies of
    ``example``: memory and time do not depend on the pixel values.
    """
    device = example.device
    limit = limit or (2**16 if device.type == "cuda" else 2**12)
    check_count(start, "start")
    speeds: dict[int, float] = {}
    batch = start
    while batch <= limit:
        try:
            x = example[:1].expand(batch, *example.shape[1:]).contiguous()
            with torch.inference_mode():
                forward(x)
                _synchronize(device)
                began = time.perf_counter()
                forward(x)
                _synchronize(device)
            seconds = time.perf_counter() - began
        except RuntimeError:  # out of memory, or a kernel's size limit (e.g. 32-bit indexing) at this size
            if not speeds:
                raise
            break
        finally:
            x = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        previous_best = max(speeds.values(), default=0.0)
        speeds[batch] = batch / seconds
        if seconds > max_seconds or speeds[batch] < gain * previous_best:
            break
        batch *= 2
    best = max(speeds.values())
    return min(b for b, v in speeds.items() if v == best), speeds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """Certify or predict a batch of images over one or several σ, with per-image noise streams.

    :param base_classifier: ``f(x_noisy, sigma) -> logits [B, num_classes]`` for x_noisy [B,C,H,W] in [0,1]
        pixel units (for denoised smoothing: denoise at σ, then classify); a classifier that ignores σ is
        passed as ``IgnoreSigma(classifier)``
    :param num_classes: number of classes (>= 2)
    :param sigmas: one noise std or several, in [0,1] pixel units (distinct, > 0; visited from the highest)
    :param p0: the cascade's threshold on the top-class probability (0.5 in the paper)
    :param cascade: the decision rule. ``False`` (the default for one σ): Cohen's rule, one
        :class:`~.core.Certificate` per image. ``True`` (the default for several σ): the MSDS cascade of
        :mod:`.multiscale`, one :class:`~.multiscale.MultiScaleCertificate` per image; images that answer
        or abstain at a level are not sampled at lower ones. One level at p0 = 1/2 answers as Cohen's rule
        with fixed sampling; with adaptive sampling Cohen's rule also abstains as soon as the budget cannot
        certify, where a cascade level samples on until it is proven below p0.
    :param seed: run seed (>= 0); with the dataset index it keys every image's noise
    :param batch_size: noisy samples per forward pass, or ``"auto"``: probed once, at the first call, with
        :func:`probe_batch_size` on the first image (the largest batch that fits in memory while throughput
        still grows). Counts do not depend on the batch size (see above), so ``auto`` changes speed only.
    :param noise_block: samples per RNG block (part of the reproducibility key; keep the default)
    :param compile: ``torch.compile`` the base classifier (``True`` or a mode, e.g. ``"reduce-overhead"``
        for CUDA graphs); every forward then has exactly ``batch_size`` samples (the last one is padded)
        so it compiles once per σ. Pays off on long runs; pack images so ``images × n0 >= batch_size``,
        since a short selection forward is padded to the full batch.
    :param autocast: ``"bf16"`` or ``"fp16"`` runs the base classifier under ``torch.autocast``. This
        changes f's numerics: certificates are valid for the reduced-precision classifier actually
        evaluated and no longer match fp32 runs bitwise. Meant for GPUs (slow on most CPUs).
    :param sampling: ``None`` for fixed sampling (n estimation draws per image and level), or
        :class:`~msds_lightning.smoothing.adaptive.AdaptiveSampling`: n becomes a budget, estimation
        draws are checked at the checkpoints of each level's α_s and an image leaves a level once more
        draws cannot change its answer (same (1 − α) guarantee, union bound over checkpoints). Draws
        ``0 .. n_k`` are the same noise as a fixed run's, so an image that runs to the budget sees exactly
        the fixed run's samples.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor, float], torch.Tensor],
        num_classes: int,
        sigmas: float | Sequence[float],
        p0: float = 0.5,
        *,
        cascade: bool | None = None,
        seed: int = 0,
        batch_size: int | str = 1000,
        noise_block: int = NOISE_BLOCK,
        compile: bool | str = False,
        autocast: str | None = None,
        sampling: AdaptiveSampling | None = None,
    ):
        self.base_classifier = base_classifier
        self.sampling = sampling
        self.num_classes = check_num_classes(num_classes)
        self.sigmas = check_sigmas(sigmas)
        self.cascade = len(self.sigmas) > 1 if cascade is None else bool(cascade)
        if not self.cascade and len(self.sigmas) > 1:
            raise ValueError(f"Cohen's rule (cascade=False) takes one sigma, got {list(self.sigmas)}")
        self.p0 = check_p0(p0)
        self.seed = check_count(seed, "seed", minimum=0)
        # None until probed (batch_size="auto"); `probed` then holds {batch size: samples/s}
        if batch_size == AUTO:
            self.batch_size = None
        elif isinstance(batch_size, str):
            raise ValueError(f"batch_size must be an integer >= 1 or {AUTO!r}, got {batch_size!r}")
        else:
            self.batch_size = check_count(batch_size, "batch_size")
        self.probed: dict[int, float] = {}
        self.noise_block = check_count(noise_block, "noise_block")
        self.forward = AcceleratedForward(base_classifier, compile=compile, autocast=autocast)

    @property
    def sigma(self) -> float:
        """The highest σ (the only one for Cohen's rule)."""
        return self.sigmas[0]

    def counts(
        self, images: torch.Tensor, indices: Sequence[int], num: int, stream: Sequence[int], start: int = 0,
        sigma: float | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Class counts [B, num_classes] on the device of f(x + δ, σ) for draws ``start .. start + num`` per
        image in ``stream`` (σ defaults to the highest level)."""
        sigma = self.sigmas[0] if sigma is None else sigma
        if self.batch_size is None:
            self.batch_size, self.probed = probe_batch_size(lambda z: self.forward.eager(z, sigma), images[:1])
        return sample_counts(
            lambda z: self.forward(z, sigma), images, indices, num, sigma, self.num_classes, seed=self.seed,
            stream=stream, batch_size=self.batch_size, noise_block=self.noise_block, start=start,
            pad=self.forward.fixed_shape,
        )  # fmt: skip

    def certify(
        self, images: torch.Tensor, indices: Sequence[int], n0: int, n: int, alpha: float
    ) -> list[Certificate] | list[MultiScaleCertificate]:
        """CERTIFY each image: n0 selection draws choose the class, n fresh estimation draws bound it."""
        indices = self._check(images, indices)
        n0, n, alpha = check_count(n0, "n0"), check_count(n, "n"), check_alpha(alpha)
        _eval(self.base_classifier)
        results: list = [None] * len(indices)
        passed: list[list[LevelRecord]] = [[] for _ in indices]
        active = list(range(len(indices)))
        for stage, sigma in enumerate(self.sigmas):
            if not active:
                break
            selection = self._counts(images, indices, active, n0, sigma, SELECTION)
            alpha_s = alpha / (stage + 1)  # the cascade's union bound over levels (α for one level)
            plan = self.sampling.plan(n, alpha_s) if self.sampling else fixed_plan(n, alpha_s)
            counts = np.zeros((len(active), self.num_classes), dtype=np.int64)
            pending, drawn, lower = list(range(len(active))), 0, []
            for checkpoint, size in enumerate(plan.checkpoints):
                counts[pending] += self._counts(
                    images, indices, [active[r] for r in pending], size - drawn, sigma, ESTIMATION, drawn
                )
                drawn, undecided = size, []
                for r in pending:
                    k = active[r]
                    outcome, cert, record = self._decide(
                        stage, sigma, selection[r], counts[r], alpha, passed[k], plan, checkpoint
                    )
                    if outcome == Outcome.CONTINUE:
                        undecided.append(r)
                    elif cert is not None:
                        results[k] = cert
                    else:  # Outcome.LOWER: proven below p0 here, try the next σ
                        passed[k].append(record)
                        lower.append(k)
                pending = undecided
                if not pending:
                    break
            active = sorted(lower)
        last = len(self.sigmas) - 1
        for k in active:  # every level proven below p0
            results[k] = MultiScaleCertificate(ABSTAIN, 0.0, -1, last, self.sigmas[-1], tuple(passed[k]))
        return results

    def _decide(self, stage, sigma, selection, counts, alpha, passed, plan, checkpoint):
        """One image at one level and checkpoint: ``(Outcome, certificate or None, LevelRecord or None)``."""
        if self.cascade:
            return cascade_decision(
                stage, sigma, selection, counts, alpha, self.p0, passed, plan=plan, checkpoint=checkpoint
            )
        c = int(np.argmax(selection))  # first maximum: ties go to the lowest class
        cert = decide(c, int(counts[c]), int(np.sum(counts)), alpha, sigma, plan, checkpoint)
        if cert is None:
            return Outcome.CONTINUE, None, None
        return (Outcome.ABSTAIN if cert.abstained else Outcome.CERTIFY), cert, None

    def predict(
        self, images: torch.Tensor, indices: Sequence[int], n: int, alpha: float, n0: int = 100
    ) -> list[int]:
        """PREDICT each image: g(x) or ``ABSTAIN``; an answer is wrong with probability at most α. One σ:
        Cohen's binomial test of the top two of n draws at level α (n0 unused). Cascade: top down,
        :func:`~.multiscale.cascade_prediction` at each level on n0 selection and n estimation draws."""
        return [p.prediction for p in self.predict_with_levels(images, indices, n, alpha, n0)]

    def predict_with_levels(
        self, images: torch.Tensor, indices: Sequence[int], n: int, alpha: float, n0: int = 100
    ) -> list[Prediction]:
        """:meth:`predict` with, per image, the level that answered and the last level's counts."""
        indices = self._check(images, indices)
        n, alpha, n0 = check_count(n, "n"), check_alpha(alpha), check_count(n0, "n0")
        p0 = check_prediction_p0(self.p0) if self.cascade else self.p0
        _eval(self.base_classifier)
        results: list = [None] * len(indices)
        active = list(range(len(indices)))
        for stage, sigma in enumerate(self.sigmas):
            if not active:
                break
            selection = self._counts(images, indices, active, n0, sigma, PREDICTION_SELECTION) if self.cascade else None
            counts, lower = self._counts(images, indices, active, n, sigma, PREDICTION), []
            for row, k in enumerate(active):
                if self.cascade:
                    answer = cascade_prediction(selection[row], counts[row], alpha, p0, len(self.sigmas))
                else:
                    answer = predict_from_counts(counts[row], alpha)
                samples = (stage + 1) * (n + (n0 if self.cascade else 0))
                if answer is None and stage < len(self.sigmas) - 1:
                    lower.append(k)
                    continue
                answer = ABSTAIN if answer is None else answer
                level = stage if answer != ABSTAIN else -1
                results[k] = Prediction(answer, level, stage, sigma, tuple(int(v) for v in counts[row]), samples)
            active = lower
        return results

    def predict_empirical(
        self, images: torch.Tensor, indices: Sequence[int], n: int, clean_logits: torch.Tensor | np.ndarray,
        unif_w: float = UNIFORM_WEIGHT,
    ) -> list[EmpiricalPrediction]:  # fmt: skip
        """The official MSDS empirical prediction (``predict_mdds.py``; NO guarantee): top down, n draws per
        level (phase ``EMPIRICAL_PREDICTION``; the official N is 200), an image stops at the first level whose
        largest count reaches p0·n; then :func:`~.multiscale.empirical_cascade_prediction` on the counts and
        ``clean_logits`` [B, num_classes], the clean classifier's logits on the un-noised images (for
        denoised smoothing: the classifier alone, no noise, no denoiser). Every σ of the engine is a level
        (one σ: a one-level cascade); any p0 in (0, 1)."""
        indices = self._check(images, indices)
        n = check_count(n, "n")
        logits = torch.as_tensor(clean_logits).detach().to("cpu", torch.float64).numpy()
        if logits.shape != (len(indices), self.num_classes):
            raise ValueError(f"clean_logits has shape {logits.shape}, expected ({len(indices)}, {self.num_classes})")
        _eval(self.base_classifier)
        recorded: list[list[tuple[int, ...]]] = [[] for _ in indices]
        active = list(range(len(indices)))
        for sigma in self.sigmas:
            if not active:
                break
            counts, lower = self._counts(images, indices, active, n, sigma, EMPIRICAL_PREDICTION), []
            for row, k in enumerate(active):
                recorded[k].append(tuple(int(v) for v in counts[row]))
                if not empirical_fires(counts[row], self.p0):
                    lower.append(k)
            active = lower
        results = []
        for k, levels in enumerate(recorded):
            d = empirical_cascade_prediction(levels, logits[k], self.p0, unif_w, self.num_classes)
            results.append(EmpiricalPrediction(
                d.prediction, d.fired, d.level, d.stage, self.sigmas[d.stage], d.clean, d.confidence,
                tuple(levels), len(levels) * n,
            ))  # fmt: skip
        return results

    def _counts(self, images, indices, rows, num, sigma, phase, start: int = 0) -> np.ndarray:
        """Host counts [len(rows), num_classes] of the images at positions ``rows`` in one phase."""
        counts = self.counts(images[rows], [indices[k] for k in rows], num, (phase,), start, sigma)
        return counts.cpu().numpy()

    @staticmethod
    def _check(images: torch.Tensor, indices: Sequence[int]) -> list[int]:
        check_images(images, "images", batched=True)
        indices = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if len(indices) != images.shape[0]:
            raise ValueError(f"indices has {len(indices)} entries for {images.shape[0]} images")
        if any(i < 0 for i in indices):
            raise ValueError(f"indices must be dataset indices >= 0, got {indices}")
        return indices


@dataclass(frozen=True)
class Prediction:
    """One PREDICT answer: ``prediction`` (class or ``ABSTAIN``), ``level`` (cascade index, 0 = highest σ, of
    the level that answered; -1 on abstain), ``stage`` and ``sigma`` of the last level visited, that level's
    estimation ``counts`` and the draws spent on the image (``samples``)."""

    prediction: int
    level: int
    stage: int
    sigma: float
    counts: tuple[int, ...] = field(repr=False)
    samples: int


@dataclass(frozen=True)
class EmpiricalPrediction:
    """One answer of the official empirical rule (:meth:`Engine.predict_empirical`; no guarantee): the final
    ``prediction``, the class that fired (``fired``, the official ``pred0``; -1 if none), its ``level``
    (-1 if none), ``stage`` and ``sigma`` of the last level visited, the clean classifier's ``clean``
    class and ``confidence`` (the official ``c_max``), the ``counts`` of every visited level (highest σ
    first) and the draws spent (``samples``)."""

    prediction: int
    fired: int
    level: int
    stage: int
    sigma: float
    clean: int
    confidence: float
    counts: tuple[tuple[int, ...], ...] = field(repr=False)
    samples: int


class IgnoreSigma(torch.nn.Module):
    """A σ-free classifier in the certifiers' signature: ``IgnoreSigma(f)(x_noisy, sigma) = f(x_noisy)``
    (plain Gaussian smoothing: the classifier sees x + δ directly)."""

    def __init__(self, classifier: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.classifier = classifier

    def forward(self, x_noisy: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        return self.classifier(x_noisy)


class SmoothingEngine(Engine):
    """The former one-σ engine: ``Engine(IgnoreSigma(f), num_classes, sigma, **options)`` for f(x)."""

    def __init__(self, base_classifier: Callable, num_classes: int, sigma: float, **options):
        super().__init__(IgnoreSigma(base_classifier), num_classes, sigma, cascade=False, **options)


class MultiScaleEngine(Engine):
    """The former cascade engine: :class:`Engine` with ``cascade=True`` (also for a list of one σ)."""

    def __init__(self, base_classifier: Callable, num_classes: int, sigmas: Sequence[float], p0=0.5, **kw):
        super().__init__(base_classifier, num_classes, sigmas, p0, cascade=True, **kw)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AcceleratedForward:
    """``f(x, *args)`` optionally compiled (fixed shapes) and/or under autocast; logits come back fp32.

    :param fn: the base classifier (a module or callable)
    :param compile: ``False``, ``True`` (default mode) or a ``torch.compile`` mode name
    :param autocast: ``None``, ``"bf16"`` or ``"fp16"``
    """

    def __init__(self, fn: Callable, *, compile: bool | str = False, autocast: str | None = None):
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")
        if not isinstance(compile, bool) and not isinstance(compile, str):
            raise ValueError(f"compile must be a bool or a torch.compile mode name, got {compile!r}")
        self.fn = fn
        self.fixed_shape = compile is not False
        self.compiled = None
        if self.fixed_shape:
            mode = None if compile is True else compile
            self.compiled = torch.compile(fn, mode=mode, dynamic=False)
        self.dtype = AUTOCAST_DTYPES.get(autocast) if autocast else None

    def __call__(self, x: torch.Tensor, *args) -> torch.Tensor:
        return self._run(self.fn if self.compiled is None else self.compiled, x, *args)

    def eager(self, x: torch.Tensor, *args) -> torch.Tensor:
        """The same forward without compilation (any batch size; for probing)."""
        return self._run(self.fn, x, *args)

    def _run(self, fn: Callable, x: torch.Tensor, *args) -> torch.Tensor:
        if self.dtype is None:
            return fn(x, *args)
        with torch.autocast(x.device.type, dtype=self.dtype):
            return fn(x, *args).float()
