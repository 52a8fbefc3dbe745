"""Hugging Face Hub ids: the real huggingface_hub / timm resolution code runs against an offline Hub cache
that the tests build in a temporary folder (``models--org--name/snapshots/<commit>/...``, ``refs/<name>``),
with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1``: no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from timm.models import save_for_hf

from msds_lightning.cli import main
from msds_lightning.models import Classifier, DiffusionDenoiser
from msds_lightning.modules.denoiser_pretrain import export_denoiser

from .test_certify_cli import overrides, rows_without_time
from .tiny_models import tiny_classifier, tiny_denoiser


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty offline Hub cache. huggingface_hub reads the two variables when it is imported, so its
    module constants are set as well (what a fresh process would have read from the environment)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, repo_id: str, files: Path, commit: str = "a" * 40, ref: str = "main") -> Path:
    """Put the contents of ``files`` into ``cache`` as huggingface_hub stores a downloaded repo."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def noisy(size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=g) + 0.25 * torch.randn(2, 3, size, size, generator=g)


def ddpm_repo(folder: Path, denoiser: DiffusionDenoiser) -> Path:
    """google/ddpm-cifar10-32's layout: UNet config and .bin weights at the root, scheduler_config.json,
    model_index.json of a DDPMPipeline, no denoiser_config.json."""
    folder.mkdir()
    denoiser.unet.save_config(folder)
    torch.save(denoiser.unet.state_dict(), folder / "diffusion_pytorch_model.bin")
    denoiser.scheduler.save_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return folder


def test_denoiser_from_hub_id_takes_the_repos_scheduler(tmp_path, hub_cache):
    reference = tiny_denoiser("cosine", num_train_timesteps=4000, seed=5)
    cache_repo(hub_cache, "google/ddpm-tiny-32", ddpm_repo(tmp_path / "repo", reference))
    loaded = DiffusionDenoiser.from_pretrained("google/ddpm-tiny-32").eval()
    assert loaded.num_train_timesteps == 4000 and loaded.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert (loaded.rescale_timesteps, loaded.pad_to) == (False, None)  # a diffusers DDPM repo's defaults
    assert loaded.source == "google/ddpm-tiny-32"
    with torch.no_grad():
        assert torch.equal(loaded(noisy(), 0.25), reference(noisy(), 0.25))


def test_denoiser_hub_revision_and_pipeline_layout(tmp_path, hub_cache):
    main_weights, tagged_weights = tiny_denoiser(seed=1), tiny_denoiser(seed=2, rescale_timesteps=True)
    main_weights.save_pretrained(tmp_path / "main")
    tagged_weights.save_pretrained(tmp_path / "v1")
    cache_repo(hub_cache, "org/denoiser", tmp_path / "main", commit="1" * 40)
    cache_repo(hub_cache, "org/denoiser", tmp_path / "v1", commit="2" * 40, ref="v1")
    latest = DiffusionDenoiser.from_pretrained("org/denoiser").eval()
    tagged = DiffusionDenoiser.from_pretrained("org/denoiser", revision="v1").eval()
    by_commit = DiffusionDenoiser.from_pretrained("org/denoiser", revision="2" * 40).eval()
    assert tagged.rescale_timesteps and not latest.rescale_timesteps and tagged.source == "org/denoiser@v1"
    with torch.no_grad():
        assert torch.equal(latest(noisy(), 0.5), main_weights(noisy(), 0.5))
        assert torch.equal(tagged(noisy(), 0.5), tagged_weights(noisy(), 0.5))
        assert torch.equal(by_commit(noisy(), 0.5), tagged(noisy(), 0.5))


def test_local_paths_win_and_bad_names_fail_clearly(tmp_path, hub_cache, monkeypatch):
    tiny_denoiser(seed=1).save_pretrained(tmp_path / "org" / "denoiser")
    cache_repo(hub_cache, "org/denoiser", tmp_path / "org" / "denoiser")
    monkeypatch.chdir(tmp_path)  # "org/denoiser" is now also a local folder: it wins
    assert DiffusionDenoiser.from_pretrained("org/denoiser").source == "org/denoiser"
    with pytest.raises(ValueError, match="revision='v1' is for Hub repo ids"):
        DiffusionDenoiser.from_pretrained("org/denoiser", revision="v1")
    with pytest.raises(
        FileNotFoundError, match="'org/missing' .* not in the Hugging Face cache .*HF_HUB_OFFLINE"
    ):
        DiffusionDenoiser.from_pretrained("org/missing")
    with pytest.raises(FileNotFoundError, match="Denoiser folder not found: .*a/b/c .*Hub repo id"):
        DiffusionDenoiser.from_pretrained("a/b/c")


