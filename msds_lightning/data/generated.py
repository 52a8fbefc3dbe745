"""Diffusion-generated training images mixed with real ones (Wang, Pang et al., ICML 2023).

The file format and its conversion to memory-mappable ``.npy`` files live in :mod:`.generated_files`;
:class:`GeneratedImages` opens the converted pair with ``np.load(mmap_mode="r")``: pages are read on
demand and shared between DataLoader workers.

:class:`MixedBatchSampler` draws the reference's batches (a fixed share of generated images per batch), and
:class:`MixedDataModule` puts a real data module and generated files together for training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torchvision import transforms

from msds_lightning.data.datasets import ImageDataModule, IndexedSubset
from msds_lightning.data.generated_files import check_generated_arrays, prepare_generated


class GeneratedImages(Dataset):
    """Generated images from an ``.npz`` (``image`` uint8 N×H×W×C, ``label`` int64 N), memory-mapped.

    On first use the archive is converted to ``<stem>.image.npy`` / ``<stem>.label.npy`` beside it (or in
    ``cache_dir``; see :func:`prepare_generated`); both are then opened with ``np.load(mmap_mode="r")``, so
    a 50M-image set needs neither 2× nor 1× its size in RAM. Items are ``(image, label, index)`` like the
    other data sets: image float32 [C, H, W] in [0, 1] (``transform`` applied to it if given), label int,
    index = position in the file.

    Args:
        path: the ``.npz`` file (it may be gone if its ``.npy`` pair exists).
        transform: callable on the [C, H, W] float tensor (e.g. random crop and flip), or ``None``.
        cache_dir: folder for the ``.npy`` pair (default: the ``.npz``'s folder).

    The arrays are opened lazily and not pickled, so DataLoader workers each map the files themselves.
    """

    def __init__(
        self,
        path: str | Path,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        self.transform = transform
        self.cache_dir = cache_dir
        self.image_path, self.label_path = prepare_generated(self.path, cache_dir)
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        images, labels = self.images, self.labels  # open now: wrong shapes fail here, not in a worker
        self._check_pair(images, labels)
        if len(labels) and int(labels.min()) < 0:
            raise ValueError(f"{self.label_path}: labels must be >= 0, got {int(labels.min())}")

    def _check_pair(self, images: np.ndarray, labels: np.ndarray) -> None:
        check_generated_arrays(images, labels, f"{self.image_path} / {self.label_path}")

    @property
    def images(self) -> np.ndarray:
        """uint8 [N, H, W, C], a read-only memory map."""
        if self._images is None:
            self._images = np.load(self.image_path, mmap_mode="r")
        return self._images

    @property
    def labels(self) -> np.ndarray:
        """int64 [N], a read-only memory map."""
        if self._labels is None:
            self._labels = np.load(self.label_path, mmap_mode="r")
        return self._labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the items."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        index = int(index)
        if index < 0:
            index += len(self)
        image = torch.from_numpy(np.array(self.images[index])).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), index

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = state["_labels"] = None  # a memmap would pickle its whole content
        return state


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of real and generated indices in a fixed ratio (the reference's ``SemiSupervisedSampler``).

    Indices address ``ConcatDataset([real, generated])``: ``0 .. num_real − 1`` are real,
    ``num_real .. num_real + num_generated − 1`` generated. Every batch holds ``g = floor(batch_size ·
    generated_fraction)`` generated indices drawn uniformly *with* replacement and ``batch_size − g`` real
    indices taken in order from a shuffled pass over the real set (a new shuffle when a pass is used up),
    in random order within the batch. An epoch is ``num_batches`` batches, however many images there are.

    Distributed: ``batch_size`` is per rank (Lightning's convention; the global batch is
    ``batch_size · num_replicas``, so the reference's B = 512 on 4 GPUs is ``batch_size = 128``). All ranks
    draw the same shuffle of the real set for a pass and rank ``r`` takes its elements ``r, r + R, ...``,
    so within a pass the ranks see disjoint real images; generated draws and the in-batch order use a
    per-rank stream. Default ``num_batches`` = ``ceil(num_real / (batch_size · num_replicas))``: one pass
    over the real data per epoch in total, as the reference's ``ceil(50000 / B)`` (which counts the 1,024
    held-out images too: pass ``num_batches = 98`` for its CIFAR-10 B = 512 exactly).

    Deterministic in ``(seed, epoch, rank, num_replicas)``; :meth:`set_epoch` selects the epoch. Lightning
    calls ``set_epoch`` only on ``loader.sampler`` and ``loader.batch_sampler.sampler``, so ``.sampler``
    is a small object forwarding ``set_epoch`` here.

    Differences from the reference: its real stream restarts with a fresh shuffle at each pass, giving a
    batch fewer real (and more generated) images at the end of a pass; here a batch straddling two passes
    takes the rest from the next pass, so every batch has exactly ``batch_size − g`` real images (such a
    batch may repeat an image). Its generator is torch's global RNG; here numpy generators seeded by
    ``(seed, epoch, ...)``.
    """

    def __init__(
        self,
        num_real: int,
        num_generated: int,
        batch_size: int,
        generated_fraction: float = 0.7,
        num_batches: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= generated_fraction <= 1.0:
            raise ValueError(f"generated_fraction must be in [0, 1], got {generated_fraction}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank {rank} of {num_replicas}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_real = int(num_real)
        self.num_generated = int(num_generated)
        self.batch_size = int(batch_size)
        self.generated_fraction = float(generated_fraction)
        self.generated_per_batch = math.floor(self.batch_size * self.generated_fraction)
        self.real_per_batch = self.batch_size - self.generated_per_batch
        if self.generated_per_batch and self.num_generated < 1:
            raise ValueError("generated_fraction > 0 needs at least one generated image")
        if self.real_per_batch and self.num_real < num_replicas:
            raise ValueError(
                f"{self.real_per_batch} real images per batch need at least one real image per rank "
                f"({num_replicas} ranks), got {self.num_real}"
            )
        if num_batches is None:
            num_batches = max(1, math.ceil(self.num_real / (self.batch_size * num_replicas)))
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = int(num_batches)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self.sampler = _SetEpochForwarder(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _real_stream(self) -> Iterator[int]:
        pass_index = 0
        while True:
            rng = np.random.default_rng([self.seed, self.epoch, pass_index, 0])
            yield from rng.permutation(self.num_real)[self.rank :: self.num_replicas].tolist()
            pass_index += 1

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.num_replicas, self.rank, 1])
        real = self._real_stream()
        for _ in range(self.num_batches):
            batch = [next(real) for _ in range(self.real_per_batch)]
            if self.generated_per_batch:
                drawn = rng.integers(0, self.num_generated, size=self.generated_per_batch)
                batch += (drawn + self.num_real).tolist()
            yield [batch[i] for i in rng.permutation(len(batch))]


class _SetEpochForwarder:
    """``batch_sampler.sampler`` of a :class:`MixedBatchSampler`: Lightning calls ``set_epoch`` here."""

    def __init__(self, owner: MixedBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class _Transformed(Dataset):
    """``(transform(image), label)`` of an ``(image, label)`` data set."""

    def __init__(self, dataset: Dataset, transform: Callable | None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index][:2]
        return (self.transform(image) if self.transform is not None else image), label


class _OffsetIndex(Dataset):
    """An ``(image, label, index)`` data set with ``offset`` added to ``index``."""

    def __init__(self, dataset: Dataset, offset: int) -> None:
        self.dataset = dataset
        self.offset = offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label, i = self.dataset[index]
        return image, label, i + self.offset


class MixedDataModule(LightningDataModule):
    """A real data module's training split plus generated ``.npz`` files, mixed per batch (Wang, Pang et al.).

    * **train**: the real training split without its first ``val_size`` images, and the generated files
      (concatenated), both with the same augmentation (random crop with ``crop_padding``, horizontal
      ``flip``, ``rotation`` degrees; the reference's CIFAR-10 ``base`` is padding 4 + flip, CIFAR-100 adds
      15°). The real module's own training transform is not used (its un-augmented images are taken).
      Batches come from :class:`MixedBatchSampler` (``generated_fraction`` of every batch generated,
      ``epoch_batches`` batches per epoch). Items are ``(image, label, index)``; ``index`` is the original
      index for real images and ``len(real train split) + position`` in the generated files for generated
      ones, so ``index >= len(real train split)`` marks a generated image. With no generated files and
      ``generated_fraction: 0`` this is simply the real training data with a held-out validation split and
      the augmentation chosen here (the IDC configs use it so).
    * **val**: the first ``val_size`` real training images, un-augmented (the reference holds out 1,024
      for checkpoint selection); ``val_size = 0`` uses the real module's validation split instead.
    * **test** and **predict**: the real test split (predict: the real module's predict split with its
      ``skip``/``max``).

    Distributed training: each rank gets its own sampler (rank and world size read from the trainer); set
    ``trainer.use_distributed_sampler: false``, otherwise Lightning would try to put a DistributedSampler
    into the batch sampler (this module raises a ``ValueError`` saying so). ``batch_size`` is per device.

    Args:
        real: the real data module (e.g. :class:`~msds_lightning.data.CIFAR10DataModule`,
            :class:`~msds_lightning.data.DigitsDataModule`); its ``num_classes`` is this module's.
        generated: one ``.npz`` path or a list (e.g. the parts of a 20M set); converted to memory-mapped
            ``.npy`` once (in ``prepare_data``; see :class:`GeneratedImages`). May be empty when
            ``generated_fraction`` is 0.
        generated_fraction: share of generated images per batch (reference default 0.7).
        batch_size: images per batch per device (all loaders).
        epoch_batches: training batches per epoch (default ``ceil(len(real train) / global batch)``).
        val_size: real training images held out for validation.
        crop_padding, flip, rotation: training augmentation (0 / False / 0 turn each off).
        num_workers, pin_memory: DataLoader options.
        seed: seed of the batch sampler (with the epoch and rank).
        cache_dir: folder for the ``.npy`` conversions (default: beside each ``.npz``).
    """

    def __init__(
        self,
        real: ImageDataModule,
        generated: str | Path | Sequence[str | Path] = (),
        generated_fraction: float = 0.7,
        batch_size: int = 512,
        epoch_batches: int | None = None,
        val_size: int = 1024,
        crop_padding: int = 4,
        flip: bool = True,
        rotation: float = 0.0,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if isinstance(generated, (str, Path)):
            generated = [generated]
        if not 0.0 <= generated_fraction <= 1.0:
            raise ValueError(f"generated_fraction must be in [0, 1], got {generated_fraction}")
        if not generated and generated_fraction > 0:
            raise ValueError(f"generated: give at least one .npz file (generated_fraction is {generated_fraction})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_batches is not None and epoch_batches < 1:
            raise ValueError(f"epoch_batches must be >= 1 or None, got {epoch_batches}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters(ignore=["real"])
        self.real = real
        self.generated = [Path(p).expanduser() for p in generated]
        self.generated_fraction = float(generated_fraction)
        self.batch_size = int(batch_size)
        self.epoch_batches = epoch_batches
        self.val_size = int(val_size)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.rotation = float(rotation)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self._train: ConcatDataset | None = None
        self._num_real_train = 0
        self._num_generated = 0

    @property
    def num_classes(self) -> int:
        return self.real.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        shape = getattr(self.real, "image_shape", None)
        if shape is None:
            shape = tuple(self._real_train_split()[0][0].shape)
        return tuple(shape)

    def prepare_data(self) -> None:
        self.real.prepare_data()
        for path in self.generated:
            prepare_generated(path, self.cache_dir)

    def _real_train_split(self) -> Dataset:
        return self.real.dataset(self.real.train_split, train=False)

    def train_augmentation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The training transform on [C, H, W] tensors, shared by real and generated images."""
        _, height, width = self.image_shape
        steps: list[Callable] = []
        if self.crop_padding:
            steps.append(transforms.RandomCrop((height, width), padding=self.crop_padding))
        if self.flip:
            steps.append(transforms.RandomHorizontalFlip())
        if self.rotation:
            steps.append(transforms.RandomRotation(self.rotation))
        return transforms.Compose(steps) if steps else None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset()
        if stage in (None, "fit", "validate"):
            self.val_dataset()

    def train_dataset(self) -> ConcatDataset:
        """``ConcatDataset([real train minus held-out, generated...])`` with the training augmentation."""
        if self._train is not None:
            return self._train
        real_split = self._real_train_split()
        if self.val_size >= len(real_split):
            raise ValueError(
                f"val_size ({self.val_size}) must be smaller than the real training split ({len(real_split)} images)"
            )
        augment = self.train_augmentation()
        real = IndexedSubset(_Transformed(real_split, augment), range(self.val_size, len(real_split)))
        parts: list[Dataset] = [real]
        offset = len(real_split)
        for path in self.generated:
            gen = GeneratedImages(path, transform=augment, cache_dir=self.cache_dir)
            if gen.image_shape != self.image_shape:
                raise ValueError(
                    f"{path}: generated images are {gen.image_shape} (C, H, W) but the real ones "
                    f"{self.image_shape}; generate at the real data's size and channels"
                )
            if len(gen) and int(gen.labels.max()) >= self.num_classes:
                raise ValueError(
                    f"{path}: label {int(gen.labels.max())} out of range for {self.num_classes} classes"
                )
            parts.append(_OffsetIndex(gen, offset))
            offset += len(gen)
        self._num_real_train = len(real)
        self._num_generated = offset - len(real_split)
        self._train = ConcatDataset(parts)
        return self._train

    def val_dataset(self) -> Dataset:
        if self.val_size:
            return IndexedSubset(self._real_train_split(), range(self.val_size))
        return IndexedSubset(self.real.dataset(self.real.val_split))

    def batch_sampler(self, num_replicas: int = 1, rank: int = 0) -> MixedBatchSampler:
        self.train_dataset()
        return MixedBatchSampler(
            self._num_real_train,
            self._num_generated,
            self.batch_size,
            self.generated_fraction,
            num_batches=self.epoch_batches,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))
        connector = getattr(trainer, "_accelerator_connector", None)
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                "MixedDataModule shards the data per rank itself: set trainer.use_distributed_sampler: false "
                "(Trainer(use_distributed_sampler=False)) for distributed training"
            )
        return DataLoader(
            self.train_dataset(),
            batch_sampler=self.batch_sampler(world_size, rank),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset())

    def test_dataloader(self) -> DataLoader:
        split = "test" if "test" in self.real.splits else self.real.val_split
        return self._loader(IndexedSubset(self.real.dataset(split)))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.real.predict_dataset())

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
