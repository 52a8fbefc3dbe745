"""ImageNet (ILSVRC-2012) from a local ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode

from msds_lightning.data.datasets import ImageDataModule

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


class ImageNetDataModule(ImageDataModule):
    """ImageNet as ``(image, label, index)`` batches with images in [0, 1] at ``crop_size × crop_size``.

    Args:
        root: folder with ``train/`` and ``val/``, each holding one sub-folder per class (torchvision
            ``ImageFolder`` layout, e.g. ``val/n01440764/ILSVRC2012_val_00000293.JPEG``). Class indices follow
            the sorted folder names, which for the synset ids is the usual 0..999 label order.
        predict_split: ``"val"`` (default) or ``"train"``.
        skip: certify every ``skip``-th image of the predict split (locuslab/smoothing's ``--skip``; the DDS
            paper certifies ImageNet with ``skip=50``, i.e. 1,000 images).
        max: certify only indices below ``max`` (``--max``; negative: no bound). See :func:`cohen_indices`.
        batch_size: images per batch (for certification: images handed to the certifier per step).
        num_workers: DataLoader worker processes.
        pin_memory: DataLoader ``pin_memory`` (useful with a GPU).
        resize_size: shorter side after ``Resize`` in the eval transform ``Resize(resize_size) →
            CenterCrop(crop_size) → ToTensor``. 256 (default) as Cohen et al. and Carlini et al.; MSDS uses 224.
        crop_size: side of the center crop (eval) or random-resized crop (training); 224 by default.
        interpolation: ``"bilinear"`` (default, Cohen et al.), ``"bicubic"`` (MSDS) or ``"nearest"``.
        num_classes: expected number of class folders (checked when a split is loaded).
        augment: training transform ``RandomResizedCrop(crop_size) + RandomHorizontalFlip`` (Cohen et al.);
            off uses the eval transform for training too.
    """

    splits = ("train", "val")

    def __init__(
        self,
        root: str | Path = "data/imagenet",
        predict_split: str = "val",
        skip: int = 1,
        max: int = -1,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = False,
        resize_size: int = 256,
        crop_size: int = 224,
        interpolation: str = "bilinear",
        num_classes: int = 1000,
        augment: bool = True,
    ) -> None:
        super().__init__(predict_split, skip, max, batch_size, num_workers, pin_memory)
        self.save_hyperparameters()
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATIONS)}, got {interpolation!r}")
        if crop_size < 1 or resize_size < crop_size:
            raise ValueError(
                f"need 1 <= crop_size <= resize_size, got crop_size={crop_size}, resize_size={resize_size}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.root = Path(root).expanduser()
        self.resize_size = resize_size
        self.crop_size = crop_size
        self.interpolation = interpolation
        self.num_classes = num_classes
        self.image_shape = (3, crop_size, crop_size)
        self.augment = augment

    def build_dataset(self, split: str, train: bool) -> Dataset:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(
                f"ImageNet split not found: {folder} does not exist. Expected {self.root}/train and "
                f"{self.root}/val with one folder of images per class (torchvision ImageFolder layout). "
                f"ImageNet cannot be downloaded automatically: get ILSVRC-2012 from https://image-net.org and "
                f"sort the validation images into per-class folders."
            )
        interpolation = _INTERPOLATIONS[self.interpolation]
        if train and self.augment:
            transform = transforms.Compose(
                [
                    transforms.RandomResizedCrop(self.crop_size, interpolation=interpolation),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                ]
            )
        else:
            transform = transforms.Compose(
                [
                    transforms.Resize(self.resize_size, interpolation=interpolation),
                    transforms.CenterCrop(self.crop_size),
                    transforms.ToTensor(),
                ]
            )
        dataset = ImageFolder(folder, transform=transform)
        if len(dataset.classes) != self.num_classes:
            raise ValueError(
                f"{folder} has {len(dataset.classes)} class folders but num_classes={self.num_classes}; "
                f"point root at the folder holding train/ and val/, or set num_classes"
            )
        return dataset
