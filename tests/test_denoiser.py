import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from msds_lightning.models import DiffusionDenoiser

from .tiny_models import COSINE_SCHEDULE, LINEAR_SCHEDULE, tiny_denoiser, tiny_unet_config


@pytest.fixture(scope="module")
def linear_denoiser():
    return tiny_denoiser("linear")


@pytest.fixture(scope="module")
def cosine_denoiser():
    return tiny_denoiser("cosine")


def noisy_batch(sigma=0.5, batch=2, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=generator)
    return x + sigma * torch.randn(x.shape, generator=generator)


def reference_x0(unet, scheduler, x_noisy, t, channels=3):
    """Independent one-shot denoising straight from the diffusers objects (ε-prediction)."""
    alpha = scheduler.alphas_cumprod[t].double()
    x_t = (alpha.sqrt() * (2 * x_noisy.double() - 1)).float()
    eps = unet(x_t, torch.tensor([float(t)]).expand(len(x_t)), return_dict=False)[0][:, :channels]
    x0 = (x_t.double() - (1 - alpha).sqrt() * eps.double()) / alpha.sqrt()
    return ((x0.clamp(-1, 1) + 1) / 2).float()


# Carlini et al. / MSDS timesteps: the first t with sqrt((1 - ᾱ_t) / ᾱ_t) >= 2σ.
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [("cosine", {0.25: 1158, 0.5: 1984, 1.0: 2809}), ("linear", {0.25: 145, 0.5: 259, 1.0: 396})],
)
def test_timestep_for_sigma_matches_reference_tables(schedule, expected, request):
    denoiser = request.getfixturevalue(f"{schedule}_denoiser")
    for sigma, t in expected.items():
        assert denoiser.timestep_for_sigma(sigma) == t
        assert sigma <= denoiser.effective_sigma(sigma) < sigma * 1.01
    sigmas = torch.tensor(list(expected))
    assert denoiser.timesteps_for_sigmas(sigmas).tolist() == list(expected.values())


def test_timestep_is_the_first_index_reaching_two_sigma(linear_denoiser):
    alphas = linear_denoiser.scheduler.alphas_cumprod.double()
    ratio = ((1 - alphas) / alphas).sqrt()
    for sigma in (0.01, 0.12, 0.3, 3.0, 50.0):
        t = linear_denoiser.timestep_for_sigma(sigma)
        assert ratio[t] >= 2 * sigma
        assert t == 0 or ratio[t - 1] < 2 * sigma


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), 80.0])
def test_timestep_for_sigma_rejects_out_of_range(linear_denoiser, sigma):
    # The linear T=1000 schedule reaches σ ≈ 78.7 at most.
    with pytest.raises(ValueError, match="sigma"):
        linear_denoiser.timestep_for_sigma(sigma)
    with pytest.raises(ValueError, match="sigma"):
        linear_denoiser(noisy_batch(), torch.tensor([0.5, sigma]))


def test_denoise_is_finite_in_unit_range_and_matches_reference(linear_denoiser):
    x_noisy = noisy_batch(sigma=0.5)
    with torch.no_grad():
        out = linear_denoiser(x_noisy, 0.5)
        expected = reference_x0(linear_denoiser.unet, linear_denoiser.scheduler, x_noisy, t=259)
    assert out.shape == x_noisy.shape
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.05  # a real image-like output, not a constant
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_learned_variance_uses_only_the_first_channels():
    denoiser = tiny_denoiser("cosine", learned_variance=True, seed=1)
    assert denoiser.unet.config.out_channels == 6
    x_noisy = noisy_batch(sigma=0.25)
    with torch.no_grad():
        out = denoiser(x_noisy, 0.25)
        expected = reference_x0(denoiser.unet, denoiser.scheduler, x_noisy, t=1158, channels=3)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)

        # Scrambling the variance half of the output layer must not matter ...
        conv_out = denoiser.unet.conv_out
        conv_out.weight[3:].normal_(std=10.0)
        conv_out.bias[3:].fill_(5.0)
        assert torch.equal(denoiser(x_noisy, 0.25), out)
        # ... while the prediction half does.
        conv_out.bias[:3].add_(0.5)
        assert not torch.allclose(denoiser(x_noisy, 0.25), out)


