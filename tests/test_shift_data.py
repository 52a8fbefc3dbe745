"""Shift data sets on synthetic files in their published formats: CIFAR-10-C / CIFAR-100-C (severity-major
.npy), CIFAR-10.1 v4/v6, ImageNet-C / -R / -A folders, the 200-class mask, the digits stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from msds_lightning.data import (
    CIFAR10CDataModule,
    CIFAR100CDataModule,
    CIFAR101DataModule,
    DigitsShiftDataModule,
    ImageNetADataModule,
    ImageNetCDataModule,
    ImageNetRDataModule,
)
from msds_lightning.data.imagenet_classes import imagenet_wnids, subset_wnids
from msds_lightning.data.shift import BENCHMARK_CORRUPTIONS, CORRUPTIONS, ShiftIndex, corrupt
from msds_lightning.models import MaskedClassifier
from msds_lightning.smoothing import Engine

from .tiny_models import write_fake_cifar10c

# The official MSDS code's masks (third_party/imagenet_tools.py, LogitMaskingLayer): ImageNet-R's from its
# all_wnids / imagenet_r_wnids lists, ImageNet-A's from its thousand_k_to_200 map (the ImageNet-1k indices
# that map to a class). An independent source: our mapping goes through timm's WordNet id lists.
OFFICIAL_IMAGENET_R = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105, 107,
    113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187, 195, 199,
    203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267, 269, 276, 277,
    281, 288, 289, 291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337,
    338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414,
    425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558,
    570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768, 774, 776,
    779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907, 928, 931, 932, 933, 934,
    936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967, 980, 981, 983, 988,
]  # fmt: skip
OFFICIAL_IMAGENET_A = [
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99, 105, 107,
    108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287, 291, 295, 298, 301,
    306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336, 347, 361, 363,
    372, 378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461,
    462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572,
    573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704,
    719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804, 813, 815,
    820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897, 900, 907, 913, 924, 932,
    933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972, 980, 981, 984, 986, 987, 988,
]  # fmt: skip


def as_tensor(hwc_uint8):
    return torch.from_numpy(np.array(hwc_uint8)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def cifar10c(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c10c") / "CIFAR-10-C"
    return folder, write_fake_cifar10c(folder, ("gaussian_noise", "fog", "saturate"), filled=4)


def test_shift_index_code():
    index = ShiftIndex(10_000)
    assert len(CORRUPTIONS) == 19 and CORRUPTIONS[:15] == BENCHMARK_CORRUPTIONS and len(index) == 950_000
    assert index.encode("gaussian_noise", 1, 0) == 0
    assert index.encode("gaussian_noise", 3, 7) == 20_007  # the row of the .npy file
    assert index.encode("fog", 2, 5) == 9 * 50_000 + 10_000 + 5
    for idx in (0, 20_007, 9 * 50_000 + 10_005, 949_999):
        assert index.encode(*index.decode(idx)) == idx
    with pytest.raises(ValueError, match="severity"):
        index.encode("fog", 6, 0)


def test_cifar10c_image_i_of_severity_s_is_row_s_minus_1_times_10000_plus_i(cifar10c):
    folder, written = cifar10c
    data = CIFAR10CDataModule(folder, corruptions=["fog", "gaussian_noise", "saturate"], severities=[2, 5], skip=2,
                              max=4, batch_size=5, num_workers=0)  # fmt: skip
    data.setup("predict")
    images, labels, indices = (torch.cat(parts) for parts in zip(*data.predict_dataloader()))
    expected = [(c, s, i) for c in ("fog", "gaussian_noise", "saturate") for s in (2, 5) for i in (0, 2)]
    assert indices.tolist() == [CORRUPTIONS.index(c) * 50_000 + (s - 1) * 10_000 + i for c, s, i in expected]
    for k, (c, s, i) in enumerate(expected):
        row = (s - 1) * 10_000 + i
        assert torch.equal(images[k], as_tensor(written[c][s - 1, i]))
        assert labels[k].item() == written["labels"][row]
        assert data.row_fields(indices[k].item()) == {"corruption": c, "severity": s}
    assert len(data.predict_dataset().dataset) == 950_000  # idx < size: the writer's per-row check


def test_cifar_c_files_are_memory_mapped_not_copied_into_workers(cifar10c):
    import pickle

    folder, _ = cifar10c
    data = CIFAR10CDataModule(folder, corruptions=["fog"], max=2, num_workers=0)
    dataset = data.predict_dataset().dataset
    dataset[CORRUPTIONS.index("fog") * 50_000]
    assert isinstance(dataset.array("fog"), np.memmap)
    assert len(pickle.dumps(dataset)) < 200_000  # what a worker receives: no 150 MB array


def test_cifar_c_missing_or_malformed_files_are_named(cifar10c, tmp_path):
    folder, _ = cifar10c
    with pytest.raises(FileNotFoundError, match=r"lacks motion_blur\.npy.*zenodo\.org/records/2535967"):
        CIFAR10CDataModule(folder, corruptions=["fog", "motion_blur"]).setup("predict")
    with pytest.raises(FileNotFoundError, match=r"does not exist.*zenodo"):
        CIFAR10CDataModule(tmp_path / "nowhere").setup("predict")
    bad = tmp_path / "CIFAR-10-C"
    write_fake_cifar10c(bad, ("fog",), filled=1)
    np.save(bad / "fog.npy", np.zeros((10_000, 32, 32, 3), np.uint8))  # one severity only
    with pytest.raises(
        ValueError, match=r"fog\.npy holds uint8 \[10000, 32, 32, 3\], expected uint8 \[50000"
    ):
        CIFAR10CDataModule(bad, corruptions=["fog"]).setup("predict")
    with pytest.raises(ValueError, match="corruptions"):
        CIFAR10CDataModule(folder, corruptions=["rain"])
    with pytest.raises(ValueError, match="severities"):
        CIFAR10CDataModule(folder, severities=[0, 1])
    with pytest.raises(FileNotFoundError, match=r"zenodo\.org/records/3555552"):
        CIFAR100CDataModule(tmp_path / "c100").setup("predict")


def test_cifar100c_labels(tmp_path):
    written = write_fake_cifar10c(tmp_path / "CIFAR-100-C", ("snow",), filled=2, num_classes=100)
    data = CIFAR100CDataModule(
        tmp_path / "CIFAR-100-C", corruptions=["snow"], severities=[4], max=2, num_workers=0
    )
    assert data.num_classes == 100 and data.corruptions == ("snow",)
    _, labels, indices = (torch.cat(p) for p in zip(*data.predict_dataloader()))
    assert labels.tolist() == written["labels"][30_000:30_002].tolist()
    assert indices.tolist() == [7 * 50_000 + 30_000, 7 * 50_000 + 30_001]


@pytest.mark.parametrize("version,count", [("v6", 2000), ("v4", 2021)])
def test_cifar101_versions(tmp_path, version, count):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).astype(np.int64)
    with pytest.raises(
        FileNotFoundError, match=rf"cifar10\.1_{version}_data\.npy.*github\.com/modestyachts/CIFAR-10\.1"
    ):
        CIFAR101DataModule(tmp_path, version=version).setup("predict")
    np.save(tmp_path / f"cifar10.1_{version}_data.npy", images)
    np.save(tmp_path / f"cifar10.1_{version}_labels.npy", labels)
    data = CIFAR101DataModule(tmp_path, version=version, skip=500, batch_size=8, num_workers=0)
    got_images, got_labels, indices = (torch.cat(p) for p in zip(*data.predict_dataloader()))
    assert indices.tolist() == list(range(0, count, 500))
    assert torch.equal(got_images, torch.stack([as_tensor(images[i]) for i in indices]))
    assert got_labels.tolist() == labels[indices.numpy()].tolist()
    np.save(tmp_path / f"cifar10.1_{version}_data.npy", images[:100])
    with pytest.raises(ValueError, match=rf"expected uint8 \[{count}, 32, 32, 3\]"):
        CIFAR101DataModule(tmp_path, version=version).setup("predict")


def test_mask_matches_the_official_code_and_restricts_every_certifier():
    assert MaskedClassifier(torch.nn.Identity(), "imagenet-r").classes == OFFICIAL_IMAGENET_R
    assert MaskedClassifier(torch.nn.Identity(), "imagenet-a").classes == OFFICIAL_IMAGENET_A
    # the official evaluation keeps the 200 columns and argmaxes over them: the same class
    logits = torch.randn(64, 1000)
    masked = MaskedClassifier(torch.nn.Identity(), "imagenet-a")(logits)
    official = torch.tensor(OFFICIAL_IMAGENET_A)[logits[:, OFFICIAL_IMAGENET_A].argmax(1)]
    assert torch.equal(masked.argmax(1), official)
    # through the engine (certification and PREDICT): answers only among the kept classes
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 1000))
    torch.nn.init.normal_(linear[1].weight, std=5.0)
    kept = [3, 500, 999]
    engine = Engine(lambda x, sigma: MaskedClassifier(linear, kept)(x), 1000, 0.5, batch_size=64)
    images = torch.rand(4, 3, 4, 4)
    certificates = engine.certify(images, [0, 1, 2, 3], 16, 64, 0.01)
    assert all(c.prediction in (-1, *kept) for c in certificates)
    assert any(c.prediction in kept for c in certificates)
    with pytest.raises(ValueError, match="imagenet-r"):
        MaskedClassifier(torch.nn.Identity(), "imagenet-x")


def _write_folder(root, wnids, per_class=1, size=(12, 12)):
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / w / f"img_{i}.jpg")


@pytest.mark.parametrize(
    "module,subset", [(ImageNetRDataModule, "imagenet-r"), (ImageNetADataModule, "imagenet-a")]
)
def test_imagenet_r_and_a_labels_are_imagenet_1k_indices(tmp_path, module, subset):
    official = OFFICIAL_IMAGENET_R if subset == "imagenet-r" else OFFICIAL_IMAGENET_A
    wnids = subset_wnids(subset)
    _write_folder(tmp_path / subset, wnids)
    data = module(tmp_path / subset, skip=7, resize_size=None, crop_size=8, batch_size=64, num_workers=0)
    images, labels, indices = (torch.cat(p) for p in zip(*data.predict_dataloader()))
    assert indices.tolist() == list(range(0, 200, 7)) and images.shape[1:] == (3, 8, 8)
    assert labels.tolist() == [official[i] for i in indices.tolist()]  # one image per class, classes sorted
    (tmp_path / subset / wnids[0]).rename(tmp_path / subset / "n99999999")
    with pytest.raises(ValueError, match=rf"not ImageNet-{subset[-1].upper()}.*missing 1.*unexpected 1"):
        module(tmp_path / subset).setup("predict")
    with pytest.raises(FileNotFoundError, match="github.com/hendrycks"):
        module(tmp_path / "nowhere").setup("predict")


def test_imagenet_c_folders(tmp_path):
    wnids = [imagenet_wnids()[k] for k in (0, 417, 999)]
    for c, s in (("fog", 1), ("fog", 3), ("pixelate", 3)):
        _write_folder(tmp_path / c / str(s), wnids, per_class=2, size=(10, 10))
    data = ImageNetCDataModule(tmp_path, corruptions=["pixelate", "fog"], severities=[3], skip=2, crop_size=8,
                               batch_size=16, num_workers=0)  # fmt: skip
    images, labels, indices = (torch.cat(p) for p in zip(*data.predict_dataloader()))
    block = 5 * 50_000
    assert indices.tolist() == [13 * block + 2 * 50_000 + i for i in (0, 2, 4)] + [
        9 * block + 2 * 50_000 + i for i in (0, 2, 4)
    ]
    assert labels.tolist() == [0, 417, 999] * 2 and images.shape[1:] == (3, 8, 8)
    assert data.row_fields(indices[-1].item()) == {"corruption": "fog", "severity": 3}
    with pytest.raises(FileNotFoundError, match=r"lacks fog/2.*zenodo\.org/records/2235448"):
        ImageNetCDataModule(tmp_path, corruptions=["fog"], severities=[1, 2]).setup("predict")


def test_digits_corruptions_follow_the_cifar_c_formulas():
    rng = np.random.default_rng(0)
    x = 0.3 + 0.4 * rng.random((1, 8, 8))
    mean = x.mean()
    assert np.allclose(corrupt(x, "contrast", 2, rng), (x - mean) * 0.5 + mean)
    assert np.allclose(corrupt(x, "gaussian_blur", 5, rng), gaussian_filter(x, (0, 1.0, 1.0), mode="nearest"))
    flat = np.full((1, 200, 200), 0.5)
    noisy = corrupt(flat, "gaussian_noise", 3, np.random.default_rng(1)) - 0.5
    assert abs(noisy.std() - 0.08) < 0.002 and abs(noisy.mean()) < 0.002
    hit = corrupt(flat, "impulse_noise", 5, np.random.default_rng(1)) != 0.5
    assert abs(hit.mean() - 0.07) < 0.005
    shot = corrupt(flat, "shot_noise", 5, np.random.default_rng(1))  # Poisson(25) / 50
    assert abs(shot.mean() - 0.5) < 0.005 and abs(shot.var() - 0.5 / 50) < 0.001


def test_digits_shift_module_is_deterministic_and_indexed_like_cifar10c():
    kwargs = dict(
        image_size=8, channels=1, corruptions=["contrast", "impulse_noise"], severities=[1, 3], skip=100
    )
    a, b = DigitsShiftDataModule(**kwargs), DigitsShiftDataModule(**kwargs)
    items_a, items_b = list(a.predict_dataset()), list(b.predict_dataset())
    assert [i for *_, i in items_a] == [
        CORRUPTIONS.index(c) * 5 * 449 + (s - 1) * 449 + i for c in ("contrast", "impulse_noise") for s in (1, 3)
        for i in (0, 100, 200, 300, 400)
    ]  # fmt: skip
    assert all(torch.equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(items_a, items_b))
    clean_images, clean_labels, _ = zip(
        *DigitsShiftDataModule.__mro__[2](image_size=8, channels=1).predict_dataset()
    )
    first = items_a[0]  # contrast severity 1 of test digit 0
    x = clean_images[0].double().numpy()
    assert torch.allclose(first[0].double(), torch.from_numpy((x - x.mean()) * 0.75 + x.mean()), atol=1e-6)
    assert first[1] == clean_labels[0]
    assert a.row_fields(items_a[-1][2]) == {"corruption": "impulse_noise", "severity": 3}
