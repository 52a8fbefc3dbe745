"""Any improved-/guided-diffusion UNet through ``msds convert-openai SRC DST --model-flags "..."``.

Golden fixtures (tests/fixtures/openai_unet, made by tests/fixtures/make_openai_goldens.py with the original
OpenAI code): four small layouts beyond the two released ones, with random weights, the flags they were
trained with, and what the original code computes (network output in fp32 and float64, the timesteps its
diffusion feeds the network, the float64 betas). The released checkpoints' layouts come from the manifests
in ../shared/fixtures/openai_unet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msds_lightning.cli import main as msds
from msds_lightning.convert import (
    KINDS,
    CheckpointMismatchError,
    convert_openai_checkpoint,
    diffusers_config_from_openai,
)
from msds_lightning.convert.checkpoint import CONVERSION_RECORD, _openai_shapes, openai_setup_from_flags
from msds_lightning.convert.flags import parse_model_flags, scheduler_config
from msds_lightning.convert.infer import Layout, infer_layout, resolve_setup
from msds_lightning.convert.keymap import openai_to_diffusers
from msds_lightning.models import DiffusionDenoiser
from msds_lightning.models.denoiser import float64_alphas_cumprod

FIXTURES = Path(__file__).parent / "fixtures" / "openai_unet"
LAYOUTS = ["improved_heads_noss", "guided_head_channels", "guided_new_order", "improved_single_head"]
ATOL_FLOAT64 = 1e-8  # measured: ≤ 4e-14 on all four
ATOL_FP32 = 1e-3  # as in tests/test_convert.py (fp32 rounding of the random, sharply attending nets)
# The library's diffusion enums → what the converted DDPMScheduler must say.
PREDICTION = {"EPSILON": "epsilon", "START_X": "sample"}
VARIANCE = {"LEARNED_RANGE": "learned_range", "FIXED_LARGE": "fixed_large", "FIXED_SMALL": "fixed_small"}

IMPROVED_CIFAR10_FLAGS = (
    "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 "
    "--diffusion_steps 4000 --noise_schedule cosine"
)
GUIDED_256_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)


def _library_args(fixture: dict) -> list[str]:
    # improved-diffusion's flags alone do not say which library trained the model (guided-only flags do)
    return ["--library", "improved-diffusion"] if fixture["library"] == "improved-diffusion" else []


def _shapes(fixture: dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in fixture["state_dict"].items()}


def _constant_checkpoint(shapes: dict, path: Path) -> None:
    """A checkpoint with ``shapes`` whose tensors are broadcast constants (a few KB for any size)."""
    torch.save({key: torch.full((1,), 0.01).expand(*shape) for key, shape in shapes.items()}, path)


def _layout_checkpoint(openai_config: dict, path: Path) -> None:
    """A checkpoint with the parameter names and shapes of OpenAI ``UNetModel(**openai_config)``; heads do
    not change them, so they are set to one per layer to get a diffusers config that lists the shapes."""
    single_head = {**openai_config, "num_heads": 1, "num_heads_upsample": -1, "num_head_channels": -1}
    _constant_checkpoint(_openai_shapes(diffusers_config_from_openai(single_head)), path)


def _manifest_shapes(shared_fixtures: Path, name: str) -> dict[str, tuple[int, ...]]:
    manifest = json.loads((shared_fixtures / "openai_unet" / name).read_text())
    return {key: tuple(shape) for key, shape in manifest["parameters"].items()}


# ------------------------------------------------------------------------------------------------------
# The four golden layouts, end to end through the command line
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_converts_through_cli_and_matches_original(tmp_path, capsys, name):
    fixture = _fixture(name)
    src = FIXTURES / f"{name}.pt"  # the fixture file itself: its state dict sits under "state_dict"
    dst = tmp_path / name
    argv = [
        "convert-openai",
        str(src),
        str(dst),
        "--model-flags",
        fixture["model_flags"],
        *_library_args(fixture),
    ]
    assert msds(argv) == 0
    assert str(dst) in capsys.readouterr().out

    record = json.loads((dst / CONVERSION_RECORD).read_text())
    assert record["openai_config"] == fixture["config"]  # tensors + flags give the config it was built with
    assert record["library"] == fixture["library"]

    denoiser = DiffusionDenoiser.from_pretrained(dst)
    scheduler = denoiser.scheduler.config
    assert scheduler.num_train_timesteps == len(fixture["betas"])
    assert scheduler.prediction_type == PREDICTION[fixture["model_mean_type"]]
    assert scheduler.variance_type == VARIANCE[fixture["model_var_type"]]
    alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - fixture["betas"].numpy()))
    assert torch.allclose(float64_alphas_cumprod(denoiser.scheduler), alphas_cumprod, rtol=1e-13, atol=0)
    assert denoiser.rescale_timesteps == (not torch.equal(fixture["t_model"], fixture["t"]))

    x, t = fixture["x"], fixture["t"]
    with torch.no_grad():
        out = denoiser.unet(x, fixture["t_model"].float(), return_dict=False)[0]
        assert (out - fixture["out"]).abs().max().item() <= ATOL_FP32
        denoiser.double()
        out64 = denoiser.unet(x.double(), fixture["t_model"], return_dict=False)[0]
        assert (out64 - fixture["out_float64"]).abs().max().item() <= ATOL_FLOAT64
        # the denoiser feeds the UNet what the original diffusion fed it (t or t·1000/T) by itself
        model_output = denoiser.model_output(x.double(), t)
    assert (model_output - fixture["out_float64"][:, :3]).abs().max().item() <= ATOL_FLOAT64


def test_layouts_cover_what_they_claim():
    """The four layouts differ where conversions go wrong (guards against a fixture regenerated blandly)."""
    configs = {name: diffusers_config_from_openai(_fixture(name)["config"]) for name in LAYOUTS}
    assert configs["improved_heads_noss"]["resnet_time_scale_shift"] == "default"
    assert configs["improved_heads_noss"]["out_channels"] == 3
    assert configs["guided_head_channels"]["block_out_channels"] == [32, 64]  # 1 head at 32 ch, 2 at 64
    assert configs["guided_head_channels"]["down_block_types"] == ["AttnDownBlock2D"] * 2
    assert configs["guided_new_order"]["downsample_type"] == "resnet"
    assert _fixture("guided_new_order")["config"]["use_new_attention_order"] is True
    assert configs["improved_single_head"]["attention_head_dim"] is None  # one head of 32, one of 64
    assert all((FIXTURES / f"{name}.pt").stat().st_size < 1_000_000 for name in LAYOUTS)


def test_new_attention_order_matters():
    """Read with the legacy qkv order, the use_new_attention_order layout gives a clearly different output."""
    fixture = _fixture("guided_new_order")
    config = diffusers_config_from_openai(fixture["config"])
    from diffusers import UNet2DModel

    state_dict = {key: value.double() for key, value in fixture["state_dict"].items()}
    outputs = []
    for new_order in (True, False):
        unet = UNet2DModel(**config).double().eval()
        unet.load_state_dict(openai_to_diffusers(state_dict, config, new_attention_order=new_order))
        with torch.no_grad():
            outputs.append(unet(fixture["x"].double(), fixture["t_model"], return_dict=False)[0])
    assert (outputs[0] - fixture["out_float64"]).abs().max().item() <= ATOL_FLOAT64
    assert (outputs[1] - fixture["out_float64"]).abs().max().item() > 0.1


# ------------------------------------------------------------------------------------------------------
# Inference from names and shapes; the released networks through their README flags
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_is_read_off_the_tensors(name):
    fixture = _fixture(name)
    config = fixture["config"]
    layout = infer_layout(_shapes(fixture))
    assert layout.model_channels == config["model_channels"] and layout.in_channels == 3
    assert layout.out_channels == config["out_channels"]
    assert list(layout.channel_mult) == config["channel_mult"]
    assert layout.num_res_blocks == config["num_res_blocks"]
    assert [2**lvl for lvl, on in enumerate(layout.attention_levels) if on] == sorted(
        config["attention_resolutions"]
    )
    assert layout.resblock_updown == config.get("resblock_updown", False)
    assert layout.use_scale_shift_norm == config["use_scale_shift_norm"]
    assert layout.num_classes is None


@pytest.mark.parametrize(
    ("kind", "manifest", "flags"),
    [
        ("improved-cifar10", "improved_diffusion_cifar10_uncond_50M.json", IMPROVED_CIFAR10_FLAGS),
        ("guided-256", "guided_diffusion_256x256_uncond.json", GUIDED_256_FLAGS),
    ],
)
def test_readme_flags_of_the_released_networks_give_their_kind(shared_fixtures, kind, manifest, flags):
    """The flags of the libraries' READMEs + the released layouts = exactly what --kind hard-codes."""
    spec = KINDS[kind]
    setup = resolve_setup(parse_model_flags(flags), infer_layout(_manifest_shapes(shared_fixtures, manifest)))
    assert setup.library == ("improved-diffusion" if kind == "improved-cifar10" else "guided-diffusion")
    assert setup.openai_config == dict(spec.openai_config)
    assert setup.scheduler == dict(spec.scheduler)
    assert setup.rescale_timesteps == spec.rescale_timesteps
    assert diffusers_config_from_openai(setup.openai_config) | {"sample_size": 0} == dict(spec.unet) | {
        "sample_size": 0
    }