@pytest.mark.parametrize(("rescale", "expected_timestep"), [(True, 1158 * 1000 / 4000), (False, 1158.0)])
def test_rescale_timesteps_feeds_the_unet_t_times_1000_over_T(rescale, expected_timestep):
    denoiser = tiny_denoiser("cosine", rescale_timesteps=rescale)
    seen = []
    denoiser.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    with torch.no_grad():
        denoiser(noisy_batch(sigma=0.25), 0.25)
    (timesteps,) = seen
    assert timesteps.dtype == torch.float32
    assert timesteps.tolist() == [expected_timestep] * 2  # 289.5 when rescaled: not truncated to an int


def test_per_sample_sigma_matches_per_sigma_calls(linear_denoiser):
    x_noisy = noisy_batch(batch=3)
    sigmas = torch.tensor([0.25, 1.0, 0.5])
    with torch.no_grad():
        out = linear_denoiser(x_noisy, sigmas)
        for i, sigma in enumerate(sigmas.tolist()):
            torch.testing.assert_close(
                out[i : i + 1], linear_denoiser(x_noisy[i : i + 1], sigma), atol=1e-5, rtol=0
            )
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        linear_denoiser(x_noisy, torch.tensor([0.25, 0.5]))


def test_gradients_reach_every_unet_parameter():
    denoiser = tiny_denoiser("linear").train()
    x_noisy = noisy_batch(sigma=0.25, batch=4)
    out = denoiser(x_noisy, torch.tensor([0.12, 0.25, 0.5, 1.0]))
    F.mse_loss(out, x_noisy.clamp(0, 1)).backward()
    for name, parameter in denoiser.unet.named_parameters():
        assert parameter.grad is not None, name
    assert denoiser.unet.conv_out.weight.grad.abs().sum() > 0


def test_buffers_follow_the_module_and_lookup_survives_dtype_changes():
    denoiser = tiny_denoiser("linear")
    assert denoiser.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(denoiser.alphas_cumprod, denoiser.scheduler.alphas_cumprod)
    assert "alphas_cumprod" not in denoiser.state_dict()  # derived from the scheduler, not a weight
    denoiser.to(torch.float64)
    assert denoiser.alphas_cumprod.dtype == torch.float64
    assert denoiser.timestep_for_sigma(0.5) == 259


