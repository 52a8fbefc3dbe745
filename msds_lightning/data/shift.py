"""Test sets under distribution shift, in their published on-disk formats: CIFAR-10-C / CIFAR-100-C,
CIFAR-10.1, ImageNet-C, ImageNet-R and ImageNet-A.

Every module yields ``(image, label, index)`` with images in [0, 1] like the other data modules, with
``skip``/``max`` subsampling and a stable ``index``.

**The index of a corrupted image** (CIFAR-10-C, CIFAR-100-C, ImageNet-C, the digits stand-in) encodes the
corruption and the severity, so the per-image noise streams (keyed by seed and index), resumption (rows are
keyed by index) and DDP sharding stay exact across a whole suite of corruptions::

    idx = code(corruption) * 5 * per_severity + (severity - 1) * per_severity + image

``code`` is the corruption's position in :data:`CORRUPTIONS` (the 15 benchmark corruptions, then the 4
extra ones, the order of Hendrycks & Dietterich's files), ``image`` the position of the clean test image
(0 .. per_severity - 1: 10,000 for CIFAR, 50,000 for ImageNet). Within one corruption this is the row of
the CIFAR-C ``.npy`` file (severity-major), i.e. the ``idx`` of the official MSDS per-corruption runs. The
code does not depend on which corruptions a run selects, so adding corruptions or severities to a run later
resumes it. Rows of these runs carry ``corruption`` and ``severity`` columns (:meth:`ShiftSelection.row_fields`,
written by the result writers), which ``msds analyze`` groups by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.utils import download_and_extract_archive, download_url

from msds_lightning.data.datasets import ImageDataModule, IndexedSubset, cohen_indices
from msds_lightning.data.digits import DigitsDataModule
from msds_lightning.data.imagenet import _INTERPOLATIONS

# Hendrycks & Dietterich (ICLR 2019): the 15 benchmark corruptions (mCE / mCA are over these) and 4 extra ones.
BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",  # noise
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",  # blur
    "snow", "frost", "fog", "brightness",  # weather
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",  # digital
)  # fmt: skip
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS  # the order of the index code
SEVERITIES = (1, 2, 3, 4, 5)
ROW_COLUMNS = ("corruption", "severity")

CIFAR10C_SOURCE = "https://zenodo.org/records/2535967 (CIFAR-10-C.tar, Hendrycks & Dietterich)"
CIFAR100C_SOURCE = "https://zenodo.org/records/3555552 (CIFAR-100-C.tar, Hendrycks & Dietterich)"
IMAGENETC_SOURCE = (
    "https://zenodo.org/records/2235448 (blur.tar, digital.tar, extra.tar, noise.tar, weather.tar; "
    "Hendrycks & Dietterich)"
)
CIFAR101_SOURCE = "https://github.com/modestyachts/CIFAR-10.1 (folder datasets/)"
IMAGENETR_SOURCE = "https://github.com/hendrycks/imagenet-r (imagenet-r.tar)"
IMAGENETA_SOURCE = "https://github.com/hendrycks/natural-adv-examples (imagenet-a.tar)"


@dataclass(frozen=True)
class ShiftIndex:
    """The index code of corrupted test sets: ``code * 5 * per_severity + (severity - 1) * per_severity +
    image`` with ``code`` the position of the corruption in ``corruptions`` (see the module docstring)."""

    per_severity: int
    corruptions: tuple[str, ...] = CORRUPTIONS

    def __len__(self) -> int:
        return len(self.corruptions) * len(SEVERITIES) * self.per_severity

    def encode(self, corruption: str, severity: int, image: int) -> int:
        if corruption not in self.corruptions:
            raise ValueError(f"unknown corruption {corruption!r}; known: {', '.join(self.corruptions)}")
        if severity not in SEVERITIES or not 0 <= image < self.per_severity:
            raise ValueError(
                f"severity {severity} / image {image} out of range (1..5 / 0..{self.per_severity - 1})"
            )
        code = self.corruptions.index(corruption)
        return (code * len(SEVERITIES) + severity - 1) * self.per_severity + image

    def decode(self, idx: int) -> tuple[str, int, int]:
        """``(corruption, severity, image)`` of an index."""
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} outside 0..{len(self) - 1}")
        block, image = divmod(int(idx), self.per_severity)
        code, severity = divmod(block, len(SEVERITIES))
        return self.corruptions[code], severity + 1, image


def _check_selection(
    corruptions, severities, known: Sequence[str]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    corruptions = (corruptions,) if isinstance(corruptions, str) else tuple(corruptions)
    severities = (severities,) if isinstance(severities, int) else tuple(severities)
    unknown = [c for c in corruptions if c not in known]
    if unknown or not corruptions:
        raise ValueError(f"corruptions: {unknown or 'none given'}; choose among {', '.join(known)}")
    if len(set(corruptions)) != len(corruptions):
        raise ValueError(f"corruptions: {list(corruptions)} names one corruption twice")
    if not severities or any(isinstance(s, bool) or s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be a non-empty list of 1..5, got {list(severities)}")
    if len(set(severities)) != len(severities):
        raise ValueError(f"severities: {list(severities)} names one severity twice")
    return corruptions, tuple(int(s) for s in severities)


class ShiftSelection:
    """What the corrupted test sets share: the selected ``corruptions`` × ``severities``, the index code
    (:class:`ShiftIndex`), the predict set (every ``skip``-th image below ``max`` of each block) and the
    ``corruption``/``severity`` columns of their result rows. Mixed into an :class:`ImageDataModule`."""

    row_columns = ROW_COLUMNS
    shift_index: ShiftIndex
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]

    def row_fields(self, idx: int) -> dict[str, object]:
        """The ``corruption`` and ``severity`` cells of the row of ``idx``."""
        corruption, severity, _ = self.shift_index.decode(idx)
        return {"corruption": corruption, "severity": severity}

    def block_length(self, corruption: str, severity: int) -> int:
        """Images of one corruption at one severity (their ``image`` part runs over 0 .. length - 1)."""
        return self.shift_index.per_severity

    def shift_indices(self) -> list[int]:
        """The indices certified: corruption-major, then severity, then every ``skip``-th image below ``max``."""
        return [
            self.shift_index.encode(c, s, i)
            for c in self.corruptions
            for s in self.severities
            for i in cohen_indices(self.block_length(c, s), self.skip, self.max)
        ]

    def predict_dataset(self) -> IndexedSubset:
        return IndexedSubset(self.dataset(self.predict_split), self.shift_indices())


def _to_tensor(hwc: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float [C, H, W] in [0, 1], exactly as torchvision's ``ToTensor`` (copied out of a
    read-only memory map)."""
    return transforms.functional.to_tensor(np.array(hwc))