@pytest.mark.slow  # 52M parameters written and read back; test_readme_flags_... checks the same configs
def test_released_layout_via_model_flags_cli(shared_fixtures, tmp_path):
    """The CIFAR-10 layout through --model-flags: same folder settings as --kind improved-cifar10."""
    src = tmp_path / "cifar10_uncond_50M_500K.pt"
    _constant_checkpoint(_manifest_shapes(shared_fixtures, "improved_diffusion_cifar10_uncond_50M.json"), src)
    assert (
        msds(["convert-openai", str(src), str(tmp_path / "out"), "--model-flags", IMPROVED_CIFAR10_FLAGS])
        == 0
    )
    denoiser = DiffusionDenoiser.from_pretrained(tmp_path / "out")
    assert denoiser.rescale_timesteps is True and denoiser.pad_to is None
    assert denoiser.timestep_for_sigma(0.25) == 1158  # as with --kind improved-cifar10
    assert denoiser.unet.config.attention_head_dim == 64


# ------------------------------------------------------------------------------------------------------
# Flags that contradict the checkpoint
# ------------------------------------------------------------------------------------------------------

_BASE = (
    "--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 16,8 "
)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--num_channels 64", "--num_channels 64 contradicts CKPT, which has model_channels 32"),
        ("--num_res_blocks 2", "--num_res_blocks 2 contradicts CKPT, which has num_res_blocks 1"),
        (
            "--learn_sigma False",
            "--learn_sigma False contradicts CKPT, which has 6 output channels for 3 inputs",
        ),
        (
            "--resblock_updown True",
            "--resblock_updown True contradicts CKPT, which has resblock_updown False",
        ),
        (
            "--use_scale_shift_norm False",
            "--use_scale_shift_norm False contradicts CKPT, which has use_scale_shift_norm True",
        ),
        ("--class_cond True", "--class_cond True contradicts CKPT, which has no label_emb"),
        ("--channel_mult 1,1", "--channel_mult 1,1 contradicts CKPT, which has channel_mult 1,2"),
        (
            "--attention_resolutions 8",
            "--attention_resolutions 8 (at --image_size 16: attention_resolutions 8) contradicts CKPT, which "
            "has attention at attention_resolutions 16,8",
        ),
    ],
)
def test_flags_that_contradict_the_checkpoint(flags, message):
    fixture = _fixture("guided_head_channels")
    full = _BASE + "--num_head_channels 32 --learn_sigma True " + flags  # the last of a repeated flag wins
    with pytest.raises(ValueError) as info:
        openai_setup_from_flags(fixture["state_dict"], full, source="CKPT")
    assert message in str(info.value)


