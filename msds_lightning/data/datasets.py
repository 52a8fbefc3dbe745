"""Helpers shared by the data modules: index subsampling, ``(image, label, index)`` samples, loaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset


def cohen_indices(length: int, skip: int = 1, max: int = -1) -> list[int]:
    """Indices certified by locuslab/smoothing's ``--skip``/``--max``: ``i % skip == 0`` and ``i < max``.

    Args:
        length: size of the dataset.
        skip: keep every ``skip``-th index, starting at 0 (``skip >= 1``).
        max: exclusive upper bound on the index; negative means no bound.

    Cohen et al.'s loop ``for i in range(len(dataset)): if i % skip != 0: continue; if i == max: break``
    only stops at ``max`` when ``max`` is itself a multiple of ``skip``; otherwise it runs over the whole
    dataset. Here ``max`` is always an exclusive bound, which equals Cohen's behaviour whenever his loop
    stops at all.
    """
    if skip < 1:
        raise ValueError(f"skip must be >= 1, got {skip}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    stop = length if max < 0 else min(max, length)
    return list(range(0, stop, skip))


class IndexedSubset(Dataset):
    """View of ``dataset`` (yielding ``(image, label)``) that yields ``(image, label, index)``.

    ``index`` is the position in the *original* dataset, so results written per sample can be matched to
    the dataset (and to Cohen et al.'s ``idx`` column) however the dataset was subsampled.

    Args:
        dataset: any map-style dataset returning ``(image, label)``.
        indices: original indices to expose, in order; ``None`` means all of them.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
        out_of_range = [i for i in self.indices if not 0 <= i < len(dataset)]
        if out_of_range:
            raise ValueError(
                f"indices: {out_of_range[:5]} out of range for a dataset of length {len(dataset)}"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Any, int, int]:
        index = self.indices[position]
        image, label = self.dataset[index]
        return image, int(label), index


class ImageDataModule(LightningDataModule):
    """Shared loader logic of the image data modules; subclasses say how to build a split.

    Every loader yields ``(image, label, index)`` batches: images [B, C, H, W] float in [0, 1] (no
    normalization; that belongs to the classifier), labels and original dataset indices as int64 [B].

    Args:
        predict_split: split certified by ``predict_dataloader``.
        skip: keep every ``skip``-th index of the predict split (see :func:`cohen_indices`).
        max: exclusive bound on the predict split's indices; negative means none.
        batch_size: images per batch (for certification: images handed to the certifier per step).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory`` (useful when a GPU is used).
    """

    splits: tuple[str, ...] = ()
    train_split = "train"
    val_split = "val"
    num_classes: int
    image_shape: tuple[int, int, int]

    def __init__(
        self,
        predict_split: str,
        skip: int = 1,
        max: int = -1,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if predict_split not in self.splits:
            raise ValueError(f"predict_split must be one of {self.splits}, got {predict_split!r}")
        if skip < 1:
            raise ValueError(f"skip must be >= 1, got {skip}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.predict_split = predict_split
        self.skip = skip
        self.max = max
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self._datasets: dict[tuple[str, bool], Dataset] = {}

    def build_dataset(self, split: str, train: bool) -> Dataset:
        """Return the ``(image, label)`` dataset of ``split`` with training (``train=True``) or eval transforms."""
        raise NotImplementedError

    def dataset(self, split: str, train: bool = False) -> Dataset:
        """Cached :meth:`build_dataset`."""
        key = (split, train)
        if key not in self._datasets:
            self._datasets[key] = self.build_dataset(split, train)
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        # Build (and so check) what the stage needs early, before a long run starts.
        if stage in (None, "fit"):
            self.dataset(self.train_split, train=True)
        if stage in (None, "fit", "validate"):
            self.dataset(self.val_split)
        if stage in (None, "predict"):
            self.predict_dataset()

    def predict_dataset(self) -> IndexedSubset:
        """The predict split, subsampled by ``skip``/``max``, yielding ``(image, label, index)``."""
        dataset = self.dataset(self.predict_split)
        return IndexedSubset(dataset, cohen_indices(len(dataset), self.skip, self.max))

    def train_dataloader(self) -> DataLoader:
        return self._loader(IndexedSubset(self.dataset(self.train_split, train=True)), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(IndexedSubset(self.dataset(self.val_split)), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset(), shuffle=False)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
