"""OpenAI improved/guided-diffusion UNet → diffusers conversion (``msds_lightning.convert``).

Fixtures (../shared/fixtures/openai_unet, see its README): two tiny OpenAI UNets with random weights and the
outputs the original library computed for a fixed input (fp32 and float64), and manifests of every
parameter name and shape of the two released checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from msds_lightning.cli import main as msds
from msds_lightning.convert import (
    KINDS,
    CheckpointMismatchError,
    convert_openai_checkpoint,
    convert_openai_state_dict,
    diffusers_config_from_openai,
    load_openai_state_dict,
    openai_to_diffusers,
)
from msds_lightning.models import DiffusionDenoiser

MANIFESTS = {
    "improved-cifar10": "improved_diffusion_cifar10_uncond_50M.json",
    "guided-256": "guided_diffusion_256x256_uncond.json",
}
TINY = {"improved": "improved_tiny.pt", "guided": "guided_tiny.pt"}
TINY_KIND = {"improved": "improved-cifar10", "guided": "guided-256"}

# Float64 through both implementations: the mapping is exact up to summation order (measured ~5e-14).
ATOL_FLOAT64 = 1e-8
# fp32: both the library's output and ours carry rounding error that these random, sharply attending tiny
# nets amplify; ours differs from the float64 reference by up to ~3e-4 on guided_tiny (the library's by
# ~1e-4), so 1e-3 (the fixture README's recommendation) is the portable bound. The float64 check above is
# the one that catches small mistakes (e.g. GroupNorm eps).
ATOL_FP32 = 1e-3


def _fixtures(shared_fixtures: Path) -> Path:
    return shared_fixtures / "openai_unet"


def _tiny(shared_fixtures: Path, name: str) -> dict:
    return torch.load(_fixtures(shared_fixtures) / TINY[name], map_location="cpu", weights_only=True)


def _manifest(shared_fixtures: Path, kind: str) -> dict:
    return json.loads((_fixtures(shared_fixtures) / MANIFESTS[kind]).read_text())


def _tiny_unet(fixture: dict) -> UNet2DModel:
    config = diffusers_config_from_openai(fixture["config"])
    unet = UNet2DModel(**config)
    unet.load_state_dict(openai_to_diffusers(fixture["state_dict"], config), strict=True)
    return unet.eval()


def _save_constant_state_dict(shapes: dict, path: Path) -> dict[str, torch.Tensor]:
    """Write a state dict with ``shapes`` whose tensors are broadcast constants (one distinct value per
    tensor, a single stored element each), so that a 50M-parameter layout costs a few KB on disk."""
    state_dict = {
        key: torch.full((1,), (i + 1) / 1024.0).expand(*shape) if shape else torch.tensor((i + 1) / 1024.0)
        for i, (key, shape) in enumerate(shapes.items())
    }
    torch.save(state_dict, path)
    return state_dict


# ------------------------------------------------------------------------------------------------------
# Golden outputs of the original library
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["improved", "guided"])
def test_tiny_golden_outputs(shared_fixtures, name):
    fixture = _tiny(shared_fixtures, name)
    unet = _tiny_unet(fixture)
    x, t = fixture["x"], fixture["t"].float()
    with torch.no_grad():
        out = unet(x, t, return_dict=False)[0]
        assert out.shape == fixture["out"].shape == (2, 6, 16, 16)
        assert (out - fixture["out"]).abs().max().item() <= ATOL_FP32
        if name == "improved":  # fractional timesteps (t·1000/4000) pass through unchanged
            rescaled = unet(x, fixture["t_rescaled"].float(), return_dict=False)[0]
            assert (rescaled - fixture["out_t_rescaled"]).abs().max().item() <= ATOL_FP32
        unet.double()
        out64 = unet(x.double(), t, return_dict=False)[0]
    assert out64.dtype == torch.float64
    assert (out64 - fixture["out_float64"]).abs().max().item() <= ATOL_FLOAT64


def test_qkv_is_split_per_head(shared_fixtures):
    """Legacy layout: rows [h·3d, h·3d+d) are q of head h, then k, then v; the new order is [q | k | v]."""
    fixture = _tiny(shared_fixtures, "improved")
    config = diffusers_config_from_openai(fixture["config"])  # 32 channels, 2 heads of 16
    state_dict = dict(fixture["state_dict"])
    rows = torch.arange(96, dtype=torch.float32)
    state_dict["middle_block.1.qkv.weight"] = rows.view(96, 1, 1).expand(96, 32, 1)
    state_dict["middle_block.1.qkv.bias"] = rows
    i = torch.arange(32)
    head, j = i // 16, i % 16
    for new_order, first_row in ((False, head * 48 + j), (True, i)):
        converted = openai_to_diffusers(state_dict, config, new_attention_order=new_order)
        step = 32 if new_order else 16
        for n, part in enumerate("qkv"):
            want = (first_row + n * step).float()
            assert torch.equal(converted[f"mid_block.attentions.0.to_{part}.bias"], want)
            assert torch.equal(converted[f"mid_block.attentions.0.to_{part}.weight"][:, 0], want)


# ------------------------------------------------------------------------------------------------------
# The released checkpoints' layouts (manifests): shapes only, on the meta device
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_matches_manifest(shared_fixtures, kind):
    manifest = _manifest(shared_fixtures, kind)
    spec = KINDS[kind]
    assert manifest["config"] == dict(spec.openai_config)
    assert diffusers_config_from_openai(manifest["config"], kind) == dict(spec.unet)
    assert dict(spec.unet) == manifest["diffusers_unet2dmodel_config_checked"]["config"]
    assert manifest["diffusion"]["rescale_timesteps"] == spec.rescale_timesteps
    assert manifest["diffusion"]["diffusion_steps"] == spec.scheduler["num_train_timesteps"]
    assert manifest["num_parameters"] == spec.num_parameters

    shapes = {key: tuple(shape) for key, shape in manifest["parameters"].items()}
    assert sum(torch.Size(s).numel() for s in shapes.values()) == manifest["num_parameters"]
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    converted = openai_to_diffusers(state_dict, spec.unet)

    with torch.device("meta"):
        unet = UNet2DModel(**spec.unet)
    expected = unet.state_dict()
    assert list(converted) == list(expected)  # every diffusers parameter filled, nothing extra
    for key, tensor in expected.items():
        assert converted[key].shape == tensor.shape, key
    assert sum(t.numel() for t in converted.values()) == manifest["num_parameters"]
    unet.load_state_dict(converted, strict=True)


def test_improved_cifar10_end_to_end_via_cli(shared_fixtures, tmp_path, capsys):
    """The released CIFAR-10 layout through the command line: file → folder → DiffusionDenoiser."""
    manifest = _manifest(shared_fixtures, "improved-cifar10")
    src = tmp_path / "cifar10_uncond_50M_500K.pt"
    state_dict = _save_constant_state_dict({k: tuple(v) for k, v in manifest["parameters"].items()}, src)
    dst = tmp_path / "improved_diffusion_uncond_50M"

    assert msds(["convert-openai", str(src), str(dst), "--kind", "improved-cifar10"]) == 0
    printed = capsys.readouterr().out
    assert str(dst) in printed and "from_pretrained" in printed
    assert (dst / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((dst / "denoiser_config.json").read_text()) == {
        "rescale_timesteps": True,
        "pad_to": None,
    }
    record = json.loads((dst / "convert_openai.json").read_text())  # provenance, not read when loading
    assert record["kind"] == "improved-cifar10" and record["source"] == src.name
    assert record["scheduler"] == dict(KINDS["improved-cifar10"].scheduler)

    denoiser = DiffusionDenoiser.from_pretrained(dst)
    assert denoiser.rescale_timesteps is True and denoiser.pad_to is None
    assert denoiser.num_train_timesteps == 4000
    assert denoiser.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert denoiser.timestep_for_sigma(0.25) == 1158  # Carlini et al.'s t for σ = 0.25 on this schedule
    assert dict(denoiser.unet.config) | dict(KINDS["improved-cifar10"].unet) == dict(denoiser.unet.config)
    loaded = denoiser.unet.state_dict()
    assert sum(t.numel() for t in loaded.values()) == 52_546_438
    reference = openai_to_diffusers(state_dict, KINDS["improved-cifar10"].unet)
    for key, tensor in reference.items():
        assert torch.equal(loaded[key], tensor), key
    with torch.no_grad():
        assert denoiser(torch.rand(1, 3, 32, 32), 0.25).shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------------------------------
# Folder round trip with the tiny networks (explicit OpenAI config)
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["improved", "guided"])
def test_tiny_folder_round_trip(shared_fixtures, tmp_path, name):
    fixture = _tiny(shared_fixtures, name)
    kind = TINY_KIND[name]
    src = tmp_path / "model.pt"
    torch.save(fixture["state_dict"], src)

    dst = convert_openai_checkpoint(src, tmp_path / "out", kind, openai_config=fixture["config"])
    saved = json.loads((dst / "denoiser_config.json").read_text())
    assert saved == {"rescale_timesteps": KINDS[kind].rescale_timesteps, "pad_to": KINDS[kind].pad_to}

    denoiser = DiffusionDenoiser.from_pretrained(dst, pad_to=0)  # the tiny net runs at 16 px, unpadded
    assert denoiser.num_train_timesteps == KINDS[kind].scheduler["num_train_timesteps"]
    with torch.no_grad():
        eps = denoiser.model_output(fixture["x"], fixture["t"])  # rescales t itself where the kind says so
    golden = fixture["out_t_rescaled"] if name == "improved" else fixture["out"]
    assert (eps - golden[:, :3]).abs().max().item() <= ATOL_FP32

    if name == "guided":
        assert DiffusionDenoiser.from_pretrained(dst).pad_to == 256  # the kind's default, from the folder
        # an explicit pad_to (or none) is recorded instead
        convert_openai_checkpoint(src, tmp_path / "none", kind, None, openai_config=fixture["config"])
        assert DiffusionDenoiser.from_pretrained(tmp_path / "none").pad_to is None


def test_the_fixture_file_itself_is_accepted(shared_fixtures):
    """A dict holding the state dict under "state_dict" (beside other entries) is unwrapped."""
    path = _fixtures(shared_fixtures) / TINY["guided"]
    state_dict = load_openai_state_dict(path)
    assert len(state_dict) == 214 and all(t.dtype == torch.float32 for t in state_dict.values())


def test_half_precision_and_nested_checkpoints_load_as_fp32(shared_fixtures, tmp_path):
    fixture = _tiny(shared_fixtures, "improved")
    half = {"module." + k: v.half() for k, v in fixture["state_dict"].items()}
    torch.save({"ema": half, "step": 500000}, tmp_path / "ema.pt")
    state_dict = load_openai_state_dict(tmp_path / "ema.pt")
    assert list(state_dict) == list(fixture["state_dict"])
    assert all(t.dtype == torch.float32 for t in state_dict.values())


# ------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------


def test_missing_damaged_and_empty_files(shared_fixtures, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_openai_checkpoint(missing, tmp_path / "out", "improved-cifar10")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\x00\xff" * 10)
    with pytest.raises(OSError, match="garbage.pt"):
        convert_openai_checkpoint(garbage, tmp_path / "out", "improved-cifar10")

    truncated = tmp_path / "truncated.pt"
    torch.save(_tiny(shared_fixtures, "improved")["state_dict"], truncated)
    truncated.write_bytes(truncated.read_bytes()[:100_000])
    with pytest.raises(OSError, match="truncated.pt"):
        load_openai_state_dict(truncated)

    not_weights = tmp_path / "not_weights.pt"
    torch.save({"step": 3, "args": [1, 2]}, not_weights)
    with pytest.raises(ValueError, match="not_weights.pt.*no UNet state dict"):
        load_openai_state_dict(not_weights)

    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        load_openai_state_dict(tmp_path)
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert msds(["convert-openai", str(tmp_path / "missing.pt"), str(tmp_path / "out"), "--kind", "guided-256"]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("msds convert-openai: error:") and "missing.pt" in last_line
    with pytest.raises(SystemExit):
        msds(["convert-openai", str(tmp_path / "x.pt"), str(tmp_path / "out"), "--kind", "guided-256", "--pad-to", "-3"])
    with pytest.raises(SystemExit):
        msds(["convert-openai", str(tmp_path / "x.pt"), str(tmp_path / "out"), "--kind", "sd-1.5"])


def test_tiny_checkpoint_under_a_real_kind(shared_fixtures, tmp_path):
    src = tmp_path / "improved_tiny_weights.pt"
    torch.save(_tiny(shared_fixtures, "improved")["state_dict"], src)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_openai_checkpoint(src, tmp_path / "out", "guided-256")
    message = str(info.value)
    assert str(src) in message and "guided-256" in message
    assert "model_channels 32" in message and "model_channels 256" in message  # what it is vs. expects
    assert "convolution downsampling" in message
    assert "shape mismatches" in message and "input_blocks.0.0.weight: checkpoint [32, 3, 3, 3]" in message
    assert "... and" in message and len(message) < 6000  # listings are truncated
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("layout", "wrong_kind"), [("improved-cifar10", "guided-256"), ("guided-256", "improved-cifar10")]
)
def test_released_layout_under_the_other_kind(shared_fixtures, tmp_path, layout, wrong_kind):
    shapes = {k: tuple(v) for k, v in _manifest(shared_fixtures, layout)["parameters"].items()}
    src = tmp_path / KINDS[layout].checkpoint
    _save_constant_state_dict(shapes, src)
    with pytest.raises(
        CheckpointMismatchError, match=f"looks like an? {layout} checkpoint.*not --kind {wrong_kind}"
    ):
        convert_openai_checkpoint(src, tmp_path / "out", wrong_kind)


def test_mismatches_name_keys_and_shapes(shared_fixtures):
    fixture = _tiny(shared_fixtures, "guided")
    config = diffusers_config_from_openai(fixture["config"])
    state_dict = dict(fixture["state_dict"])

    broken = {k: v for k, v in state_dict.items() if k != "output_blocks.3.1.qkv.bias"}
    broken["label_emb.weight"] = torch.zeros(10, 128)
    broken["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    with pytest.raises(CheckpointMismatchError) as info:
        openai_to_diffusers(broken, config)
    message = str(info.value)
    assert (
        "missing OpenAI keys (1): output_blocks.3.1.qkv.bias (for up_blocks.1.attentions.1.to_q.bias)"
        in message
    )
    assert "unexpected OpenAI keys (1): label_emb.weight" in message
    assert "out.2.weight: checkpoint [3, 32, 3, 3], but conv_out.weight needs [6, 32, 3, 3]" in message

    # the same state dict read with the other resampling style: keys do not line up
    improved_style = diffusers_config_from_openai({**fixture["config"], "resblock_updown": False})
    with pytest.raises(CheckpointMismatchError, match="missing OpenAI keys"):
        openai_to_diffusers(state_dict, improved_style)

    with pytest.raises(CheckpointMismatchError, match="the given OpenAI config"):
        convert_openai_state_dict(broken, "guided-256", openai_config=fixture["config"])


def test_configs_diffusers_cannot_express(shared_fixtures):
    config = dict(_tiny(shared_fixtures, "improved")["config"])
    with pytest.raises(ValueError, match="class-conditional"):
        diffusers_config_from_openai({**config, "num_classes": 1000})
    with pytest.raises(ValueError, match="single attention_head_dim"):  # 32/2 = 16 vs 64/2 = 32 wide heads
        diffusers_config_from_openai({**config, "channel_mult": [1, 2, 2], "attention_resolutions": [1, 2]})
    with pytest.raises(ValueError, match="conv_resample"):
        diffusers_config_from_openai({**config, "conv_resample": False})
    with pytest.raises(ValueError, match="unknown keys"):
        diffusers_config_from_openai({**config, "learn_sigma": True})
    with pytest.raises(ValueError, match="unknown kind"):
        convert_openai_state_dict({}, "guided-512")


def test_channel_mult_other_than_one_first_is_refused_up_front(shared_fixtures, tmp_path):
    # guided-diffusion's 512 px UNet: its first level is 0.5·model_channels wide, its timestep embedding
    # model_channels; UNet2DModel derives both from block_out_channels[0], so it would build a zero-channel
    # model (int(0.5) = 0) and report unexpected keys. It is refused before the checkpoint is read.
    guided_512 = {**_manifest(shared_fixtures, "guided-256")["config"], "image_size": 512,
                  "channel_mult": [0.5, 1, 1, 2, 2, 4, 4]}  # fmt: skip
    expected = (
        "OpenAI UNet config: channel_mult[0] must be 1 to convert, got 0.5 in channel_mult "
        "(0.5, 1, 1, 2, 2, 4, 4), because diffusers' UNet2DModel makes its first level exactly as wide as its "
        "timestep embedding (block_out_channels[0]), while this UNet's first level has 0.5·model_channels "
        "channels and its timestep embedding model_channels."
    )
    with pytest.raises(ValueError) as info:
        diffusers_config_from_openai(guided_512)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:  # the file does not even exist: the config is checked first
        convert_openai_checkpoint(tmp_path / "512x512_diffusion.pt", tmp_path / "out", "guided-256",
                                  openai_config=guided_512)  # fmt: skip
    assert str(info.value) == expected
    with pytest.raises(
        ValueError, match=r"channel_mult\[0\] must be 1 to convert, got 2 in channel_mult \(2, 2\)"
    ):
        diffusers_config_from_openai({**_tiny(shared_fixtures, "improved")["config"], "channel_mult": [2, 2]})
    with pytest.raises(ValueError, match="channel_mult must list at least one level"):
        diffusers_config_from_openai({**_tiny(shared_fixtures, "improved")["config"], "channel_mult": []})
    assert not (tmp_path / "out").exists()


def test_bad_destination_and_pad_to(shared_fixtures, tmp_path):
    fixture = _tiny(shared_fixtures, "improved")
    src = tmp_path / "model.pt"
    torch.save(fixture["state_dict"], src)
    kwargs = {"openai_config": fixture["config"]}
    with pytest.raises(ValueError, match="pad_to"):
        convert_openai_checkpoint(src, tmp_path / "out", "improved-cifar10", 30, **kwargs)
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_openai_checkpoint(src, used, "improved-cifar10", **kwargs)
    convert_openai_checkpoint(src, used, "improved-cifar10", overwrite=True, **kwargs)
    assert (used / "notes.txt").read_text() == "mine" and (used / "unet" / "config.json").is_file()
