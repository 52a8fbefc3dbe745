from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from msds_lightning.models import Classifier, DenoiseAndClassify

from .tiny_models import tiny_classifier, tiny_denoiser

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Recorder(nn.Module):
    """Returns per-channel means as 'logits' and remembers what it was fed."""

    def forward(self, x):
        self.seen = x
        return x.mean(dim=(2, 3))


def test_resize_then_normalize_before_the_model():
    recorder = Recorder()
    classifier = Classifier.from_module(recorder, mean=CIFAR10_MEAN, std=CIFAR10_STD, input_size=64)
    x = torch.rand(2, 3, 32, 32)
    logits = classifier(x)

    resized = F.interpolate(x, size=(64, 64), mode="bicubic", antialias=True)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (resized - mean) / std
    torch.testing.assert_close(recorder.seen, expected)
    torch.testing.assert_close(logits, expected.mean(dim=(2, 3)))


def test_resize_without_antialias_is_torchvisions_tensor_resize():
    # MSDS's classifier is Sequential(torchvision Resize(224, bicubic), CLIP) on tensors, without antialias.
    from torchvision.transforms import InterpolationMode, Resize

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    Classifier.from_module(recorder, input_size=224, antialias=False)(x)
    assert torch.equal(recorder.seen, F.interpolate(x, size=(224, 224), mode="bicubic", antialias=False))
    assert torch.equal(
        recorder.seen, Resize(224, interpolation=InterpolationMode.BICUBIC, antialias=False)(x)
    )
    antialiased = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True)
    assert (recorder.seen - antialiased).abs().max() > 0.1  # 0.108 on this image: not a rounding difference

    Classifier.from_module(recorder, input_size=(16, 24), interpolation="bilinear", antialias=False)(x)
    assert torch.equal(recorder.seen, F.interpolate(x, size=(16, 24), mode="bilinear", antialias=False))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "area"])
def test_default_antialias_is_unchanged(interpolation):
    # None keeps the behaviour from before the option: antialias for bilinear/bicubic only, also for timm.
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    recorder = Recorder()
    classifier = Classifier.from_module(recorder, input_size=48, interpolation=interpolation)
    classifier(x)
    on = interpolation in ("bilinear", "bicubic")
    assert classifier.antialias is on
    assert torch.equal(recorder.seen, F.interpolate(x, size=(48, 48), mode=interpolation, antialias=on))
    assert tiny_classifier(input_size=32).antialias is True
    assert tiny_classifier(input_size=32, antialias=False).antialias is False


def test_antialias_needs_a_mode_that_has_it():
    with pytest.raises(ValueError, match="antialias=True needs interpolation 'bilinear' or 'bicubic'"):
        Classifier.from_module(Recorder(), input_size=64, interpolation="nearest", antialias=True)
    with pytest.raises(ValueError, match="antialias must be"):
        Classifier.from_module(Recorder(), input_size=64, antialias="no")
    assert "antialias=False" in repr(Classifier.from_module(Recorder(), input_size=64, antialias=False))


def test_msds_configs_resize_without_antialias():
    # Only the MSDS CIFAR-10 classifier resizes (32 -> 224); the ImageNet one is fed 224 px crops as they are,
    # and Carlini et al.'s classifiers (components/) keep the antialiased resize.
    import yaml

    configs = Path(__file__).resolve().parents[1] / "msds_lightning" / "configs"
    msds_cifar = yaml.safe_load((configs / "cifar10" / "classifier.yaml").read_text())["init_args"]
    assert msds_cifar["antialias"] is False and msds_cifar["input_size"] == 224
    assert msds_cifar.get("interpolation", "bicubic") == "bicubic"
    assert (
        "input_size"
        not in yaml.safe_load((configs / "imagenet" / "classifier.yaml").read_text())["init_args"]
    )
    for carlini in (configs / "components" / "classifiers").glob("*.yaml"):
        assert "antialias" not in yaml.safe_load(carlini.read_text())["init_args"], carlini