def test_image_size_implies_channel_mult():
    fixture = _fixture("guided_head_channels")  # channel_mult 1,2
    expected = r"--image_size 64 \(in guided-diffusion: channel_mult 1,2,3,4\) contradicts CKPT, which has channel_mult 1,2"
    with pytest.raises(ValueError, match=expected):
        openai_setup_from_flags(
            fixture["state_dict"], "--image_size 64 --num_head_channels 32", source="CKPT"
        )


def test_missing_flags_are_read_off_the_tensors(tmp_path):
    """Only the flags the tensors cannot show: heads and diffusion; the rest is inferred."""
    fixture = _fixture("guided_head_channels")
    setup = openai_setup_from_flags(
        fixture["state_dict"], "--num_head_channels 32 --image_size 16 --noise_schedule cosine"
    )
    assert setup.openai_config == fixture["config"]
    assert setup.scheduler["variance_type"] == "learned_range"  # from the 6 output channels


# ------------------------------------------------------------------------------------------------------
# Layouts UNet2DModel cannot express: refused up front, in one sentence
# ------------------------------------------------------------------------------------------------------


def test_improved_imagenet64_head_widths_are_refused(tmp_path, capsys):
    """improved-diffusion's ImageNet-64 model: 4 heads at 384 and 512 channels (96 vs 128 wide)."""
    flags = "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000"
    config = {
        "in_channels": 3, "model_channels": 128, "out_channels": 6, "num_res_blocks": 3,
        "attention_resolutions": [4, 8], "channel_mult": [1, 2, 3, 4], "num_heads": 4,
        "use_scale_shift_norm": True,
    }  # fmt: skip
    src = tmp_path / "imagenet64_uncond_100M_1500K.pt"
    _layout_checkpoint(config, src)
    argv = [
        "convert-openai",
        str(src),
        str(tmp_path / "out"),
        "--model-flags",
        flags,
        "--library",
        "improved-diffusion",
    ]
    assert msds(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "msds convert-openai: error: OpenAI UNet config: UNet2DModel cannot express this UNet, because its "
        "attention heads differ in width between layers: 96 wide at level 2 (384 channels / 4 heads); 128 wide "
        "at level 3 (512 channels / 4 heads) and the middle block (512 channels / 4 heads); diffusers' "
        "UNet2DModel has a single attention_head_dim (one head width for every attention layer, or one head "
        "per layer)."
    )
    assert not (tmp_path / "out").exists()
    # the same network with one head per layer is expressible (attention_head_dim None)
    setup = openai_setup_from_flags(torch.load(src, weights_only=True), flags + " --num_heads 1",
                                    library="improved-diffusion")  # fmt: skip
    assert diffusers_config_from_openai(setup.openai_config)["attention_head_dim"] is None