def _missing_error(
    name: str, folder: Path, missing: Sequence[str], source: str, layout: str
) -> FileNotFoundError:
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    what = f"{folder} does not exist" if not folder.is_dir() else f"{folder} lacks {shown}"
    return FileNotFoundError(
        f"{name} not found: {what}. Get it from {source} and extract it so that {layout}."
    )


class CorruptionArrays(Dataset):
    """``(image, label)`` of every corruption file ``<corruption>.npy`` of a CIFAR-C folder, addressed by the
    index code (:class:`ShiftIndex`). Each file is a memory map opened on first use (and again in each
    DataLoader worker: the maps are not pickled), so no process reads more than the images it serves."""

    def __init__(self, folder: Path, index: ShiftIndex, labels: np.ndarray, name: str, source: str) -> None:
        self.folder, self.index, self.labels, self.name, self.source = (
            Path(folder),
            index,
            labels,
            name,
            source,
        )
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def array(self, corruption: str) -> np.ndarray:
        """The memory-mapped ``<corruption>.npy``, its shape and dtype checked (nothing else is read)."""
        if corruption not in self._arrays:
            path = self.folder / f"{corruption}.npy"
            if not path.is_file():
                raise _missing_error(self.name, self.folder, [path.name], self.source,
                                     f"{self.folder} holds <corruption>.npy and labels.npy")  # fmt: skip
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(
                    f"{path} is not a numpy array file ({err}); re-extract it from {self.source}"
                ) from None
            expected = (len(SEVERITIES) * self.index.per_severity, 32, 32, 3)
            if array.shape != expected or array.dtype != np.uint8:
                raise ValueError(
                    f"{path} holds {array.dtype} {list(array.shape)}, expected uint8 {list(expected)} (5 severities "
                    f"x {self.index.per_severity:,} images, severity-major); re-extract it from {self.source}"
                )
            self._arrays[corruption] = array
        return self._arrays[corruption]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        corruption, severity, image = self.index.decode(idx)
        row = (severity - 1) * self.index.per_severity + image
        return _to_tensor(self.array(corruption)[row]), int(self.labels[row])


