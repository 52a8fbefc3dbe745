"""Fake data sets on disk in the real layouts, for smoke tests and the test suite.

Random images, so nothing learnable: they check loading, subsampling, indices and the pipeline, not accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image


class FakeCIFAR10(NamedTuple):
    root: Path
    train_images: np.ndarray  # uint8 [N, 32, 32, 3] (HWC, as torchvision holds them)
    train_labels: list[int]
    test_images: np.ndarray
    test_labels: list[int]


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar10(root: str | Path, n_train: int = 20, n_test: int = 12, seed: int = 0) -> FakeCIFAR10:
    """Write random images in torchvision's CIFAR-10 layout at ``root/cifar-10-batches-py``.

    Same pickles as the real archive (dicts with ``"data"`` uint8 [N, 3072] in CHW order and ``"labels"``,
    plus ``batches.meta`` with ``"label_names"``), but with other md5 checksums. The real files are Python 2
    pickles whose keys torchvision reads back as ``str`` (``encoding="latin1"``), so the keys here are ``str``
    too, not ``bytes``. Training images are split over the five batches.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def write_batch(name: str, n: int) -> tuple[np.ndarray, list[int]]:
        chw = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {"batch_label": name, "labels": labels, "data": chw.reshape(n, 3072)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        return chw.transpose(0, 2, 3, 1), labels

    train = [
        write_batch(f"data_batch_{i + 1}", len(part))
        for i, part in enumerate(np.array_split(range(n_train), 5))
    ]
    test_images, test_labels = write_batch("test_batch", n_test)
    meta = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": 10000}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = [label for _, labels in train for label in labels]
    return FakeCIFAR10(Path(root), train_images, train_labels, test_images, test_labels)


def write_fake_imagefolder(
    root: str | Path,
    classes: tuple[str, ...] = ("n01", "n02", "n03"),
    per_class: int = 2,
    size: tuple[int, int] = (40, 48),
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write ``per_class`` random RGB PNGs of ``size`` (height, width) per class under ``root/<split>/<class>/``."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in classes:
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return Path(root)