def test_num_heads_upsample_other_than_num_heads_is_refused():
    fixture = _fixture("improved_heads_noss")  # 2 heads of 16 at 32 channels
    with pytest.raises(ValueError) as info:
        openai_setup_from_flags(fixture["state_dict"], fixture["model_flags"] + " --num_heads_upsample 1",
                                library="improved-diffusion")  # fmt: skip
    message = str(info.value)
    assert "num_heads_upsample 1 differs from num_heads 2" in message
    assert (
        "16 wide at level 1 (down) (32 channels / 2 heads)" in message
        and "32 wide at level 1 (up)" in message
    )


def test_class_conditional_checkpoint_is_refused(tmp_path, capsys):
    fixture = _fixture("guided_head_channels")
    src = tmp_path / "128x128_diffusion.pt"
    torch.save({**fixture["state_dict"], "label_emb.weight": torch.zeros(1000, 128)}, src)
    flags = fixture["model_flags"] + " --class_cond True"
    assert msds(["convert-openai", str(src), str(tmp_path / "out"), "--model-flags", flags]) == 2
    assert "class-conditional models (num_classes=1000) are not supported" in capsys.readouterr().err
    # without --class_cond the label embedding in the file contradicts the (default) flag only if given
    with pytest.raises(ValueError, match="--class_cond False contradicts .*which has a label_emb"):
        openai_setup_from_flags(
            torch.load(src, weights_only=True), fixture["model_flags"] + " --class_cond False"
        )


def test_channel_mult_first_other_than_one_is_refused():
    """guided-diffusion 512 px: its first level is 0.5·model_channels wide."""
    layout = Layout(
        3, 256, 6, (128, 256, 256, 512, 512, 1024, 1024), 2, (False,) * 4 + (True,) * 3, True, True, None
    )
    setup = resolve_setup(
        parse_model_flags("--image_size 512 --num_channels 256 --num_head_channels 64"), layout
    )
    assert setup.openai_config["channel_mult"] == [0.5, 1, 1, 2, 2, 4, 4]  # the library's for 512 px
    with pytest.raises(ValueError, match=r"channel_mult\[0\] must be 1 to convert, got 0.5"):
        diffusers_config_from_openai(setup.openai_config)


# ------------------------------------------------------------------------------------------------------
# Parsing the flags
# ------------------------------------------------------------------------------------------------------


