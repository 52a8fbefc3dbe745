"""CIFAR-10 and CIFAR-100 from local torchvision-format folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from msds_lightning.data.datasets import ImageDataModule
from msds_lightning.data.safe_pickle import load_data_pickle

CIFAR10_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
CIFAR10_FILES = tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (
    CIFAR10.meta["filename"],
)


class _SafeCIFARMixin:
    """torchvision's CIFAR10/CIFAR100 with the batches read by :func:`load_data_pickle` (no data file can run
    code) and the md5 check optional: with ``verify_checksums=False`` only the files' presence is required
    (checked by the data module), which also admits re-encoded or synthetic data in the same format."""

    def __init__(self, root, train: bool = True, transform=None, verify_checksums: bool = False) -> None:
        VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        folder = Path(self.root) / self.base_folder
        files = self.train_list if train else self.test_list
        if verify_checksums:
            for name, md5 in [*files, (self.meta["filename"], self.meta["md5"])]:
                if not check_integrity(str(folder / name), md5):
                    raise ValueError(
                        f"{folder / name} failed torchvision's md5 check. Re-extract {self.filename} from "
                        f"{self.url} into {self.root}, or set verify_checksums: false."
                    )
        data, targets = [], []
        for name, _ in files:
            entry = self._load(folder / name)
            images, labels = entry.get("data") if isinstance(entry, dict) else None, None
            if isinstance(entry, dict):
                labels = entry.get("labels", entry.get("fine_labels"))
            if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
                    and images.shape[1] == 3 * 32 * 32 and isinstance(labels, list | np.ndarray)
                    and len(labels) == len(images)):  # fmt: skip
                raise ValueError(
                    f"{folder / name} is not a CIFAR batch (a dict with uint8 'data' [N, 3072] and N "
                    f"'labels'); re-extract {self.filename} from {self.url} into {self.root}"
                )
            data.append(images)
            targets.extend(int(label) for label in labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        self.targets = targets
        meta = self._load(folder / self.meta["filename"])
        if not isinstance(meta, dict) or not isinstance(meta.get(self.meta["key"]), list):
            raise ValueError(f"{folder / self.meta['filename']} lacks the class names {self.meta['key']!r}")
        self.classes = meta[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def _load(self, path: Path):
        try:
            return load_data_pickle(path)
        except ValueError as err:
            raise ValueError(f"{err}. Re-extract {self.filename} from {self.url} into {self.root}.") from err


class SafeCIFAR10(_SafeCIFARMixin, CIFAR10):
    """CIFAR-10 read without unpickling code; same items as torchvision's ``CIFAR10``."""


class SafeCIFAR100(_SafeCIFARMixin, CIFAR100):
    """CIFAR-100 read without unpickling code; same items as torchvision's ``CIFAR100``."""


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (10 classes, 3×32×32) as ``(image, label, index)`` batches with images in [0, 1].

    Args:
        root: folder containing ``cifar-10-batches-py/`` (the extracted ``cifar-10-python.tar.gz``).
        download: download and extract the archive into ``root`` if missing (needs internet).
        verify_checksums: check the files' md5 sums against the official archive (torchvision's check).
            Off by default: presence of all batch files is checked instead, which also admits re-encoded or
            synthetic data in the same format. Either way the batches are read by a restricted unpickler
            (numpy arrays and plain Python data only), so a tampered file cannot run code.
        predict_split: ``"test"`` (default, 10,000 images) or ``"train"``.
        skip: certify every ``skip``-th image of the predict split (locuslab/smoothing's ``--skip``).
        max: certify only indices below ``max`` (``--max``; negative: no bound). See :func:`cohen_indices`.
        batch_size: images per batch (for certification: images handed to the certifier per step).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory`` (useful with a GPU).
        augment: training transform ``RandomCrop(32, padding=4) + RandomHorizontalFlip``; off gives plain
            ``ToTensor`` for training too.

    The eval transform is ``ToTensor()`` only; the validation loader uses the full test split.
    """

    splits = ("train", "test")
    val_split = "test"
    num_classes = 10
    image_shape = (3, 32, 32)
    name, torchvision_cls, dataset_cls, archive = (
        "CIFAR-10",
        CIFAR10,
        SafeCIFAR10,
        "cifar-10-python.tar.gz",
    )

    def __init__(
        self,
        root: str | Path = "data/cifar10",
        download: bool = False,
        verify_checksums: bool = False,
        predict_split: str = "test",
        skip: int = 1,
        max: int = -1,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(predict_split, skip, max, batch_size, num_workers, pin_memory)
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.download = download
        self.verify_checksums = verify_checksums
        self.augment = augment

    def prepare_data(self) -> None:
        if self.download and self._missing_files():
            # torchvision's own download would unpickle the batches with pickle.load afterwards; fetch and
            # extract the md5-checked archive only, and read it with the restricted unpickler later
            cls = self.torchvision_cls
            download_and_extract_archive(cls.url, str(self.root), filename=cls.filename, md5=cls.tgz_md5)

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        if self.download and self._missing_files():
            self.prepare_data()  # only when used outside a Trainer, which calls prepare_data itself
        self._check_root()
        if train and self.augment:
            transform = transforms.Compose(
                [
                    transforms.RandomCrop(32, padding=4),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                ]
            )
        else:
            transform = transforms.ToTensor()
        return self.dataset_cls(
            self.root, train=split == "train", transform=transform, verify_checksums=self.verify_checksums
        )

    @property
    def _folder(self) -> str:
        return self.torchvision_cls.base_folder

    @property
    def _files(self) -> tuple[str, ...]:
        cls = self.torchvision_cls
        return tuple(name for name, _ in cls.train_list + cls.test_list) + (cls.meta["filename"],)

    def _missing_files(self) -> list[str]:
        return [name for name in self._files if not (self.root / self._folder / name).is_file()]

    def _check_root(self) -> None:
        folder = self.root / self._folder
        missing = self._missing_files()
        if missing:
            what = (
                f"{folder} does not exist" if not folder.is_dir() else f"{folder} lacks {', '.join(missing)}"
            )
            raise FileNotFoundError(
                f"{self.name} not found: {what}. Set download: true (needs internet), or download "
                f"{self.archive} (the python version) from {self.torchvision_cls.url} and extract it into "
                f"{self.root} so that {folder} holds {', '.join(self._files)}."
            )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (100 fine classes, 3×32×32); same arguments and layout conventions as
    :class:`CIFAR10DataModule`, with ``root`` holding ``cifar-100-python/``."""

    num_classes = 100
    name, torchvision_cls, dataset_cls, archive = (
        "CIFAR-100",
        CIFAR100,
        SafeCIFAR100,
        "cifar-100-python.tar.gz",
    )

    def __init__(self, root: str | Path = "data/cifar100", **kwargs) -> None:
        super().__init__(root, **kwargs)
