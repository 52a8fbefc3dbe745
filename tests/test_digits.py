import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from msds_lightning.data import DigitsDataModule
from msds_lightning.data.digits import stratified_split


@pytest.fixture(scope="module")
def sk_digits():
    digits = load_digits()
    return torch.from_numpy(digits.images).float(), torch.from_numpy(digits.target)


@pytest.fixture(scope="module")
def data():
    module = DigitsDataModule(batch_size=64)
    module.setup()
    return module


def test_shapes_range_classes_and_split_sizes(data):
    assert (data.num_classes, data.image_shape) == (10, (3, 16, 16))
    train, test = data.dataset("train", train=True), data.dataset("test")
    assert (len(train), len(test)) == (1348, 449)  # test = round(1797 * 0.25)
    for images in (train.images, test.images):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
        assert images.min() >= 0 and images.max() <= 1
        assert images.max() > 0.9  # scaled by 1/16, not 1/255
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))


def test_native_size_images_are_sklearn_pixels_over_16_at_the_split_indices(sk_digits):
    images, labels = sk_digits
    data = DigitsDataModule(image_size=8, channels=1)
    assert data.image_shape == (1, 8, 8)
    for split in ("train", "test"):
        idx = torch.from_numpy(data.split_indices(split))
        dataset = data.dataset(split)
        torch.testing.assert_close(dataset.images, images[idx].unsqueeze(1) / 16, rtol=0, atol=0)
        assert torch.equal(dataset.labels, labels[idx])


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_is_antialiased_interpolation_clamped(sk_digits, mode):
    images, _ = sk_digits
    data = DigitsDataModule(image_size=20, interpolation=mode)
    idx = torch.from_numpy(data.split_indices("test"))
    raw = F.interpolate(images[idx].unsqueeze(1) / 16, size=(20, 20), mode=mode, antialias=True)
    got = data.dataset("test").images
    assert got.shape == (449, 3, 20, 20)
    torch.testing.assert_close(got[:, :1], raw.clamp(0, 1))
    if mode == "bicubic":
        assert raw.min() < 0 or raw.max() > 1  # the clamp matters here
    assert got.min() >= 0 and got.max() <= 1


def test_split_is_disjoint_stratified_and_fixed(sk_digits):
    _, labels = sk_digits
    data = DigitsDataModule()
    train, test = data.split_indices("train"), data.split_indices("test")
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sklearn's order kept
    counts = np.bincount(labels.numpy(), minlength=10)
    test_counts = np.bincount(labels.numpy()[test], minlength=10)
    assert np.all(np.abs(test_counts - counts * 449 / 1797) < 1)  # within one image of proportional
    # The same split on every machine and every run: pinned values.
    assert test[:12].tolist() == [3, 7, 13, 16, 19, 22, 26, 36, 38, 43, 47, 48]
    assert int(test.sum()) == int(DigitsDataModule().split_indices("test").sum())
    assert np.array_equal(DigitsDataModule(split_seed=0).split_indices("test"), test)
    other = DigitsDataModule(split_seed=1).split_indices("test")
    assert len(other) == 449 and not np.array_equal(other, test)
    assert len(DigitsDataModule(test_fraction=0.5).split_indices("test")) == round(1797 * 0.5)


def test_stratified_split_small_case():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    train, test = stratified_split(labels, 0.5, seed=0)
    # quotas 3, 1.5, 0.5: the leftover image goes to the lower of the tied classes
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 2, 0]
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(10))
    assert np.array_equal(stratified_split(labels, 0.5, seed=0)[1], test)


def test_predict_loader_yields_image_label_split_index_with_skip_max():
    data = DigitsDataModule(skip=3, max=10, batch_size=2)
    data.setup("predict")
    batches = list(data.predict_dataloader())
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    index = torch.cat([b[2] for b in batches])
    assert index.tolist() == [0, 3, 6, 9]  # positions within the test split
    test = data.dataset("test")
    assert torch.equal(images, test.images[index]) and torch.equal(labels, test.labels[index])
    assert images.shape == (4, 3, 16, 16) and labels.dtype == index.dtype == torch.int64


def test_train_and_val_loaders():
    data = DigitsDataModule(channels=1, batch_size=500, augment=False)
    data.setup("fit")
    image, label, index = next(iter(data.val_dataloader()))
    assert image.shape == (449, 1, 16, 16) and index.tolist() == list(range(449))
    seen = torch.cat([batch[2] for batch in data.train_dataloader()])
    assert sorted(seen.tolist()) == list(range(1348))  # shuffled, every train index once
    assert not torch.equal(seen, torch.arange(1348))


def test_train_augmentation_is_a_small_translation_without_flips():
    data = DigitsDataModule(image_size=8, channels=1)
    plain, augmented = data.dataset("train"), data.dataset("train", train=True)
    torch.manual_seed(0)
    shifts = set()
    for i in range(40):
        image, label = augmented[i]
        reference = F.pad(plain.images[i], (1, 1, 1, 1))
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(image, reference[:, 1 - dy : 9 - dy, 1 - dx : 9 - dx])
        ]
        assert matches, f"sample {i} is not a translation of its image by at most 1 px"
        assert label == int(plain.labels[i])
        shifts.update(matches)
    assert len(shifts) >= 6  # several different shifts were drawn


def test_real_digits_are_learnable_by_nearest_class_mean():
    data = DigitsDataModule()
    train, test = data.dataset("train"), data.dataset("test")
    means = torch.stack([train.images[train.labels == c].mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(test.images.flatten(1), means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.85  # images and labels line up after the split


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 8.5}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": 1e-4}, "test_fraction"),  # rounds to an empty test split
        ({"test_fraction": float("nan")}, "test_fraction"),
        ({"split_seed": -1}, "split_seed"),
        ({"predict_split": "val"}, "predict_split"),
        ({"skip": 0}, "skip"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**kwargs)


def test_unknown_split_raises():
    with pytest.raises(ValueError, match="split"):
        DigitsDataModule().split_indices("val")


def test_validation_split_is_held_out_of_train(sk_digits):
    """val_fraction > 0: a stratified, fixed part of the train split that training never sees; the
    validation loader and ``predict_split: val`` use it, and the test split is unchanged."""
    _, labels = sk_digits
    plain, data = DigitsDataModule(), DigitsDataModule(val_fraction=0.2, predict_split="val", channels=1,
                                                       batch_size=1000, augment=False)  # fmt: skip
    train, val, test = (data.split_indices(s) for s in ("train", "val", "test"))
    assert np.array_equal(test, plain.split_indices("test"))
    assert np.array_equal(np.sort(np.concatenate([train, val])), plain.split_indices("train"))
    assert (len(train), len(val)) == (1348 - 270, 270) and np.intersect1d(train, val).size == 0
    val_counts = np.bincount(labels.numpy()[val], minlength=10)
    train_counts = np.bincount(labels.numpy()[plain.split_indices("train")], minlength=10)
    assert np.all(np.abs(val_counts - train_counts * 270 / 1348) < 1)
    data.setup()
    assert torch.equal(next(iter(data.val_dataloader()))[1], torch.from_numpy(labels.numpy()[val]))
    assert len(data.predict_dataset()) == 270 and data.val_split == "val"
    seen = torch.cat([batch[1] for batch in data.train_dataloader()])
    assert torch.equal(torch.sort(seen).values, torch.sort(torch.from_numpy(labels.numpy()[train])).values)
    assert np.array_equal(DigitsDataModule(val_fraction=0.2).split_indices("val"), val)  # fixed
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.0)
