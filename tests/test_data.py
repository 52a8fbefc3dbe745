import pytest
import torch
from PIL import Image
from torchvision import transforms

from msds_lightning.data import CIFAR10DataModule, ImageNetDataModule, IndexedSubset, cohen_indices

from .tiny_models import write_fake_cifar10, write_fake_imagefolder


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory):
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"), n_train=13, n_test=11)


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    return write_fake_imagefolder(tmp_path_factory.mktemp("imagenet"), per_class=3)


def as_tensor(hwc_uint8):
    return torch.from_numpy(hwc_uint8).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize(
    ("length", "skip", "max", "expected"),
    [
        (10, 1, -1, list(range(10))),
        (10, 3, -1, [0, 3, 6, 9]),
        (10, 3, 6, [0, 3]),  # max is exclusive
        (10, 3, 7, [0, 3, 6]),  # Cohen's loop would never stop here; we still bound by max
        (10, 1, 100, list(range(10))),
        (0, 2, -1, []),
    ],
)
def test_cohen_indices(length, skip, max, expected):
    assert cohen_indices(length, skip, max) == expected


def test_cohen_indices_rejects_bad_skip():
    with pytest.raises(ValueError, match="skip"):
        cohen_indices(10, skip=0)


def test_indexed_subset_reports_original_indices():
    base = [(torch.full((1,), float(i)), i % 3) for i in range(10)]
    subset = IndexedSubset(base, [7, 2])
    assert len(subset) == 2
    image, label, index = subset[0]
    assert (image.item(), label, index) == (7.0, 1, 7)
    assert subset[1][2] == 2
    with pytest.raises(ValueError, match="out of range"):
        IndexedSubset(base, [3, 10])


def test_cifar10_predict_split_yields_images_labels_and_original_indices(fake_cifar10):
    data = CIFAR10DataModule(fake_cifar10.root, skip=3, max=10, batch_size=2, num_workers=0)
    assert (data.num_classes, data.image_shape) == (10, (3, 32, 32))
    data.setup("predict")
    batches = list(data.predict_dataloader())
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    indices = torch.cat([b[2] for b in batches])

    assert indices.tolist() == [0, 3, 6, 9]
    assert labels.tolist() == [fake_cifar10.test_labels[i] for i in indices]
    expected = torch.stack([as_tensor(fake_cifar10.test_images[i]) for i in indices])
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, expected)  # ToTensor only: [0, 1], no normalization


def test_cifar10_train_and_val_loaders(fake_cifar10):
    data = CIFAR10DataModule(fake_cifar10.root, batch_size=4, num_workers=0, augment=False)
    data.setup("fit")
    train = data.dataset("train", train=True)
    assert len(train) == 13
    torch.testing.assert_close(train[12][0], as_tensor(fake_cifar10.train_images[12]))

    image, label, index = next(iter(data.val_dataloader()))
    assert image.shape == (4, 3, 32, 32)
    assert index.tolist() == [0, 1, 2, 3]  # val is the full test split, in order
    assert label.tolist() == fake_cifar10.test_labels[:4]

    augmented = CIFAR10DataModule(fake_cifar10.root, batch_size=13, num_workers=0)
    images, labels, indices = next(iter(augmented.train_dataloader()))
    assert images.shape == (13, 3, 32, 32)
    assert sorted(indices.tolist()) == list(range(13))
    assert labels.tolist() == [fake_cifar10.train_labels[i] for i in indices]


def test_cifar10_checksums_are_optional(fake_cifar10):
    data = CIFAR10DataModule(fake_cifar10.root, verify_checksums=True, num_workers=0)
    with pytest.raises(ValueError, match="md5") as excinfo:
        data.setup("predict")
    assert str(fake_cifar10.root / "cifar-10-batches-py") in str(excinfo.value)