def test_pad_to_reflection_pads_and_crops_back():
    denoiser = tiny_denoiser("linear", pad_to=32)
    x_noisy = noisy_batch(sigma=0.5, size=28)
    with torch.no_grad():
        out = denoiser(x_noisy, 0.5)
        alpha = denoiser.scheduler.alphas_cumprod[259]
        x_t = alpha.sqrt() * (2 * x_noisy - 1)
        eps = denoiser.unet(
            F.pad(x_t, (2, 2, 2, 2), mode="reflect"), torch.tensor([259.0]), return_dict=False
        )[0]
        x0 = (x_t - (1 - alpha).sqrt() * eps[..., 2:30, 2:30]) / alpha.sqrt()
    assert out.shape == x_noisy.shape
    torch.testing.assert_close(out, (x0.clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at most 32x32"):
        denoiser(noisy_batch(size=34), 0.5)


def test_rejects_wrong_channels_and_sizes(linear_denoiser):
    with pytest.raises(ValueError, match="expected 3 channels.*got 1"):
        linear_denoiser(torch.rand(2, 1, 32, 32), 0.5)
    with pytest.raises(ValueError, match="divisible by 2.*got 33x32"):
        linear_denoiser(torch.rand(2, 3, 33, 32), 0.5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        linear_denoiser(torch.rand(3, 32, 32), 0.5)
    with pytest.raises(ValueError, match="pad_to"):
        tiny_denoiser("linear", pad_to=33)


def test_from_config_validates_its_inputs():
    with pytest.raises(TypeError, match="block_out_channel"):
        DiffusionDenoiser.from_config({**tiny_unet_config(), "block_out_channel": (8, 16)}, LINEAR_SCHEDULE)
    with pytest.raises(ValueError, match="out_channels"):
        DiffusionDenoiser.from_config({**tiny_unet_config(), "out_channels": 4}, LINEAR_SCHEDULE)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_other_prediction_types(prediction_type):
    torch.manual_seed(0)
    denoiser = DiffusionDenoiser.from_config(
        tiny_unet_config(), {**LINEAR_SCHEDULE, "prediction_type": prediction_type}
    )
    x_noisy = noisy_batch(sigma=0.5)
    with torch.no_grad():
        out = denoiser(x_noisy, 0.5)
        alpha = denoiser.scheduler.alphas_cumprod[259]
        x_t = alpha.sqrt() * (2 * x_noisy - 1)
        pred = denoiser.unet(x_t, torch.tensor([259.0]), return_dict=False)[0]
    x0 = pred if prediction_type == "sample" else alpha.sqrt() * x_t - (1 - alpha).sqrt() * pred
    torch.testing.assert_close(out, (x0.clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    denoiser = tiny_denoiser("cosine", learned_variance=True, rescale_timesteps=True, pad_to=32, seed=3)
    denoiser.save_pretrained(tmp_path / "denoiser")
    assert json.loads((tmp_path / "denoiser" / "denoiser_config.json").read_text()) == {
        "rescale_timesteps": True,
        "pad_to": 32,
    }
    assert (tmp_path / "denoiser" / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    loaded = DiffusionDenoiser.from_pretrained(tmp_path / "denoiser").eval()
    assert (loaded.rescale_timesteps, loaded.pad_to, loaded.num_train_timesteps) == (True, 32, 4000)
    x_noisy = noisy_batch(sigma=0.25, size=24)
    with torch.no_grad():
        assert torch.equal(loaded(x_noisy, 0.25), denoiser(x_noisy, 0.25))

    overridden = DiffusionDenoiser.from_pretrained(tmp_path / "denoiser", rescale_timesteps=False, pad_to=0)
    assert (overridden.rescale_timesteps, overridden.pad_to) == (False, None)


def test_loads_folders_with_everything_at_the_root(tmp_path):
    denoiser = tiny_denoiser("linear", seed=4)
    denoiser.unet.save_pretrained(tmp_path)
    DDPMScheduler(**LINEAR_SCHEDULE).save_pretrained(tmp_path)
    loaded = DiffusionDenoiser.from_pretrained(tmp_path).eval()
    assert loaded.rescale_timesteps is False and loaded.pad_to is None
    x_noisy = noisy_batch()
    with torch.no_grad():
        assert torch.equal(loaded(x_noisy, 0.5), denoiser(x_noisy, 0.5))


def test_missing_or_broken_checkpoints_name_the_path(tmp_path):
    missing = tmp_path / "no-such-denoiser"
    with pytest.raises(FileNotFoundError, match="no-such-denoiser"):
        DiffusionDenoiser.from_pretrained(missing)

    checkpoint_file = tmp_path / "model.pt"
    checkpoint_file.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="model.pt"):
        DiffusionDenoiser.from_pretrained(checkpoint_file)

    folder = tmp_path / "broken"
    tiny_denoiser("linear").save_pretrained(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file" * 8)
    with pytest.raises(OSError, match="broken/unet") as excinfo:
        DiffusionDenoiser.from_pretrained(folder)
    assert str(weights) in str(excinfo.value)

    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        DiffusionDenoiser.from_pretrained(folder)


def test_cosine_schedule_matches_improved_diffusion_constants():
    # improved-diffusion's cosine ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008, with
    # β clipped at 0.999; diffusers' squaredcos_cap_v2 must reproduce it for the table above to apply.
    steps = torch.arange(4001, dtype=torch.float64) / 4000
    f = torch.cos((steps + 0.008) / 1.008 * torch.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    expected = torch.cumprod(1 - betas, dim=0)
    actual = DDPMScheduler(**COSINE_SCHEDULE).alphas_cumprod.double()
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-4)
