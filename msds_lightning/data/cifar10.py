"""CIFAR-10 and CIFAR-100 from local torchvision-format folders."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100

from msds_lightning.data.datasets import ImageDataModule

CIFAR10_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
CIFAR10_FILES = tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (
    CIFAR10.meta["filename"],
)


class _CIFAR10NoChecksum(CIFAR10):
    """torchvision's CIFAR10 with the md5 checks reduced to "the file exists" (``check_integrity(path, None)``)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100NoChecksum(CIFAR100):
    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (10 classes, 3×32×32) as ``(image, label, index)`` batches with images in [0, 1].

    Args:
        root: folder containing ``cifar-10-batches-py/`` (the extracted ``cifar-10-python.tar.gz``).
        download: download and extract the archive into ``root`` if missing (needs internet).
        verify_checksums: check the files' md5 sums against the official archive (torchvision's check).
            Off by default: presence of all batch files is checked instead, which also admits re-encoded or
            synthetic data in the same format.
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
    name, torchvision_cls, unchecked_cls, archive = (
        "CIFAR-10",
        CIFAR10,
        _CIFAR10NoChecksum,
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
        if self.download:
            self.torchvision_cls(self.root, train=True, download=True)

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
        dataset_cls = self.torchvision_cls if self.verify_checksums else self.unchecked_cls
        try:
            return dataset_cls(self.root, train=split == "train", transform=transform)
        except RuntimeError as err:  # torchvision's "not found or corrupted"
            raise RuntimeError(
                f"{self.name} files in {self.root / self._folder} failed torchvision's md5 check ({err}). "
                f"Re-extract {self.archive} from {self.torchvision_cls.url} there, or set verify_checksums: false."
            ) from err

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
    name, torchvision_cls, unchecked_cls, archive = (
        "CIFAR-100",
        CIFAR100,
        _CIFAR100NoChecksum,
        "cifar-100-python.tar.gz",
    )

    def __init__(self, root: str | Path = "data/cifar100", **kwargs) -> None:
        super().__init__(root, **kwargs)
