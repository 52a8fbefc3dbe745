"""Generated training data (Wang, Pang et al. 2023): EDM Heun sampling of a class-conditional UNet, the
.npz format, memory-mapped loading, real/generated batch mixing, pseudo-label filtering, `msds generate`."""

from __future__ import annotations

import os
import pickle
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from msds_lightning.cli import main as msds
from msds_lightning.data.generated import GeneratedImages, MixedBatchSampler, MixedDataModule
from msds_lightning.data.generated_files import load_npz, npy_paths, save_npz
from msds_lightning.generation import edm_heun_scheduler, edm_sample, filter_top_k, generate
from msds_lightning.models import Classifier, DiffusionDenoiser

UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "add_attention": False,
    "num_class_embeds": 10,
}
# Only T and the schedule name: beta_start/beta_end stay *defaults* of the DDPM config, the case in which
# HeunDiscreteScheduler.from_config alone would substitute its own (Stable Diffusion) betas.
SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: a second OpenMP thread only adds synchronisation, which costs up to 100x (1 s per
    # UNet call instead of 12 ms) when other processes load the 2-core CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _denoiser(seed: int = 0, **unet) -> DiffusionDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiffusionDenoiser.from_config({**UNET, **unet}, SCHEDULE).eval()


@pytest.fixture(scope="module")
def denoiser() -> DiffusionDenoiser:
    return _denoiser()


@pytest.fixture(scope="module")
def generated(denoiser):
    return generate(denoiser, 2, 3, steps=3, batch_size=4, seed=0, device="cpu")


@pytest.fixture
def npz(tmp_path, generated):
    return save_npz(tmp_path / "gen.npz", *generated)


# ------------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------------


def test_heun_scheduler_keeps_the_ddpm_schedule_and_uses_edm_sigmas():
    ddpm = DDPMScheduler(**SCHEDULE)
    heun = edm_heun_scheduler(ddpm)
    torch.testing.assert_close(heun.alphas_cumprod, ddpm.alphas_cumprod)
    assert not heun.config.clip_sample
    steps = 20
    heun.set_timesteps(steps)
    ac = ddpm.alphas_cumprod.double()
    train = ((1 - ac) / ac).sqrt()
    smin, smax = max(0.002, float(train.min())), min(80.0, float(train.max()))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    karras = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7  # EDM, rho = 7
    distinct = torch.cat([heun.sigmas[:1], heun.sigmas[1:-1:2], heun.sigmas[-1:]]).double()
    torch.testing.assert_close(
        distinct, torch.cat([karras, torch.zeros(1, dtype=torch.float64)]), rtol=1e-5, atol=0
    )
    assert float(heun.init_noise_sigma) == pytest.approx(80.0)
    assert len(heun.timesteps) == 2 * steps - 1  # n - 1 Heun steps + a final Euler step: 2n - 1 UNet calls


def _edm_reference(unet, noise, labels, ddpm, steps):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1 with S_churn = 0), written out by hand."""
    ac = ddpm.alphas_cumprod.double().numpy()
    log_train = np.log(np.sqrt((1 - ac) / ac))
    smin, smax = max(0.002, np.exp(log_train[0])), min(80.0, np.exp(log_train[-1]))
    i = np.arange(steps)
    sigmas = np.append((smax ** (1 / 7) + i / (steps - 1) * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7, 0.0)

    def denoise(x, s):
        t = float(np.interp(np.log(s), log_train, np.arange(len(ac))))
        eps = unet(x / np.sqrt(s**2 + 1), torch.full((len(x),), t), class_labels=labels).sample
        return x - s * eps

    x = noise.double() * sigmas[0]
    for k in range(steps):
        s, s_next = sigmas[k], sigmas[k + 1]
        d = (x - denoise(x.float(), s).double()) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - denoise(x_next.float(), s_next).double()) / s_next
            x_next = x + (s_next - s) * (d + d2) / 2
        x = x_next
    return x.float()


@torch.inference_mode()
def test_edm_sample_is_edms_heun_sampler(denoiser):
    ddpm = denoiser.scheduler
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 4, 9])
    ours = edm_sample(denoiser.unet, noise, labels, edm_heun_scheduler(ddpm), steps=4)
    reference = _edm_reference(denoiser.unet, noise, labels, ddpm, steps=4)
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()))


def test_generate_is_deterministic_grouped_and_independent_of_batch_size(denoiser, generated):
    images, labels = generated
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    again, _ = generate(denoiser, 2, 3, steps=3, batch_size=1, seed=0, device="cpu")
    np.testing.assert_array_equal(again, images)
    more, more_labels = generate(denoiser, 3, 3, steps=3, batch_size=64, seed=0, device="cpu")
    # image i of class c has its own noise: a longer run extends a shorter one
    np.testing.assert_array_equal(more.reshape(3, 3, 8, 8, 1)[:, :2], images.reshape(3, 2, 8, 8, 1))
    assert more_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    other, _ = generate(denoiser, 2, 3, steps=3, batch_size=4, seed=1, device="cpu")
    assert not np.array_equal(other, images)


def test_generate_needs_class_embeddings():
    with pytest.raises(ValueError, match="num_class_embeds"):
        generate(_denoiser(num_class_embeds=None), 1, 2, steps=2)
    with pytest.raises(ValueError, match="exceeds"):
        generate(_denoiser(num_class_embeds=2), 1, 3, steps=2)


# ------------------------------------------------------------------------------------------------------
# File format and memory-mapped loading
# ------------------------------------------------------------------------------------------------------


def test_npz_round_trip_in_the_fields_format(npz, generated):
    images, labels = generated
    with zipfile.ZipFile(npz) as archive:  # np.savez: an uncompressed zip of two .npy members
        assert sorted(archive.namelist()) == ["image.npy", "label.npy"]
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(npz) as data:
        assert data["image"].dtype == np.uint8 and data["image"].shape == (6, 8, 8, 1)
        assert data["label"].dtype == np.int64 and data["label"].shape == (6,)
    loaded_images, loaded_labels = load_npz(npz)
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)

    dataset = GeneratedImages(npz)
    assert len(dataset) == 6 and dataset.image_shape == (1, 8, 8)
    for i in range(6):
        image, label, index = dataset[i]
        assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
        torch.testing.assert_close(image, torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255)
        assert (label, index) == (int(labels[i]), i)
    flipped = GeneratedImages(npz, transform=lambda x: x.flip(-1))
    torch.testing.assert_close(flipped[1][0], dataset[1][0].flip(-1))


def test_npy_conversion_happens_once_and_the_data_are_memory_mapped(npz, monkeypatch):
    image_npy, label_npy = npy_paths(npz)
    assert (image_npy.name, label_npy.name) == ("gen.image.npy", "gen.label.npy")
    assert image_npy.parent == npz.parent
    dataset = GeneratedImages(npz)
    assert image_npy.is_file() and label_npy.is_file()
    assert isinstance(dataset.images, np.memmap) and isinstance(dataset.labels, np.memmap)
    assert dataset.images.mode == "r"
    assert len(pickle.dumps(dataset)) < 2000  # workers re-map the files instead of copying the arrays

    import msds_lightning.data.generated_files as module

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(module, "_stream_to_npy", no_conversion)
    again = GeneratedImages(npz)
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(dataset.images))
    os.remove(npz)  # the archive may go once converted
    assert len(GeneratedImages(npz)) == 6
    monkeypatch.undo()

    # a newer archive is converted again
    save_npz(npz, np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 1]))
    newer = npz.stat().st_mtime + 10
    os.utime(npz, (newer, newer))
    assert len(GeneratedImages(npz)) == 2


def test_cache_dir_chunked_conversion_and_pickled_dataset_reopen(tmp_path, npz, generated, monkeypatch):
    import msds_lightning.data.generated_files as module

    monkeypatch.setattr(module, "_COPY_CHUNK", 7)  # stream the archive member in many small pieces
    cache = tmp_path / "cache"
    dataset = GeneratedImages(npz, cache_dir=cache)
    assert dataset.image_path == cache / "gen.image.npy"
    np.testing.assert_array_equal(np.asarray(dataset.images), generated[0])
    np.testing.assert_array_equal(np.asarray(dataset.labels), generated[1])
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[5][0], dataset[5][0])


def test_generated_file_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nothing.npz"
    with pytest.raises(FileNotFoundError, match="msds generate") as err:
        GeneratedImages(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_npz(missing)

    def write(name, **arrays):
        path = tmp_path / name
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    labels = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="no 'label' array"):
        GeneratedImages(write("keys.npz", image=np.zeros((2, 4, 4, 3), np.uint8), y=labels))
    with pytest.raises(ValueError, match="must be uint8"):
        GeneratedImages(write("float.npz", image=np.zeros((2, 4, 4, 3), np.float32), label=labels))
    with pytest.raises(ValueError, match="channels-first"):
        GeneratedImages(write("nchw.npz", image=np.zeros((2, 3, 4, 4), np.uint8), label=labels))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        GeneratedImages(write("count.npz", image=np.zeros((3, 4, 4, 3), np.uint8), label=labels))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        GeneratedImages(tmp_path / "text.npz")
    # int32 labels are accepted and stored as int64
    dataset = GeneratedImages(
        write("int32.npz", image=np.zeros((2, 4, 4, 3), np.uint8), label=labels.astype(np.int32))
    )
    assert dataset.labels.dtype == np.int64
    with pytest.raises(ValueError, match="int64"):
        save_npz(tmp_path / "bad.npz", np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.float32))


# ------------------------------------------------------------------------------------------------------
# Mixing
# ------------------------------------------------------------------------------------------------------


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_mixed_batches_have_the_reference_composition():
    num_real, num_gen, batch, fraction = 103, 50, 16, 0.7
    sampler = MixedBatchSampler(num_real, num_gen, batch, fraction, seed=5)
    generated_per_batch = int(batch * fraction)  # 11
    assert sampler.generated_per_batch == generated_per_batch and sampler.real_per_batch == 5
    assert len(sampler) == -(-num_real // batch)  # ceil(len(real) / B)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler)
    real_seen = []
    for b in batches:
        assert len(b) == batch
        assert sum(i >= num_real for i in b) == generated_per_batch  # exactly floor(B f) generated
        assert all(0 <= i < num_real + num_gen for i in b)
        real_seen += [i for i in b if i < num_real]
    assert len(real_seen) == len(set(real_seen))  # real images without replacement within the epoch
    assert _epoch(sampler, 0) == batches  # deterministic per (seed, epoch)
    assert _epoch(sampler, 1) != batches
    assert list(MixedBatchSampler(num_real, num_gen, batch, fraction, seed=6)) != batches
    # generated draws are uniform with replacement: many batches cover the set, with repeats
    many = MixedBatchSampler(num_real, num_gen, batch, fraction, num_batches=40)
    drawn = [i - num_real for b in many for i in b if i >= num_real]
    assert len(drawn) == 40 * generated_per_batch and set(drawn) == set(range(num_gen))
    # a pass over the real data is reshuffled when used up
    cycling = MixedBatchSampler(100, num_gen, batch, fraction, num_batches=40)  # 5 real per batch: 20 a pass
    real = [i for b in cycling for i in b if i < 100]
    assert sorted(real[:100]) == sorted(real[100:]) == list(range(100)) and real[100:] != real[:100]


def test_mixed_batches_fraction_edge_cases():
    only_real = list(MixedBatchSampler(10, 0, 4, 0.0, num_batches=3))
    assert all(i < 10 for b in only_real for i in b) and all(len(b) == 4 for b in only_real)
    only_gen = list(MixedBatchSampler(10, 7, 4, 1.0, num_batches=3))
    assert all(10 <= i < 17 for b in only_gen for i in b)
    with pytest.raises(ValueError, match="generated"):
        MixedBatchSampler(10, 0, 4, 0.5)
    with pytest.raises(ValueError, match="generated_fraction"):
        MixedBatchSampler(10, 5, 4, 1.5)


def test_mixed_batches_under_ddp_shard_the_real_data():
    num_real, num_gen, batch = 60, 20, 10
    default = MixedBatchSampler(num_real, num_gen, batch, 0.5, num_replicas=2, rank=1)
    assert len(default) == 3  # ceil(60 / (10 * 2)): as many images in total as real ones, like the reference
    # 6 batches of 5 real images on each of 2 ranks: one pass over the real set per epoch
    ranks = [
        MixedBatchSampler(num_real, num_gen, batch, 0.5, 6, seed=1, num_replicas=2, rank=r) for r in (0, 1)
    ]
    epochs = {}
    for epoch in (0, 1):
        real = []
        generated = []
        for sampler in ranks:
            batches = _epoch(sampler, epoch)
            assert all(len(b) == batch and sum(i >= num_real for i in b) == 5 for b in batches)
            real.append({i for b in batches for i in b if i < num_real})
            generated.append([i for b in batches for i in b if i >= num_real])
        assert real[0].isdisjoint(real[1])  # each rank its own real images
        assert real[0] | real[1] == set(range(num_real))  # together one pass over the real set
        assert generated[0] != generated[1]  # independent generated draws
        epochs[epoch] = real
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="rank"):
        MixedBatchSampler(10, 5, 4, rank=2, num_replicas=2)


# ------------------------------------------------------------------------------------------------------
# Data module
# ------------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(npz):
    from msds_lightning.data import DigitsDataModule

    real = DigitsDataModule(image_size=8, channels=1, num_workers=0)
    return MixedDataModule(
        real,
        npz,
        generated_fraction=0.5,
        batch_size=8,
        epoch_batches=3,
        val_size=100,
        flip=False,
        num_workers=0,
    )


def test_mixed_data_module_loaders(mixed, generated):
    mixed.prepare_data()
    mixed.setup("fit")
    num_train = len(mixed.real.dataset("train"))  # 1348 digits in the real train split
    assert mixed.num_classes == 10 and mixed.image_shape == (1, 8, 8)
    loader = mixed.train_dataloader()
    assert len(loader) == 3
    for images, labels, index in loader:
        assert images.shape == (8, 1, 8, 8) and images.dtype == torch.float32
        assert 0 <= float(images.min()) and float(images.max()) <= 1
        is_generated = index >= num_train
        assert int(is_generated.sum()) == 4
        assert bool((index[~is_generated] >= 100).all())  # the held-out images never train
        assert set(labels[is_generated].tolist()) <= {0, 1, 2}
    val = list(mixed.val_dataloader())
    assert sum(len(b[0]) for b in val) == 100
    assert torch.equal(torch.cat([b[2] for b in val]), torch.arange(100))
    torch.testing.assert_close(val[0][0][0], mixed.real.dataset("train")[0][0])  # un-augmented
    assert sum(len(b[0]) for b in mixed.test_dataloader()) == len(mixed.real.dataset("test"))
    assert sum(len(b[0]) for b in mixed.predict_dataloader()) == len(mixed.real.dataset("test"))


def test_mixed_data_module_under_ddp_needs_its_own_sampling(mixed):
    mixed.trainer = SimpleNamespace(
        global_rank=1, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(ValueError, match="use_distributed_sampler"):
        mixed.train_dataloader()
    mixed.trainer._accelerator_connector.use_distributed_sampler = False
    sampler = mixed.train_dataloader().batch_sampler
    assert (sampler.rank, sampler.num_replicas) == (1, 2)


def test_mixed_data_module_rejects_mismatched_images(npz):
    from msds_lightning.data import DigitsDataModule

    real = DigitsDataModule(image_size=8, channels=3, num_workers=0)
    with pytest.raises(ValueError, match="generated images are"):
        MixedDataModule(real, npz, num_workers=0, val_size=10).setup("fit")
    with pytest.raises(ValueError, match="val_size"):
        MixedDataModule(DigitsDataModule(image_size=8, channels=1), npz, val_size=5000).setup("fit")


def test_lightning_sets_the_sampler_epoch(mixed):
    from lightning.pytorch import LightningModule, Trainer

    class Record(LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list[int]] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).extend(batch[2].tolist())
            return (self.weight * batch[0].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Record()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=mixed)
    sampler = trainer.train_dataloader.batch_sampler
    num_real = sampler.num_real
    split = len(mixed.real.dataset("train"))

    def original(position):
        return 100 + position if position < num_real else split + position - num_real

    for epoch in (0, 1):
        expected = [original(p) for b in _epoch(sampler, epoch) for p in b]
        assert model.seen[epoch] == expected
    assert model.seen[0] != model.seen[1]


# ------------------------------------------------------------------------------------------------------
# Filtering and the command
# ------------------------------------------------------------------------------------------------------


class _LookupClassifier(torch.nn.Module):
    """Logits from a table, row chosen by the image's first pixel (its position, encoded as a uint8)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def test_filter_top_k_keeps_the_most_confident_per_conditioning_class():
    labels = np.repeat(np.arange(3, dtype=np.int64), 5)
    images = np.zeros((15, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(15)
    table = torch.randn(15, 4, generator=torch.Generator().manual_seed(0)) * 3
    probs = table.softmax(1)[torch.arange(15), torch.from_numpy(labels)].numpy()
    kept_images, kept_labels = filter_top_k(
        images, labels, _LookupClassifier(table), keep_per_class=2, batch_size=4
    )
    assert kept_labels.tolist() == [0, 0, 1, 1, 2, 2]  # the conditioning class, grouped
    kept = kept_images[:, 0, 0, 0].astype(int)
    for c in range(3):
        members = np.arange(5 * c, 5 * c + 5)
        expected = sorted(members[np.argsort(-probs[members])[:2]].tolist())
        assert kept[2 * c : 2 * c + 2].tolist() == expected
    # the pseudo-label (argmax) plays no role: only the conditioning class's probability
    with pytest.raises(ValueError, match="fewer than keep_per_class"):
        filter_top_k(images, labels, _LookupClassifier(table), keep_per_class=6)


def test_msds_generate_end_to_end(tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    folder = tmp_path / "denoiser"
    _denoiser().save_pretrained(folder)
    output = tmp_path / "out" / "gen.npz"
    common = ["--denoiser", str(folder), "--num-classes", "3", "--steps", "2", "--device", "cpu"]
    assert msds(["generate", *common, "--num-per-class", "2", "--batch-size", "4", "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    images, labels = load_npz(output)
    assert images.shape == (6, 8, 8, 1) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    expected, _ = generate(DiffusionDenoiser.from_pretrained(folder), 2, 3, steps=2, device="cpu")
    np.testing.assert_array_equal(images, expected)

    net = timm.create_model("msds_small_cnn", num_classes=3, in_chans=1, width=4)
    save_file(net.state_dict(), tmp_path / "filter.safetensors")
    filtered = tmp_path / "filtered.npz"
    argv = [*common, "--num-per-class", "3", "--output", str(filtered), "--keep-per-class", "2",
            "--filter-classifier-name", "msds_small_cnn", "--filter-checkpoint", str(tmp_path / "filter.safetensors"),
            "--filter-mean", "0.5", "--filter-std", "0.5", "--filter-model-kwargs", '{"in_chans": 1, "width": 4}']  # fmt: skip
    assert msds(["generate", *argv]) == 0
    assert "top 2/class" in capsys.readouterr().out
    images, labels = load_npz(filtered)
    assert images.shape == (6, 8, 8, 1) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    classifier = Classifier(
        "msds_small_cnn", 3, checkpoint=tmp_path / "filter.safetensors", mean=[0.5], std=[0.5],
        model_kwargs={"in_chans": 1, "width": 4},
    )  # fmt: skip
    unfiltered = generate(DiffusionDenoiser.from_pretrained(folder), 3, 3, steps=2, device="cpu")
    expected_images, _ = filter_top_k(*unfiltered, classifier, keep_per_class=2)
    np.testing.assert_array_equal(images, expected_images)


def test_msds_generate_errors(tmp_path, capsys):
    folder = tmp_path / "unconditional"
    _denoiser(num_class_embeds=None).save_pretrained(folder)
    base = ["--num-per-class", "1", "--num-classes", "2", "--steps", "2", "--output", str(tmp_path / "x.npz")]
    assert msds(["generate", "--denoiser", str(folder), *base]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "num_class_embeds" in err
    assert msds(["generate", "--denoiser", str(tmp_path / "absent"), *base]) == 2
    assert "not found" in capsys.readouterr().err
    assert msds(["generate", "--denoiser", str(folder), *base, "--keep-per-class", "1"]) == 2
    assert "together" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
