"""Batched certification engine: many images × many noise samples per forward pass.

:class:`Smooth` reproduces the reference stream one image at a time. This engine is for throughput and
for distributed, resumable runs:

* samples of several images share one forward of up to ``batch_size`` noisy inputs;
* class counts are accumulated on the device (``bincount``) and copied to the host once per call;
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
its probability) and ``PREDICTION``; multi-scale cascades add the level to the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .checks import check_alpha, check_count, check_images, check_num_classes, check_sigma
from .core import ABSTAIN, Certificate, decide, predict_from_counts, predicted_labels

SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(noisy, owner)`` batches of at most ``batch_size`` samples: ``num`` noisy copies per image,
    image-major; ``owner[j]`` is the position in ``images`` of sample j."""
    generator = torch.Generator(device=images.device)
    pieces: list[torch.Tensor] = []
    owners: list[torch.Tensor] = []
    filled = 0
    for position, (x, index) in enumerate(zip(images, indices)):
        for block, start in enumerate(range(0, num, noise_block)):
            size = min(noise_block, num - start)
            generator.manual_seed(noise_seed(seed, index, stream, block))
            noise = torch.randn((size, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
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
) -> torch.Tensor:
    """Counts [B, num_classes] (on ``images``' device) of f(x_i + δ) over ``num`` draws per image.

    ``images`` [B,C,H,W] hold pixels in [0,1]; σ is in the same units; ``indices`` are the images' dataset
    indices, which key their noise streams.
    """
    count = images.shape[0]
    counts = torch.zeros(count * num_classes, dtype=torch.long, device=images.device)
    with torch.no_grad():
        for noisy, owner in _noisy_batches(
            images, indices, num, sigma, seed, stream, batch_size, noise_block
        ):
            labels = predicted_labels(base_classifier, noisy, num_classes)
            counts += torch.bincount(owner * num_classes + labels, minlength=count * num_classes)
    return counts.view(count, num_classes)


class SmoothingEngine:
    """Certify or predict a batch of images with per-image, batch-size-independent noise streams.

    :param base_classifier: maps [B,C,H,W] noisy [0,1]-pixel inputs to logits [B, num_classes]
    :param num_classes: number of classes (>= 2)
    :param sigma: noise std in [0,1] pixel units
    :param seed: run seed (>= 0); with the dataset index it keys every image's noise
    :param batch_size: noisy samples per forward pass
    :param noise_block: samples per RNG block (part of the reproducibility key; keep the default)
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        seed: int = 0,
        batch_size: int = 1000,
        noise_block: int = NOISE_BLOCK,
    ):
        self.base_classifier = base_classifier
        self.num_classes = check_num_classes(num_classes)
        self.sigma = check_sigma(sigma)
        self.seed = check_count(seed, "seed", minimum=0)
        self.batch_size = check_count(batch_size, "batch_size")
        self.noise_block = check_count(noise_block, "noise_block")

    def counts(
        self, images: torch.Tensor, indices: Sequence[int], num: int, stream: Sequence[int]
    ) -> torch.Tensor:
        """Class counts [B, num_classes] on the device for ``num`` draws per image in ``stream``."""
        return sample_counts(
            self.base_classifier, images, indices, num, self.sigma, self.num_classes,
            seed=self.seed, stream=stream, batch_size=self.batch_size, noise_block=self.noise_block,
        )  # fmt: skip

    def certify(
        self, images: torch.Tensor, indices: Sequence[int], n0: int, n: int, alpha: float
    ) -> list[Certificate]:
        """CERTIFY each image (Cohen's rule, fresh estimation samples); one :class:`Certificate` per image."""
        indices = self._check(images, indices)
        n0, n, alpha = check_count(n0, "n0"), check_count(n, "n"), check_alpha(alpha)
        _eval(self.base_classifier)
        selected = self.counts(images, indices, n0, (SELECTION,)).argmax(1)  # first max on ties
        n_a = self.counts(images, indices, n, (ESTIMATION,)).gather(1, selected[:, None])[:, 0]
        selected, n_a = selected.cpu().tolist(), n_a.cpu().tolist()
        return [decide(c, k, n, alpha, self.sigma) for c, k in zip(selected, n_a)]

    def predict(self, images: torch.Tensor, indices: Sequence[int], n: int, alpha: float) -> list[int]:
        """PREDICT each image (binomial test of the top two counts at level α); ``ABSTAIN`` when unsure."""
        indices = self._check(images, indices)
        n, alpha = check_count(n, "n"), check_alpha(alpha)
        _eval(self.base_classifier)
        counts = self.counts(images, indices, n, (PREDICTION,)).cpu().numpy()
        return [predict_from_counts(row, alpha) for row in counts]

    @staticmethod
    def _check(images: torch.Tensor, indices: Sequence[int]) -> list[int]:
        check_images(images, "images", batched=True)
        indices = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        if len(indices) != images.shape[0]:
            raise ValueError(f"indices has {len(indices)} entries for {images.shape[0]} images")
        if any(i < 0 for i in indices):
            raise ValueError(f"indices must be dataset indices >= 0, got {indices}")
        return indices


def _eval(module) -> None:
    if isinstance(module, torch.nn.Module):
        module.eval()