class _Payload:
    """Pickles as a call of ``os.system`` (what a tampered data file can hide)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.mark.parametrize("verify_checksums", [False, True])
def test_tampered_cifar_batch_cannot_run_code(tmp_path, verify_checksums):
    import pickle

    root = write_fake_cifar10(tmp_path / "c10", n_train=5, n_test=4).root
    marker = tmp_path / "payload_ran"
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": _Payload(f"touch {marker}"), "labels": [0]}))
    assert not marker.exists()
    with pytest.raises(ValueError) as excinfo:
        CIFAR10DataModule(root, num_workers=0, verify_checksums=verify_checksums).setup("predict")
    assert not marker.exists()  # the payload did not run
    if not verify_checksums:  # (with the md5 check, the tampered file is refused before it is read)
        assert str(batch) in str(excinfo.value) and "posix.system" in str(excinfo.value)
    # the same file through plain pickle would have run it: the test's payload is real
    pickle.loads(batch.read_bytes())
    assert marker.exists()


def test_cifar_batches_read_in_every_pickle_encoding_and_truncation_is_named(tmp_path):
    """The restricted unpickler reads the real archive's encoding (Python 2 pickles: numpy.core globals,
    latin-1 str data) and every protocol Python 3 writes, with the same arrays as torchvision's loader."""
    import pickle

    import numpy as np

    from msds_lightning.data.cifar10 import SafeCIFAR10
    from msds_lightning.data.safe_pickle import load_data_pickle

    fake = write_fake_cifar10(tmp_path / "c10", n_train=5, n_test=4)
    batch = fake.root / "cifar-10-batches-py" / "test_batch"
    chw = fake.test_images.transpose(0, 3, 1, 2).reshape(4, 3072)

    reconstruct = np.zeros(1).__reduce__()[0]

    class Py2Array:  # what the archive's Python 2 numpy wrote: _reconstruct + state with str data
        def __reduce__(self):
            return (reconstruct, (np.ndarray, (0,), "b"),
                    (1, chw.shape, np.dtype("u1"), False, chw.tobytes().decode("latin1")))  # fmt: skip

    py2 = pickle.dumps({"data": Py2Array(), "labels": fake.test_labels}, protocol=2)
    py2 = py2.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    encodings = [py2] + [
        pickle.dumps({"data": chw, "labels": fake.test_labels}, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)
    ]
    for raw in encodings:
        batch.write_bytes(raw)
        dataset = SafeCIFAR10(fake.root, train=False)
        assert np.array_equal(dataset.data, fake.test_images) and dataset.targets == fake.test_labels
    assert load_data_pickle(batch)["labels"] == fake.test_labels

    batch.write_bytes(encodings[-1][:200])  # a truncated download
    with pytest.raises(ValueError, match="not a readable data pickle") as excinfo:
        CIFAR10DataModule(fake.root, num_workers=0).setup("predict")
    assert str(batch) in str(excinfo.value) and "cifar-10-python.tar.gz" in str(excinfo.value)


def test_cifar10_missing_or_incomplete_root_explains_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as excinfo:
        CIFAR10DataModule(missing, num_workers=0).setup("predict")
    message = str(excinfo.value)
    assert str(missing / "cifar-10-batches-py") in message
    assert "download: true" in message and "cifar-10-python.tar.gz" in message

    partial = write_fake_cifar10(tmp_path / "partial", n_train=5, n_test=2).root
    (partial / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="lacks test_batch"):
        CIFAR10DataModule(partial, num_workers=0).predict_dataloader()


def test_data_module_arguments_are_validated(fake_cifar10):
    with pytest.raises(ValueError, match="skip"):
        CIFAR10DataModule(fake_cifar10.root, skip=0)
    with pytest.raises(ValueError, match="predict_split"):
        CIFAR10DataModule(fake_cifar10.root, predict_split="val")
    with pytest.raises(ValueError, match="batch_size"):
        CIFAR10DataModule(fake_cifar10.root, batch_size=0)
    with pytest.raises(ValueError, match="interpolation"):
        ImageNetDataModule(fake_cifar10.root, interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_size"):
        ImageNetDataModule(fake_cifar10.root, resize_size=200, crop_size=224)


def test_imagenet_folder_loads_with_eval_transform(fake_imagenet):
    data = ImageNetDataModule(
        fake_imagenet, skip=2, resize_size=36, crop_size=32, interpolation="bicubic", num_classes=3,
        batch_size=4, num_workers=0,
    )  # fmt: skip
    assert (data.num_classes, data.image_shape) == (3, (3, 32, 32))
    data.setup("predict")
    images, labels, indices = (torch.cat(parts) for parts in zip(*data.predict_dataloader()))
    # ImageFolder order: classes sorted, files sorted; 3 classes x 3 images, every 2nd image.
    assert indices.tolist() == [0, 2, 4, 6, 8]
    assert labels.tolist() == [0, 0, 1, 2, 2]
    assert images.shape == (5, 3, 32, 32)

    transform = transforms.Compose(
        [
            transforms.Resize(36, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
        ]
    )
    expected = transform(Image.open(fake_imagenet / "val" / "n02" / "n02_1.png").convert("RGB"))
    torch.testing.assert_close(images[2], expected)

    train_images, _, _ = next(iter(data.train_dataloader()))
    assert train_images.shape == (4, 3, 32, 32)


def test_imagenet_missing_root_or_wrong_class_count(tmp_path, fake_imagenet):
    with pytest.raises(FileNotFoundError, match="nowhere/val") as excinfo:
        ImageNetDataModule(tmp_path / "nowhere", num_workers=0).setup("predict")
    assert "ImageFolder" in str(excinfo.value)
    with pytest.raises(ValueError, match="3 class folders but num_classes=1000"):
        ImageNetDataModule(fake_imagenet, num_workers=0).setup("predict")