class CIFAR10CDataModule(ShiftSelection, ImageDataModule):
    """CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): the 10,000 CIFAR-10 test images under 19 corruptions
    at 5 severities, as ``(image, label, index)`` batches with images in [0, 1] (3×32×32).

    Args:
        root: the extracted ``CIFAR-10-C`` folder: ``<corruption>.npy`` (uint8 [50000, 32, 32, 3]: severity
            1's 10,000 images, then severity 2's, ..., in test-set order) per corruption, and ``labels.npy``
            ([50000] integers). Published at https://zenodo.org/records/2535967.
        corruptions: corruptions to certify (default: the 15 benchmark corruptions of
            :data:`BENCHMARK_CORRUPTIONS`; the extra ones are ``speckle_noise``, ``gaussian_blur``, ``spatter``
            and ``saturate``).
        severities: severities to certify, of 1..5 (default all).
        skip: certify every ``skip``-th test image (``image % skip == 0``) of each corruption and severity.
        max: certify only test images below ``max`` in each corruption and severity (negative: no bound).
        download: fetch and extract the archive (2.9 GB, md5-checked) into ``root``'s parent when files are
            missing; ``root`` must then be named ``CIFAR-10-C``.
        batch_size, num_workers, pin_memory: as for :class:`~msds_lightning.data.CIFAR10DataModule`.

    The index and the ``corruption``/``severity`` row columns: see :mod:`msds_lightning.data.shift`. Only a
    ``"test"`` split exists (for ``predict``); the eval transform is ``ToTensor`` as for CIFAR-10.
    """

    splits = ("test",)
    train_split = val_split = "test"
    num_classes = 10
    image_shape = (3, 32, 32)
    per_severity = 10_000
    name, folder_name, source = "CIFAR-10-C", "CIFAR-10-C", CIFAR10C_SOURCE
    url, md5 = "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499"

    def __init__(
        self,
        root: str | Path = "data/CIFAR-10-C",
        corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
        severities: Sequence[int] = SEVERITIES,
        skip: int = 1,
        max: int = -1,
        download: bool = False,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__("test", skip, max, batch_size, num_workers, pin_memory)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.corruptions, self.severities = _check_selection(corruptions, severities, CORRUPTIONS)
        self.shift_index = ShiftIndex(self.per_severity)
        self.download = download

    def _missing_files(self) -> list[str]:
        names = ["labels.npy", *(f"{c}.npy" for c in self.corruptions)]
        return [n for n in names if not (self.root / n).is_file()]

    def prepare_data(self) -> None:
        if self.download and self._missing_files():
            if self.root.name != self.folder_name:
                raise ValueError(f"download: the archive extracts to a folder {self.folder_name}; set root to "
                                 f"{self.root.parent / self.folder_name}")  # fmt: skip
            download_and_extract_archive(self.url, str(self.root.parent), filename=f"{self.folder_name}.tar",
                                         md5=self.md5)  # fmt: skip

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split not in self.splits or train:
            raise ValueError(
                f"{self.name} is a test set: only split 'test' without training transforms exists"
            )
        if self.download and self._missing_files():
            self.prepare_data()
        missing = self._missing_files()
        if missing:
            raise _missing_error(self.name, self.root, missing, self.source,
                                 f"{self.root} holds labels.npy and <corruption>.npy for each corruption")  # fmt: skip
        labels_path = self.root / "labels.npy"
        labels = np.load(labels_path, allow_pickle=False)
        if labels.shape != (len(SEVERITIES) * self.per_severity,) or not np.issubdtype(
            labels.dtype, np.integer
        ):
            raise ValueError(f"{labels_path} holds {labels.dtype} {list(labels.shape)}, expected "
                             f"{len(SEVERITIES) * self.per_severity} integer labels; re-extract it from {self.source}")  # fmt: skip
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"{labels_path}: labels outside 0..{self.num_classes - 1}; is this {self.name}?")
        dataset = CorruptionArrays(self.root, self.shift_index, labels, self.name, self.source)
        for corruption in self.corruptions:  # shapes checked now, not hours into a run
            dataset.array(corruption)
        dataset._arrays.clear()  # each process maps the files it reads itself
        return dataset