def test_from_module_without_statistics_passes_pixels_through():
    recorder = Recorder()
    x = torch.rand(2, 3, 8, 8)
    Classifier.from_module(recorder)(x)
    assert torch.equal(recorder.seen, x)
    with pytest.raises(ValueError, match="mean and std"):
        Classifier.from_module(recorder, mean=CIFAR10_MEAN)
    with pytest.raises(ValueError, match="interpolation"):
        Classifier.from_module(recorder, input_size=16, interpolation="lanczos")
    with pytest.raises(ValueError, match="std must be positive"):
        Classifier.from_module(recorder, mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="expected 1 channels"):
        Classifier.from_module(recorder, mean=(0.5,), std=(0.5,))(x)


def test_timm_classifier_normalizes_with_explicit_or_pretrained_statistics():
    explicit = tiny_classifier(mean=CIFAR10_MEAN, std=CIFAR10_STD)
    torch.testing.assert_close(explicit.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = explicit(x)
        manual = explicit.model((x - explicit.mean) / explicit.std)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, manual)

    # Defaults come from the timm model's pretrained config.
    overlay = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    default = tiny_classifier(model_kwargs={"pretrained_cfg_overlay": overlay})
    torch.testing.assert_close(default.mean.flatten(), torch.tensor(overlay["mean"]))
    torch.testing.assert_close(default.std.flatten(), torch.tensor(overlay["std"]))
    # Normalization is configuration, not state: it must not leak into (or be overwritten by) checkpoints.
    assert set(default.state_dict()) == {f"model.{key}" for key in default.model.state_dict()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_file_is_loaded_through_timm(tmp_path, suffix):
    source = tiny_classifier(seed=1)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.model.state_dict(), path)
    else:
        torch.save({"state_dict": source.model.state_dict()}, path)

    loaded = tiny_classifier(seed=2, checkpoint=path)
    fresh = tiny_classifier(seed=2)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
        assert not torch.allclose(fresh(x), source(x))  # the seeds alone give different weights


def test_checkpoint_with_another_head_keeps_the_backbone(tmp_path):
    source = tiny_classifier(num_classes=10, seed=1)
    path = tmp_path / "backbone.safetensors"
    save_file(source.model.state_dict(), path)
    loaded = tiny_classifier(num_classes=4, seed=2, checkpoint=path, checkpoint_num_classes=10)
    assert loaded.model.head.weight.shape[0] == 4
    assert torch.equal(loaded.model.patch_embed.proj.weight, source.model.patch_embed.proj.weight)
    # Loading a 10-class head into a 4-class model without saying so is a clear error, not a silent drop.
    with pytest.raises(OSError, match="backbone.safetensors"):
        tiny_classifier(num_classes=4, checkpoint=path)


def test_bad_checkpoint_paths_name_the_file(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        tiny_classifier(checkpoint=missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"definitely not safetensors")
    with pytest.raises(OSError, match="garbage.safetensors"):
        tiny_classifier(checkpoint=garbage)


def test_denoise_and_classify_composes_the_two_models():
    denoiser = tiny_denoiser("linear")
    classifier = tiny_classifier()
    model = DenoiseAndClassify(denoiser, classifier, sigma=0.25)
    x_noisy = torch.rand(2, 3, 32, 32) + 0.25 * torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x_noisy), classifier(denoiser(x_noisy, 0.25)))
        torch.testing.assert_close(model(x_noisy, sigma=1.0), classifier(denoiser(x_noisy, 1.0)))
        assert not torch.allclose(model(x_noisy, sigma=1.0), model(x_noisy))
    with pytest.raises(ValueError, match="sigma"):
        DenoiseAndClassify(denoiser, classifier)(x_noisy)
    with pytest.raises(ValueError, match="sigma"):
        DenoiseAndClassify(denoiser, classifier, sigma=0.0)
