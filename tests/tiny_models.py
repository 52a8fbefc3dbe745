"""Tiny, seeded, random-weight models and fake data sets on disk in the real layouts, for the test suite and
smoke tests (CPU, no downloads). Scripts run from the repository root import them as ``tests.tiny_models``.

They certify nothing meaningful; they exercise the whole pipeline (configs, data, DDP, writers) in seconds.
Fake data sets hold random images, so nothing learnable: they check loading, subsampling, indices and the
pipeline, not accuracy.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from msds_lightning.models import Classifier, DenoiseAndClassify, DiffusionDenoiser

__all__ = [
    "CIFAR10_CLASSES",
    "COSINE_SCHEDULE",
    "FakeCIFAR10",
    "LINEAR_SCHEDULE",
    "tiny_classifier",
    "tiny_denoiser",
    "tiny_unet_config",
    "write_fake_cifar10",
    "write_fake_cifar10c",
    "write_fake_imagefolder",
]

LINEAR_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
COSINE_SCHEDULE = {"num_train_timesteps": 4000, "beta_schedule": "squaredcos_cap_v2"}


def tiny_unet_config(
    learned_variance: bool = False, sample_size: int = 32, channels: int = 3
) -> dict[str, Any]:
    """A ``UNet2DModel`` config with ~40k parameters and a downsampling factor of 2 (no attention)."""
    return {
        "sample_size": sample_size,
        "in_channels": channels,
        "out_channels": 2 * channels if learned_variance else channels,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
        "add_attention": False,
    }


def tiny_denoiser(
    schedule: str = "linear",
    num_train_timesteps: int | None = None,
    learned_variance: bool = False,
    sample_size: int = 32,
    channels: int = 3,
    seed: int = 0,
    **options: Any,
) -> DiffusionDenoiser:
    """A random-weight :class:`DiffusionDenoiser` (deterministic for a given ``seed``), in eval mode.

    ``schedule`` is ``"linear"`` (β 1e-4 → 0.02, T=1000) or ``"cosine"`` (T=4000); ``num_train_timesteps``
    overrides T. ``options`` go to the denoiser (``rescale_timesteps``, ``pad_to``).
    """
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
    scheduler = dict(LINEAR_SCHEDULE if schedule == "linear" else COSINE_SCHEDULE)
    if num_train_timesteps is not None:
        scheduler["num_train_timesteps"] = num_train_timesteps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser = DiffusionDenoiser.from_config(
            tiny_unet_config(learned_variance, sample_size, channels), scheduler, **options
        )
    return denoiser.eval()


def tiny_classifier(num_classes: int = 10, image_size: int = 32, seed: int = 0, **kwargs: Any) -> Classifier:
    """A random-weight timm ``test_vit`` (~0.3M parameters) at ``image_size`` wrapped in :class:`Classifier`.

    ``kwargs`` go to :class:`Classifier` (``mean``, ``std``, ``input_size``, ``checkpoint``, ...).
    """
    model_kwargs = {"img_size": image_size, **kwargs.pop("model_kwargs", {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = Classifier("test_vit", num_classes=num_classes, model_kwargs=model_kwargs, **kwargs)
    return classifier.eval()


def tiny_assets_base_classifier(root: str | Path) -> DenoiseAndClassify:
    """The base classifier f(x_noisy, σ) that a config over the ``tiny_assets`` folder builds: its denoiser
    folder and its ``test_vit`` weights (what the end-to-end tests recompute rows with)."""
    root = Path(root)
    classifier = Classifier(
        "test_vit", 10, checkpoint=root / "classifier.safetensors", mean=[0.5] * 3, std=[0.5] * 3,
        model_kwargs={"img_size": 32},
    ).eval()  # fmt: skip
    return DenoiseAndClassify(DiffusionDenoiser.from_pretrained(root / "denoiser"), classifier)


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


def write_fake_cifar10c(
    folder: str | Path, corruptions: tuple[str, ...] = ("gaussian_noise", "fog"), filled: int = 4,
    num_classes: int = 10, seed: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Write a CIFAR-10-C folder in the published format: ``<corruption>.npy`` uint8 [50000, 32, 32, 3]
    (severity-major: row (s - 1) * 10000 + i is test image i at severity s) and ``labels.npy`` ([50000]
    uint8, the test labels tiled over the 5 severities). Only the first ``filled`` images of each severity get
    random pixels; the rest stay zero, so the files are sparse (a few KB on disk, 150 MB in size).
    Returns ``{corruption: the filled rows [5, filled, 32, 32, 3]}`` and ``"labels"`` ([50000])."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.tile(rng.integers(0, num_classes, size=10_000), 5).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    written: dict[str, np.ndarray] = {"labels": labels}
    for name in corruptions:
        array = np.lib.format.open_memmap(
            folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(50_000, 32, 32, 3)
        )
        rows = rng.integers(0, 256, size=(5, filled, 32, 32, 3), dtype=np.uint8)
        for s in range(5):
            array[s * 10_000 : s * 10_000 + filled] = rows[s]
        array.flush()
        del array
        written[name] = rows
    return written