class CIFAR100CDataModule(CIFAR10CDataModule):
    """CIFAR-100-C: :class:`CIFAR10CDataModule`'s layout and arguments over the CIFAR-100 test images (100
    fine labels), published at https://zenodo.org/records/3555552; ``root`` defaults to ``data/CIFAR-100-C``."""

    num_classes = 100
    name, folder_name, source = "CIFAR-100-C", "CIFAR-100-C", CIFAR100C_SOURCE
    url, md5 = "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar", "11f0ed0f1191edbf9fa23466ae6021d3"

    def __init__(self, root: str | Path = "data/CIFAR-100-C", **kwargs) -> None:
        super().__init__(root, **kwargs)


CIFAR101_COUNTS = {"v4": 2021, "v6": 2000}


class ArrayImages(Dataset):
    """``(image, label)`` from a uint8 [N, H, W, C] array (a memory map) and N labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _to_tensor(self.images[index]), int(self.labels[index])


class CIFAR101DataModule(ImageDataModule):
    """CIFAR-10.1 (Recht et al. 2018): a new CIFAR-10 test set drawn like the original, as ``(image, label,
    index)`` batches with images in [0, 1] (3×32×32, CIFAR-10's classes); ``index`` is the row of the files.

    Args:
        root: the ``datasets`` folder of https://github.com/modestyachts/CIFAR-10.1, holding
            ``cifar10.1_<version>_data.npy`` (uint8 [N, 32, 32, 3]) and ``cifar10.1_<version>_labels.npy`` ([N]).
        version: ``"v6"`` (default, recommended by the authors, 2,000 images; the official MSDS code's) or
            ``"v4"`` (2,021 images, the paper's main tables).
        download: fetch the two files from the repository into ``root`` when missing (needs internet).
        skip, max, batch_size, num_workers, pin_memory: as for :class:`~msds_lightning.data.CIFAR10DataModule`.
    """

    splits = ("test",)
    train_split = val_split = "test"
    num_classes = 10
    image_shape = (3, 32, 32)
    base_url = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"

    def __init__(
        self,
        root: str | Path = "data/CIFAR-10.1",
        version: str = "v6",
        skip: int = 1,
        max: int = -1,
        download: bool = False,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__("test", skip, max, batch_size, num_workers, pin_memory)
        if version not in CIFAR101_COUNTS:
            raise ValueError(f"version must be one of {tuple(CIFAR101_COUNTS)}, got {version!r}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.version = version
        self.download = download

    @property
    def files(self) -> tuple[str, str]:
        return f"cifar10.1_{self.version}_data.npy", f"cifar10.1_{self.version}_labels.npy"

    def prepare_data(self) -> None:
        if self.download:
            for name in self.files:
                if not (self.root / name).is_file():
                    download_url(self.base_url + name, str(self.root), filename=name)

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split not in self.splits or train:
            raise ValueError("CIFAR-10.1 is a test set: only split 'test' without training transforms exists")
        self.prepare_data()
        missing = [n for n in self.files if not (self.root / n).is_file()]
        if missing:
            raise _missing_error(f"CIFAR-10.1 {self.version}", self.root, missing, CIFAR101_SOURCE,
                                 f"{self.root} holds {' and '.join(self.files)} (or set download: true)")  # fmt: skip
        data_path, labels_path = (self.root / n for n in self.files)
        count = CIFAR101_COUNTS[self.version]
        images = np.load(data_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
        if images.shape != (count, 32, 32, 3) or images.dtype != np.uint8:
            raise ValueError(f"{data_path} holds {images.dtype} {list(images.shape)}, expected uint8 "
                             f"[{count}, 32, 32, 3] for CIFAR-10.1 {self.version}; get it from {CIFAR101_SOURCE}")  # fmt: skip
        if (
            labels.shape != (count,)
            or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() > 9
        ):
            raise ValueError(f"{labels_path} holds {labels.dtype} {list(labels.shape)}, expected {count} labels "
                             f"in 0..9; get it from {CIFAR101_SOURCE}")  # fmt: skip
        return ArrayImages(images, labels)


def _eval_transform(resize_size: int | None, crop_size: int, interpolation: str) -> transforms.Compose:
    steps = (
        []
        if resize_size is None
        else [transforms.Resize(resize_size, interpolation=_INTERPOLATIONS[interpolation])]
    )
    return transforms.Compose([*steps, transforms.CenterCrop(crop_size), transforms.ToTensor()])


def _check_transform(resize_size: int | None, crop_size: int, interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATIONS)}, got {interpolation!r}")
    if crop_size < 1 or (resize_size is not None and resize_size < crop_size):
        raise ValueError(
            f"need 1 <= crop_size <= resize_size, got crop_size={crop_size}, resize_size={resize_size}"
        )


class RelabelledFolder(Dataset):
    """An ``ImageFolder`` whose class ``k`` (its k-th sorted folder) is reported as ``to_imagenet[k]``."""

    def __init__(self, folder: ImageFolder, to_imagenet: Sequence[int]) -> None:
        self.folder, self.to_imagenet = folder, list(to_imagenet)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.folder[index]
        return image, self.to_imagenet[label]


def _imagenet_folder(folder: Path, transform, what: str, source: str) -> RelabelledFolder:
    """``folder``'s ``<wnid>/<image>`` files with labels as ImageNet-1k indices (a ``ValueError`` names any
    sub-folder that is not an ImageNet-1k WordNet id)."""
    from msds_lightning.data.imagenet_classes import imagenet_indices

    dataset = ImageFolder(folder, transform=transform)
    try:
        return RelabelledFolder(dataset, imagenet_indices(dataset.classes))
    except ValueError as err:
        raise ValueError(f"{folder}: {err}; {what} has one folder per ImageNet class ({source})") from None


class ImageNetCDataModule(ShiftSelection, ImageDataModule):
    """ImageNet-C (Hendrycks & Dietterich, ICLR 2019): the 50,000 ImageNet validation images under 19
    corruptions at 5 severities, as ``(image, label, index)`` batches with images in [0, 1]; labels are
    ImageNet-1k indices (the sorted WordNet ids, as every ImageNet-1k classifier's outputs).

    Args:
        root: folder with ``<corruption>/<severity>/<wnid>/*.JPEG`` (the five archives of
            https://zenodo.org/records/2235448 extracted into one folder; the images are already 224×224).
        corruptions, severities, skip, max: as for :class:`CIFAR10CDataModule`; ``image`` in the index is the
            position in the ``ImageFolder`` order of the (corruption, severity) folder (classes sorted, then
            file names), the order of the clean validation folder.
        resize_size: ``Resize`` before the center crop, or ``None`` (default: Hendrycks & Dietterich's
            evaluation crops the 224 px images only).
        crop_size: side of the center crop (224).
        interpolation: of the resize: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        batch_size, num_workers, pin_memory: as for :class:`~msds_lightning.data.ImageNetDataModule`.
    """

    splits = ("test",)
    train_split = val_split = "test"
    num_classes = 1000
    per_severity = 50_000

    def __init__(
        self,
        root: str | Path = "data/imagenet-c",
        corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
        severities: Sequence[int] = SEVERITIES,
        skip: int = 1,
        max: int = -1,
        resize_size: int | None = None,
        crop_size: int = 224,
        interpolation: str = "bilinear",
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = False,
    ) -> None:
        super().__init__("test", skip, max, batch_size, num_workers, pin_memory)
        self.save_hyperparameters()
        _check_transform(resize_size, crop_size, interpolation)
        self.root = Path(root).expanduser()
        self.corruptions, self.severities = _check_selection(corruptions, severities, CORRUPTIONS)
        self.shift_index = ShiftIndex(self.per_severity)
        self.transform = _eval_transform(resize_size, crop_size, interpolation)
        self.image_shape = (3, crop_size, crop_size)

    def block_length(self, corruption: str, severity: int) -> int:
        return len(self.dataset("test").block(corruption, severity))

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split not in self.splits or train:
            raise ValueError("ImageNet-C is a test set: only split 'test' without training transforms exists")
        missing = [
            f"{c}/{s}"
            for c in self.corruptions
            for s in self.severities
            if not (self.root / c / str(s)).is_dir()
        ]
        if missing:
            raise _missing_error("ImageNet-C", self.root, missing, IMAGENETC_SOURCE,
                                 f"{self.root} holds <corruption>/<severity>/<wnid>/*.JPEG")  # fmt: skip
        dataset = CorruptionFolders(self.root, self.shift_index, self.transform)
        for c in self.corruptions:  # scanned (and checked) now, not hours into a run
            for s in self.severities:
                dataset.block(c, s)
        return dataset


class CorruptionFolders(Dataset):
    """``(image, label)`` of ImageNet-C's ``<corruption>/<severity>`` folders addressed by the index code;
    each folder is scanned on first use (labels as ImageNet-1k indices)."""

    def __init__(self, root: Path, index: ShiftIndex, transform) -> None:
        self.root, self.index, self.transform = Path(root), index, transform
        self._blocks: dict[tuple[str, int], RelabelledFolder] = {}

    def __len__(self) -> int:
        return len(self.index)

    def block(self, corruption: str, severity: int) -> RelabelledFolder:
        key = (corruption, severity)
        if key not in self._blocks:
            folder = self.root / corruption / str(severity)
            if not folder.is_dir():
                raise _missing_error("ImageNet-C", self.root, [f"{corruption}/{severity}"], IMAGENETC_SOURCE,
                                     f"{self.root} holds <corruption>/<severity>/<wnid>/*.JPEG")  # fmt: skip
            block = _imagenet_folder(folder, self.transform, "ImageNet-C", IMAGENETC_SOURCE)
            if len(block) > self.index.per_severity:
                raise ValueError(f"{folder} holds {len(block):,} images; ImageNet-C has {self.index.per_severity:,} "
                                 "per corruption and severity")  # fmt: skip
            self._blocks[key] = block
        return self._blocks[key]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        corruption, severity, image = self.index.decode(idx)
        return self.block(corruption, severity)[image]


class ImageNetRDataModule(ImageDataModule):
    """ImageNet-R (Hendrycks et al. 2021): 30,000 renditions (art, cartoons, sketches, ...) of 200 ImageNet
    classes, as ``(image, label, index)`` batches with images in [0, 1]. Labels are **ImageNet-1k indices**;
    certify with the classifier wrapped in :class:`~msds_lightning.models.MaskedClassifier` (``classes:
    imagenet-r``) so that predictions range over the 200 classes, as in the official evaluation.

    Args:
        root: the extracted ``imagenet-r`` folder: one sub-folder per WordNet id (``n01443537/*.jpg``), exactly
            the 200 ids of the data set (checked).
        skip, max, batch_size, num_workers, pin_memory: as for :class:`~msds_lightning.data.ImageNetDataModule`;
            ``index`` is the position in ``ImageFolder`` order (classes sorted, then file names).
        resize_size, crop_size, interpolation: the eval transform ``Resize → CenterCrop → ToTensor`` (256 /
            224 / bilinear by default as Hendrycks et al.; MSDS uses 224 / 224 / bicubic).
    """

    splits = ("test",)
    train_split = val_split = "test"
    num_classes = 1000
    subset, title, source = "imagenet-r", "ImageNet-R", IMAGENETR_SOURCE

    def __init__(
        self,
        root: str | Path = "data/imagenet-r",
        skip: int = 1,
        max: int = -1,
        resize_size: int | None = 256,
        crop_size: int = 224,
        interpolation: str = "bilinear",
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = False,
    ) -> None:
        super().__init__("test", skip, max, batch_size, num_workers, pin_memory)
        self.save_hyperparameters()
        _check_transform(resize_size, crop_size, interpolation)
        self.root = Path(root).expanduser()
        self.transform = _eval_transform(resize_size, crop_size, interpolation)
        self.image_shape = (3, crop_size, crop_size)

    def build_dataset(self, split: str, train: bool) -> Dataset:
        from msds_lightning.data.imagenet_classes import subset_wnids

        if split not in self.splits or train:
            raise ValueError(
                f"{self.title} is a test set: only split 'test' without training transforms exists"
            )
        if not self.root.is_dir():
            raise _missing_error(
                self.title, self.root, [], self.source, f"{self.root} holds one folder per WordNet id"
            )
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        expected = subset_wnids(self.subset)
        if found != list(expected):
            lacking, foreign = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
            raise ValueError(
                f"{self.root} is not {self.title}: it should hold exactly its 200 class folders; missing "
                f"{len(lacking)} (e.g. {lacking[:3]}), unexpected {len(foreign)} (e.g. {foreign[:3]}). Get it "
                f"from {self.source}."
            )
        return _imagenet_folder(self.root, self.transform, self.title, self.source)


class ImageNetADataModule(ImageNetRDataModule):
    """ImageNet-A (Hendrycks et al. 2021): 7,500 natural adversarial examples of 200 ImageNet classes; layout,
    labels (ImageNet-1k indices) and arguments as :class:`ImageNetRDataModule` (``root``: the extracted
    ``imagenet-a`` folder; certify with ``MaskedClassifier`` ``classes: imagenet-a``)."""

    subset, title, source = "imagenet-a", "ImageNet-A", IMAGENETA_SOURCE

    def __init__(self, root: str | Path = "data/imagenet-a", **kwargs) -> None:
        super().__init__(root, **kwargs)


# Hendrycks & Dietterich's CIFAR-C parameters (make_cifar_c.py) of the corruptions the digits stand-in applies,
# per severity 1..5; each function takes pixels in [0, 1] [C, H, W] and a seeded generator.
DIGITS_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "contrast", "gaussian_blur")
_CIFAR_C_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "shot_noise": (500, 250, 100, 75, 50),  # photons at intensity 1 (Poisson)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of pixels set to 0 or 1 (salt and pepper)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the per-channel mean
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # blur std in pixels
}


def corrupt(x: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """One of :data:`DIGITS_CORRUPTIONS` at ``severity`` (1..5) with CIFAR-10-C's parameters, on float pixels
    in [0, 1] of shape [C, H, W]; the result is clipped to [0, 1] (not quantized to 8 bits as the files are).

    The same formulas as Hendrycks & Dietterich's ``make_cifar_c.py``, written with numpy / scipy: Gaussian
    noise ``x + N(0, c²)``; shot noise ``Poisson(c·x) / c``; impulse noise (scikit-image's ``s&p``: a share c
    of the values set to 0 or 1 with equal odds); contrast ``(x − mean) · c + mean`` per channel; Gaussian
    blur with std c pixels per channel (scipy ``gaussian_filter``, ``mode="nearest"`` as scikit-image's)."""
    c = _CIFAR_C_PARAMETERS[corruption][severity - 1]
    if corruption == "gaussian_noise":
        y = x + rng.normal(size=x.shape, scale=c)
    elif corruption == "shot_noise":
        y = rng.poisson(x * c) / c
    elif corruption == "impulse_noise":
        hit, salt = rng.random(x.shape) < c, rng.random(x.shape) < 0.5
        y = np.where(hit, salt.astype(x.dtype), x)
    elif corruption == "contrast":
        mean = x.mean(axis=(1, 2), keepdims=True)
        y = (x - mean) * c + mean
    elif corruption == "gaussian_blur":
        from scipy.ndimage import gaussian_filter

        y = gaussian_filter(x, sigma=(0, c, c), mode="nearest")
    else:
        raise ValueError(f"unknown corruption {corruption!r}; choose among {DIGITS_CORRUPTIONS}")
    return np.clip(y, 0.0, 1.0)


class DigitsCorruptions(Dataset):
    """The digits test split under :func:`corrupt`, addressed by the index code; each (corruption, severity)
    block is computed on first use. Image i of a block is corrupted with a generator seeded by (seed, code of
    the corruption, severity, i), so every block is the same on every machine and in every process."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, index: ShiftIndex, seed: int) -> None:
        self.images, self.labels, self.index, self.seed = images, labels, index, int(seed)
        self._blocks: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.index)

    def block(self, corruption: str, severity: int) -> torch.Tensor:
        key = (corruption, severity)
        if key not in self._blocks:
            code = self.index.corruptions.index(corruption)
            pixels = self.images.double().numpy()
            out = [
                corrupt(x, corruption, severity, np.random.default_rng([self.seed, code, severity, i]))
                for i, x in enumerate(pixels)
            ]
            self._blocks[key] = torch.from_numpy(np.stack(out)).to(self.images.dtype)
        return self._blocks[key]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        corruption, severity, image = self.index.decode(idx)
        if corruption not in DIGITS_CORRUPTIONS:
            raise ValueError(f"the digits stand-in has no {corruption!r}; it applies {DIGITS_CORRUPTIONS}")
        return self.block(corruption, severity)[image], int(self.labels[image])


class DigitsShiftDataModule(ShiftSelection, DigitsDataModule):
    """A small real stand-in for CIFAR-10-C: the scikit-learn digits test split under a few of CIFAR-10-C's
    corruptions (:func:`corrupt`, with its parameters), computed on the fly (no files), as ``(image, label,
    index)`` batches with images in [0, 1]. The index code and the ``corruption``/``severity`` row columns are
    CIFAR-10-C's (:mod:`msds_lightning.data.shift`) with ``per_severity`` = the size of the test split.

    Args:
        corruptions: of ``gaussian_noise``, ``shot_noise``, ``impulse_noise``, ``contrast``, ``gaussian_blur``
            (default all five).
        severities: of 1..5 (default 1, 2, 3: the digits are 8×8 with 17 gray levels, so the higher CIFAR
            severities leave little of them).
        seed: seed of the corruptions' randomness (noise and impulse positions).
        skip, max: every ``skip``-th test digit below ``max`` in each corruption and severity.
        image_size, channels, interpolation, test_fraction, split_seed, val_fraction, batch_size, num_workers,
            pin_memory: as for :class:`~msds_lightning.data.DigitsDataModule` (the corruption is applied after
            the resize, at the size the classifier sees).
    """

    def __init__(
        self,
        corruptions: Sequence[str] = DIGITS_CORRUPTIONS,
        severities: Sequence[int] = (1, 2, 3),
        seed: int = 0,
        skip: int = 1,
        max: int = -1,
        image_size: int = 16,
        channels: int = 3,
        interpolation: str = "bilinear",
        test_fraction: float = 0.25,
        split_seed: int = 0,
        val_fraction: float = 0.0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(image_size=image_size, channels=channels, interpolation=interpolation,
                         test_fraction=test_fraction, split_seed=split_seed, val_fraction=val_fraction,
                         predict_split="test", skip=skip, max=max, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, augment=False)  # fmt: skip
        self.corruptions, self.severities = _check_selection(corruptions, severities, DIGITS_CORRUPTIONS)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self.shift_index = ShiftIndex(len(self.split_indices("test")))

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split != "test" or train:
            return super().build_dataset(split, train)  # the clean splits, e.g. for validation
        indices = torch.from_numpy(self.split_indices("test"))
        images, labels = self.all_tensors()
        return DigitsCorruptions(images[indices], labels[indices], self.shift_index, self.seed)
