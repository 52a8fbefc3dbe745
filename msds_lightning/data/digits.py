"""scikit-learn's handwritten digits (1,797 real 8×8 images, 10 classes), shipped with scikit-learn: no download.

A small real data set for quick end-to-end runs (train a classifier, certify it) on a CPU.
"""

from __future__ import annotations

from functools import lru_cache
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from msds_lightning.data.datasets import ImageDataModule

DIGITS_COUNT = 1797  # images in sklearn's digits
DIGITS_SIZE = 8  # sklearn's images are 8×8
DIGITS_MAX = 16.0  # pixel values are integers 0..16
INTERPOLATIONS = ("bilinear", "bicubic")


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as ``(images float64 [1797, 8, 8] in 0..16, labels int64 [1797])``, read once."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn takes ~1.5 s to import

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    labels = np.asarray(digits.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into ``(train, test)`` index arrays, each sorted.

    The test set has ``round(len(labels) * test_fraction)`` items, spread over the classes in proportion to
    their sizes (largest-remainder rounding, ties to the lower class), so every class's share in each split
    is within one item of proportional. Within each class the test items are the first ones of a permutation
    drawn by ``numpy.random.RandomState(seed)``, whose stream numpy keeps fixed across versions and
    platforms: the same arguments give the same split on every machine.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(round(len(labels) * test_fraction))
    quota = counts * (n_test / len(labels))
    per_class = np.floor(quota).astype(np.int64)
    remainder = quota - per_class
    # Largest remainders get the leftover items; a stable sort breaks ties towards the lower class.
    for c in np.argsort(-remainder, kind="stable")[: n_test - int(per_class.sum())]:
        per_class[c] += 1
    rng = np.random.RandomState(seed)
    test = []
    for cls, k in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        test.append(members[rng.permutation(len(members))[:k]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)  # sorted
    return train, test


class TensorImageDataset(Dataset):
    """``(image, label)`` pairs from precomputed tensors, optionally randomly translated.

    Args:
        images: float [N, C, H, W] in [0, 1].
        labels: int64 [N].
        shift: maximal translation in pixels, drawn uniformly per image and axis from ``-shift..shift``
            with torch's global generator; vacated pixels are 0 (the digits' background). 0: no augmentation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0) -> None:
        if len(images) != len(labels):
            raise ValueError(f"labels: {len(labels)} labels for {len(images)} images")
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        self.images = images
        self.labels = labels
        self.shift = shift

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.shift:
            s = self.shift
            dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
            h, w = image.shape[-2:]
            padded = F.pad(image, (s, s, s, s))
            image = padded[:, s - dy : s - dy + h, s - dx : s - dx + w]
        return image, int(self.labels[index])


class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits as ``(image, label, index)`` batches with images in [0, 1].

    The data (1,797 real 8×8 grayscale scans with integer pixel values 0..16, 10 classes, about 180 per
    class) ships inside scikit-learn (:func:`sklearn.datasets.load_digits`); nothing is downloaded. Pixels
    are divided by 16, resized to ``image_size`` × ``image_size`` and the gray channel is repeated to
    ``channels``; the tensors are computed once per module (about 3 MB at the defaults).

    Splits ``"train"`` and ``"test"`` are a fixed, seeded, stratified partition (see :func:`stratified_split`):
    the same on every machine for the same ``test_fraction`` and ``split_seed``. Each split keeps the
    original order of sklearn's array, and the ``index`` yielded with each sample is the **position within
    the chosen split** (0 .. len(split) − 1), not the position in sklearn's array; :meth:`split_indices`
    maps one to the other. At the defaults the test split has 449 images and the train split 1,348.

    Args:
        image_size: output height and width in pixels (>= 1; default 16, twice the native 8).
        channels: 3 (default; the gray value repeated, for RGB models) or 1.
        interpolation: ``"bilinear"`` (default) or ``"bicubic"``, with antialiasing; the result is clamped
            to [0, 1]. Unused when ``image_size == 8``.
        test_fraction: share of the images in the test split (default 0.25); the test split has
            ``round(1797 * test_fraction)`` images, which must leave both splits non-empty.
        split_seed: seed of the split, an integer in [0, 2**32) (default 0).
        val_fraction: share of the *train* split held out as a validation split ``"val"`` (stratified and
            seeded the same way, default 0: no validation split, validation runs on the test split as for
            CIFAR-10). With ``val_fraction > 0`` the models never see the validation digits, validation
            runs on them, and settings can be chosen by certifying ``predict_split: val`` while the test
            split stays untouched.
        predict_split: ``"test"`` (default), ``"train"`` or (with ``val_fraction > 0``) ``"val"``.
        skip: certify every ``skip``-th image of the predict split (locuslab/smoothing's ``--skip``).
        max: certify only indices below ``max`` (``--max``; negative: no bound). See :func:`cohen_indices`.
        batch_size: images per batch (for certification: images handed to the certifier per step).
        num_workers: DataLoader worker processes (0 is fine: the data are in memory).
        pin_memory: DataLoader ``pin_memory`` (useful with a GPU).
        augment: training images are translated by a random −1..1 pixels (of the output size) per axis,
            zero-padded; no flips (digits are not mirror-symmetric). Off: training images as evaluated.

    The validation loader uses the ``"val"`` split when there is one, else the test split (as for CIFAR-10).
    """

    splits = ("train", "val", "test")
    num_classes = 10

    def __init__(
        self,
        image_size: int = 16,
        channels: int = 3,
        interpolation: str = "bilinear",
        test_fraction: float = 0.25,
        split_seed: int = 0,
        val_fraction: float = 0.0,
        predict_split: str = "test",
        skip: int = 1,
        max: int = -1,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(predict_split, skip, max, batch_size, num_workers, pin_memory)
        if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size < 1:
            raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if (
            isinstance(test_fraction, bool)
            or not isinstance(test_fraction, Real)
            or not 0 < test_fraction < 1  # False for NaN
            or not 0 < round(DIGITS_COUNT * test_fraction) < DIGITS_COUNT
        ):
            raise ValueError(
                f"test_fraction must be in (0, 1) and leave both splits of the {DIGITS_COUNT} digits "
                f"non-empty, got {test_fraction!r}"
            )
        if (
            isinstance(split_seed, bool)
            or not isinstance(split_seed, Integral)
            or not 0 <= split_seed < 2**32
        ):
            raise ValueError(f"split_seed must be an integer in [0, 2**32), got {split_seed!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1) (share of the train split), got {val_fraction!r}")
        if predict_split == "val" and val_fraction == 0:
            raise ValueError("predict_split 'val' needs a validation split: set val_fraction > 0 (e.g. 0.2)")
        self.save_hyperparameters()
        self.val_fraction = float(val_fraction)
        self.val_split = "val" if self.val_fraction > 0 else "test"
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.interpolation = interpolation
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.augment = augment
        self.image_shape = (self.channels, self.image_size, self.image_size)
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self._split_indices: dict[str, np.ndarray] | None = None

    def split_indices(self, split: str) -> np.ndarray:
        """Positions in sklearn's ``load_digits()`` arrays of the images of ``split``, in split order.

        ``split_indices("test")[i]`` is the sklearn index of the test image yielded with ``index == i``.
        """
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        if self._split_indices is None:
            _, labels = _load_digits()
            train, test = stratified_split(labels, self.test_fraction, self.split_seed)
            if len(train) == 0 or len(test) == 0:
                raise ValueError(
                    f"test_fraction {self.test_fraction} leaves the {'train' if len(train) == 0 else 'test'} "
                    f"split of the {len(labels)} digits empty"
                )
            val = train[:0]
            if self.val_fraction > 0:  # a stratified part of train, by the same rule, on train's labels
                fit, held_out = stratified_split(labels[train], self.val_fraction, self.split_seed)
                if len(fit) == 0 or len(held_out) == 0:
                    raise ValueError(f"val_fraction {self.val_fraction} leaves the train or val split empty")
                train, val = train[fit], train[held_out]
            self._split_indices = {"train": train, "val": val, "test": test}
        if split == "val" and self.val_fraction == 0:
            raise ValueError("there is no 'val' split: set val_fraction > 0")
        return self._split_indices[split].copy()

    def all_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every digit, preprocessed: images float32 [1797, C, S, S] in [0, 1], labels int64 [1797]."""
        if self._tensors is None:
            images, labels = _load_digits()
            x = torch.from_numpy(images / DIGITS_MAX).to(torch.float32).unsqueeze(1)  # [N, 1, 8, 8]
            if self.image_size != DIGITS_SIZE:
                x = F.interpolate(
                    x,
                    size=(self.image_size, self.image_size),
                    mode=self.interpolation,
                    align_corners=False,
                    antialias=True,
                ).clamp_(0.0, 1.0)
            x = x.repeat(1, self.channels, 1, 1).contiguous()
            self._tensors = (x, torch.from_numpy(labels.copy()))
        return self._tensors

    def build_dataset(self, split: str, train: bool) -> Dataset:
        indices = torch.from_numpy(self.split_indices(split))
        images, labels = self.all_tensors()
        shift = 1 if train and self.augment else 0
        return TensorImageDataset(images[indices], labels[indices], shift=shift)