def timm_repo(folder: Path, classifier: Classifier) -> Path:
    """timm's own Hub format (what ``timm.models.push_to_hf_hub`` uploads): config.json with the
    architecture, model_args and pretrained_cfg (mean/std), and model.safetensors."""
    save_for_hf(classifier.model, str(folder), model_args={"img_size": 32}, safe_serialization=True,
                model_config={"num_classes": 10})  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(mean=[0.5] * 3, std=[0.5] * 3, input_size=[3, 32, 32])
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_timm_hub_classifier_offline(tmp_path, hub_cache):
    reference = tiny_classifier(seed=3, mean=[0.5] * 3, std=[0.5] * 3)
    snapshot = cache_repo(hub_cache, "timm/test_vit.tiny", timm_repo(tmp_path / "repo", reference))
    assert (snapshot / "model.safetensors").is_file()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for name in ("timm/test_vit.tiny", "hf-hub:timm/test_vit.tiny"):
        classifier = Classifier(name, 10, pretrained=True).eval()
        assert classifier.mean.flatten().tolist() == [0.5] * 3  # from the repo's pretrained_cfg
        with torch.no_grad():
            torch.testing.assert_close(classifier(x), reference(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="neither a timm model name nor"):
        Classifier("timm/a/b", 10)


def test_certify_end_to_end_from_the_offline_hub(tiny_assets, tmp_path, hub_cache):
    """`msds certify` with a Hub-id denoiser and a timm Hub classifier gives the rows of the local files."""
    cache_repo(hub_cache, "msds/tiny-denoiser", tiny_assets / "denoiser")
    weights = Classifier("test_vit", 10, checkpoint=tiny_assets / "classifier.safetensors", mean=[0.5] * 3,
                         std=[0.5] * 3, model_kwargs={"img_size": 32})  # fmt: skip
    cache_repo(hub_cache, "timm/test_vit.tiny", timm_repo(tmp_path / "timm_repo", weights))

    few = ["--data.init_args.max=3", "--model.n=32"]
    local = tmp_path / "local.tsv"
    assert main(["certify", *overrides(tiny_assets, local), *few]) == 0
    hub = tmp_path / "hub.tsv"
    args = overrides(tiny_assets, hub) + few + [
        "--model.denoiser.init_args.path=msds/tiny-denoiser",
        "--model.classifier.init_args.model_name=timm/test_vit.tiny",
        "--model.classifier.init_args.pretrained=true",
        "--model.classifier.init_args.checkpoint=null",
    ]  # fmt: skip
    assert main(["certify", *args]) == 0
    assert rows_without_time(hub) == rows_without_time(local)
    assert len(rows_without_time(hub)) == 4


def test_model_card_and_push_to_hub(tmp_path, tiny_assets, monkeypatch):
    denoiser = tiny_denoiser("cosine", num_train_timesteps=4000, rescale_timesteps=True)
    denoiser.source = "google/ddpm-cifar10-32"
    training = {"method": "MSDS fine-tuning", "sigmas": [0.25, 0.5, 1.0], "objective": "r·Brier + ...",
                "weights": {"λ_ac": 1.0, "λ_dm": 0.5}}  # fmt: skip
    export_denoiser(denoiser, str(tmp_path / "export"), training)
    card = (tmp_path / "export" / "README.md").read_text()
    assert "base_model: google/ddpm-cifar10-32" in card and "library_name: diffusers" in card
    assert "| σ set ([0, 1] pixel units) | 0.25, 0.5, 1 |" in card and "| λ_dm | 0.5 |" in card
    loaded = DiffusionDenoiser.from_pretrained(tmp_path / "export")
    assert loaded.provenance == {"base_model": "google/ddpm-cifar10-32", "training": training}

    # a certification TSV adds its certified-accuracy table
    tsv = tmp_path / "cert.tsv"
    tsv.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.6\t1\t0.1\n1\t2\t-1\t0.0\t0\t0.1\n"
    )
    calls = []

    def create_repo(self, repo_id, private=None, exist_ok=False, **_):
        calls.append(("create", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **_):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        calls.append(("upload", repo_id, files, (Path(folder_path) / "README.md").read_text()))
        return "https://huggingface.co/me/denoiser/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    url = loaded.push_to_hub("me/denoiser", certification=tsv, private=True)
    assert url.endswith("/commit/0")
    assert calls[0] == ("create", "me/denoiser", True, True)
    _, repo_id, files, uploaded_card = calls[1]
    assert repo_id == "me/denoiser"
    assert files == ["README.md", "denoiser_config.json", "scheduler/scheduler_config.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors"]  # fmt: skip
    # radius 0.6 certified, one abstention: accuracy 0.5 up to r = 0.5, 0 from r = 0.75; ACR 0.6 / 2
    assert "## Certification" in uploaded_card
    assert (
        "| cert.tsv | 0.500 | 0.500 | 0.500 | 0.000 | 0.000 |" in uploaded_card
        and "| 0.3000 |" in uploaded_card
    )
    with pytest.raises(ValueError, match="repo_id"):
        loaded.push_to_hub("not a repo id")
