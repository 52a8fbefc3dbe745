import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from msds_lightning.models import DiffusionDenoiser
from msds_lightning.models.denoiser import float64_alphas_cumprod

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


# ------------------------------------------------------------------------------------------------------
# σ → t in float64, as improved-/guided-diffusion compute ᾱ
# ------------------------------------------------------------------------------------------------------


def improved_diffusion_alphas_cumprod(schedule: str, steps: int) -> np.ndarray:
    """ᾱ as improved-diffusion's ``get_named_beta_schedule`` + ``GaussianDiffusion.__init__`` compute it:
    float64 betas (``np.linspace`` for "linear", ``betas_for_alpha_bar`` of the cosine for "cosine"), then
    ``np.cumprod(1.0 - betas)`` in float64."""
    if schedule == "linear":
        scale = 1000 / steps
        betas = np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    else:

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = []
        for i in range(steps):
            t1, t2 = i / steps, (i + 1) / steps
            betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999))
        betas = np.array(betas, dtype=np.float64)
    return np.cumprod(1.0 - betas, axis=0)


def reference_timesteps(alphas_cumprod: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The first t with sqrt((1 - ᾱ_t) / ᾱ_t) >= 2σ, by brute force over the whole table."""
    ratio = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    reached = ratio[None, :] >= 2.0 * np.asarray(sigmas, dtype=np.float64)[:, None]
    assert reached.any(axis=1).all()
    return reached.argmax(axis=1)


def dense_sigma_grid() -> np.ndarray:
    return np.linspace(0.01, 2.0, 200_001)


def float32_path_timesteps(scheduler_config: dict, sigmas: np.ndarray) -> np.ndarray:
    """What σ → t gave before the fix: diffusers' float32 ᾱ cast to float64, the ratio taken in torch."""
    old = DDPMScheduler(**scheduler_config).alphas_cumprod.double()
    return torch.searchsorted(((1.0 - old) / old).sqrt(), 2.0 * torch.from_numpy(sigmas)).numpy()


SCHEDULES = [("cosine", 4000, COSINE_SCHEDULE), ("linear", 1000, LINEAR_SCHEDULE)]


@pytest.mark.parametrize(("schedule", "steps", "config"), SCHEDULES)
def test_alphas_cumprod_is_the_float64_table_of_improved_diffusion(schedule, steps, config, request):
    denoiser = request.getfixturevalue(f"{schedule}_denoiser")
    expected = improved_diffusion_alphas_cumprod(schedule, steps)
    table = float64_alphas_cumprod(denoiser.scheduler)
    assert table.dtype == torch.float64
    assert np.array_equal(table.numpy(), expected)  # bit for bit
    # The float32 buffers are the float64 table rounded once (improved-diffusion's tables cast to float32).
    assert torch.equal(denoiser.alphas_cumprod, torch.from_numpy(expected).float())
    assert torch.equal(denoiser.sqrt_alphas_cumprod, torch.from_numpy(np.sqrt(expected)).float())
    assert torch.equal(
        denoiser.sqrt_one_minus_alphas_cumprod, torch.from_numpy(np.sqrt(1.0 - expected)).float()
    )
    assert DDPMScheduler(**config).alphas_cumprod.dtype == torch.float32  # the table it replaces


@pytest.mark.parametrize(("schedule", "steps", "config"), SCHEDULES)
def test_sigma_to_timestep_matches_the_float64_reference(schedule, steps, config, request):
    denoiser = request.getfixturevalue(f"{schedule}_denoiser")
    alphas_cumprod = improved_diffusion_alphas_cumprod(schedule, steps)

    papers = np.array([0.12, 0.25, 0.5, 1.0])
    expected = reference_timesteps(alphas_cumprod, papers)
    assert [denoiser.timestep_for_sigma(float(s)) for s in papers] == expected.tolist()
    assert expected.tolist() == ([573, 1158, 1984, 2809] if schedule == "cosine" else [70, 145, 259, 396])

    # σ exactly on a schedule boundary maps to that step; one ulp below still does, one ulp above the next.
    steps_on_boundary = np.array([0, 1, 2, 70, 145, 259, 396, 573, steps // 2, steps - 2, steps - 1])
    ratio = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    boundaries = ratio[steps_on_boundary] / 2.0
    assert reference_timesteps(alphas_cumprod, boundaries).tolist() == steps_on_boundary.tolist()
    assert [denoiser.timestep_for_sigma(float(s)) for s in boundaries] == steps_on_boundary.tolist()
    below = np.nextafter(boundaries, 0.0)
    assert denoiser.timesteps_for_sigmas(torch.from_numpy(below)).tolist() == steps_on_boundary.tolist()
    above = np.nextafter(boundaries[:-1], np.inf)
    assert (
        denoiser.timesteps_for_sigmas(torch.from_numpy(above)).tolist()
        == (steps_on_boundary[:-1] + 1).tolist()
    )

    grid = dense_sigma_grid()
    expected = reference_timesteps(alphas_cumprod, grid)
    assert np.array_equal(denoiser.timesteps_for_sigmas(torch.from_numpy(grid)).numpy(), expected)


@pytest.mark.parametrize(
    ("schedule", "steps", "config", "changed_on_grid"), [(*SCHEDULES[0], 88), (*SCHEDULES[1], 3)]
)
def test_the_float32_table_disagreed_on_a_few_sigmas(schedule, steps, config, changed_on_grid):
    # What the fix changed: of σ ∈ linspace(0.01, 2, 200001), the old path (diffusers' float32 ᾱ, torch's
    # float64 sqrt) mapped 88 σ one step off on the cosine T=4000 schedule and 3 σ on the linear T=1000
    # one; σ lying exactly on a schedule boundary mostly were.
    alphas_cumprod = improved_diffusion_alphas_cumprod(schedule, steps)
    grid = dense_sigma_grid()
    difference = float32_path_timesteps(config, grid) - reference_timesteps(alphas_cumprod, grid)
    assert int(np.count_nonzero(difference)) == changed_on_grid
    assert set(np.unique(difference).tolist()) <= {-1, 0, 1}
    ratio = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    assert np.count_nonzero(float32_path_timesteps(config, ratio / 2.0) != np.arange(steps)) > steps // 10


def test_trained_betas_are_taken_in_float64():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64) * (1 + 1e-9)  # not a float32-representable list
    scheduler = DDPMScheduler(trained_betas=betas.tolist())
    assert np.array_equal(float64_alphas_cumprod(scheduler).numpy(), np.cumprod(1.0 - betas))


def test_scaled_linear_is_rebuilt_in_float64():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")  # fmt: skip
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    assert np.array_equal(float64_alphas_cumprod(scheduler).numpy(), np.cumprod(1.0 - betas))


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid"),
        DDPMScheduler(**LINEAR_SCHEDULE, rescale_betas_zero_snr=True),
        # A scheduler whose table does not follow from its config: its own table wins.
        SimpleNamespace(
            alphas_cumprod=torch.linspace(0.999, 0.001, 1000),
            config=SimpleNamespace(**LINEAR_SCHEDULE, trained_betas=None),
        ),
        SimpleNamespace(alphas_cumprod=torch.linspace(0.999, 0.001, 10)),  # no config at all
    ],
    ids=["sigmoid", "zero-snr", "inconsistent", "no-config"],
)
def test_other_schedules_fall_back_to_the_schedulers_own_table(scheduler):
    table = float64_alphas_cumprod(scheduler)
    assert table.dtype == torch.float64
    assert torch.equal(table, scheduler.alphas_cumprod.double())