def test_flag_parsing():
    flags = parse_model_flags("--num_channels=64 --learn_sigma yes --dropout 0.1 --num_heads_upsample -1 "
                              "--attention_resolutions '32,16' --use_fp16 F")  # fmt: skip
    assert dict(flags.given) == {"num_channels": 64, "learn_sigma": True, "dropout": 0.1,
                                 "num_heads_upsample": -1, "attention_resolutions": "32,16", "use_fp16": False}  # fmt: skip
    assert flags.library == "guided-diffusion"  # --use_fp16 is guided-diffusion's
    assert parse_model_flags(["--sigma_small", "True"]).library == "improved-diffusion"
    assert parse_model_flags("--num_channels 64").library is None
    assert parse_model_flags("").given == {}

    with pytest.raises(
        ValueError, match="--lr, --batch_size are not flags of .*model_and_diffusion_defaults"
    ):
        parse_model_flags("--num_channels 64 --lr 1e-4 --batch_size 128")
    with pytest.raises(ValueError, match="--num_head_channels is not a flag of improved-diffusion's"):
        parse_model_flags("--num_head_channels 64", library="improved-diffusion")
    with pytest.raises(ValueError, match="--learn_sigma 'maybe': boolean value expected"):
        parse_model_flags("--learn_sigma maybe")
    with pytest.raises(ValueError, match="--num_channels '12.5': invalid literal"):
        parse_model_flags("--num_channels 12.5")
    with pytest.raises(ValueError, match="--num_res_blocks has no value"):
        parse_model_flags("--num_res_blocks")
    with pytest.raises(ValueError, match="expected --name value pairs, got '3'"):
        parse_model_flags("--num_res_blocks 2 3")
    with pytest.raises(
        ValueError, match="mix improved-diffusion's --sigma_small with guided-diffusion's --use_fp16"
    ):
        parse_model_flags("--sigma_small True --use_fp16 True")
    with pytest.raises(ValueError, match="--noise_schedule must be linear or cosine, got 'sqrt'"):
        scheduler_config(parse_model_flags("--noise_schedule sqrt"))


def test_library_is_asked_for_only_when_it_matters():
    fixture = _fixture("improved_heads_noss")
    with pytest.raises(ValueError, match="pass --library improved-diffusion or --library guided-diffusion"):
        openai_setup_from_flags(fixture["state_dict"], fixture["model_flags"])
    # an explicit --rescale_timesteps settles what the library's default would
    setup = openai_setup_from_flags(
        fixture["state_dict"], fixture["model_flags"] + " --rescale_timesteps True"
    )
    assert setup.rescale_timesteps is True
    assert openai_to_diffusers(fixture["state_dict"], diffusers_config_from_openai(setup.openai_config))
    # ResBlock resampling is guided-diffusion's: improved-diffusion cannot have made it
    with pytest.raises(ValueError, match="resamples with ResBlocks .* the flags say improved-diffusion"):
        openai_setup_from_flags(_fixture("guided_new_order")["state_dict"], "", library="improved-diffusion")


def test_not_a_unet_or_an_incomplete_one(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="CKPT is not an OpenAI improved-/guided-diffusion UNet state "
                       "dict: time_embed.0.weight is missing"):  # fmt: skip
        openai_setup_from_flags(
            {"fc.weight": torch.zeros(10, 512)}, "", library="guided-diffusion", source="CKPT"
        )
    fixture = _fixture("guided_head_channels")
    src = tmp_path / "broken.pt"
    torch.save({k: v for k, v in fixture["state_dict"].items() if k != "output_blocks.1.1.qkv.bias"}, src)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_openai_checkpoint(src, tmp_path / "out", model_flags=fixture["model_flags"])
    assert str(info.value).startswith(f"{src} does not fit the UNet read off its tensors and model flags")
    assert "missing OpenAI keys (1): output_blocks.1.1.qkv.bias" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_takes_kind_or_model_flags(tmp_path, capsys):
    src, dst = str(tmp_path / "x.pt"), str(tmp_path / "out")
    for argv in (
        [src, dst],
        [src, dst, "--kind", "guided-256", "--model-flags", "--num_channels 128"],
        [src, dst, "--kind", "guided-256", "--library", "guided-diffusion"],
        [src, dst, "--model-flags", "", "--library", "stable-diffusion"],
    ):
        with pytest.raises(SystemExit):
            msds(["convert-openai", *argv])
    with pytest.raises(ValueError, match="give either kind"):
        convert_openai_checkpoint(src, dst)
