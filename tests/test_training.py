"""Training: the real configs run fast_dev_run with tiny models; losses fall when overfitting; the
classifier stays frozen; LoRA trains adapters only; exports load in `msds certify`; resume continues."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from msds_lightning.cli import main
from msds_lightning.models import DiffusionDenoiser
from msds_lightning.modules import ClassifierModule, DenoiserFinetuneModule, DenoiserPretrainModule
from msds_lightning.results import read_results

from .conftest import REPO
from .tiny_models import tiny_classifier, tiny_denoiser, tiny_unet_config

CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
       "--trainer.enable_progress_bar=false"]  # fmt: skip
TINY_CLASSIFIER = [
    "--model.classifier.init_args.model_name=test_vit",
    "--model.classifier.init_args.input_size=null",
    "--model.classifier.init_args.model_kwargs={img_size: 32}",
]


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


def data_args(assets: Path, batch_size: int = 4) -> list[str]:
    return [f"--data.init_args.root={assets / 'cifar10'}", f"--data.init_args.batch_size={batch_size}",
            "--data.init_args.num_workers=0"]  # fmt: skip


def finetune_args(assets: Path, tmp_path: Path) -> list[str]:
    return [
        "-c", str(REPO / "configs/cifar10/finetune_msds.yaml"),
        f"--model.denoiser.init_args.path={assets / 'denoiser'}",
        f"--model.classifier.init_args.checkpoint={assets / 'classifier.safetensors'}", *TINY_CLASSIFIER,
        "--model.num_noise_samples=2", f"--model.export_dir={tmp_path / 'exported'}",
        *data_args(assets), *CPU,
    ]  # fmt: skip


def test_pretrain_config_fast_dev_run_and_export(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "-c", str(REPO / "configs/cifar10/pretrain_denoiser.yaml"),
        f"--model.denoiser.init_args.unet={json.dumps(tiny_unet_config())}",
        f"--model.export_dir={tmp_path / 'den'}", "--trainer.fast_dev_run=true", *data_args(assets), *CPU,
    ]  # fmt: skip
    assert main(["pretrain-denoiser", *args]) == 0
    loaded = DiffusionDenoiser.from_pretrained(tmp_path / "den")
    assert loaded.num_train_timesteps == 4000 and tuple(loaded.unet.config.block_out_channels) == (8, 16)


def test_train_classifier_config_fast_dev_run_and_export(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "-c", str(REPO / "configs/cifar10/train_classifier.yaml"), *TINY_CLASSIFIER,
        "--model.classifier.init_args.checkpoint=null", "--model.classifier.init_args.checkpoint_num_classes=null",
        "--model.noise_sigma=0.25", f"--model.export_path={tmp_path / 'clf.safetensors'}",
        "--trainer.fast_dev_run=true", *data_args(assets), *CPU,
    ]  # fmt: skip
    assert main(["train-classifier", *args]) == 0
    assert (tmp_path / "clf.safetensors").stat().st_size > 10_000


def test_finetune_config_fast_dev_run_then_certify_loads_export(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *finetune_args(assets, tmp_path), "--trainer.fast_dev_run=true"]) == 0
    exported = tmp_path / "exported"
    assert (exported / "unet").is_dir() and (exported / "denoiser_config.json").is_file()
    card = (exported / "README.md").read_text()  # the model card: where it started, σ set, objective, weights
    assert f"| base model | {assets / 'denoiser'} |" in card
    assert "| σ set ([0, 1] pixel units) | 0.25, 0.5, 1 |" in card and "| λ_dm | 1.0 |" in card
    assert "| objective | r·Brier + λ_ac·(1 − r)·AntiConsistency + λ_dm·ε-MSE |" in card
    certify = [
        "-c", str(REPO / "configs/cifar10/certify_msds.yaml"), f"--model.denoiser.init_args.path={exported}",
        f"--model.classifier.init_args.checkpoint={assets / 'classifier.safetensors'}", *TINY_CLASSIFIER,
        "--model.n0=8", "--model.n=32", "--model.batch_size=32", "--data.init_args.max=3",
        f"--results.output={tmp_path / 'cert.tsv'}", *data_args(assets), *CPU,
    ]  # fmt: skip
    assert main(["certify", *certify]) == 0
    assert read_results(tmp_path / "cert.tsv").idx.tolist() == [0, 1, 2]


def test_finetune_resume_continues_step_count(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [
        *finetune_args(assets, tmp_path),
        "--trainer.val_check_interval=null",
        "--trainer.limit_val_batches=0",
    ]
    assert main(["finetune", *common, "--trainer.max_steps=2"]) == 0
    last = tmp_path / "outputs/cifar10/finetune_msds/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=True, map_location="cpu")
    assert first["global_step"] == 2
    hparams = first["hyper_parameters"]  # plain data: the module's arguments, not its networks or callables
    assert hparams["num_noise_samples"] == 2 and hparams["export_dir"] == str(tmp_path / "exported")
    assert not {"denoiser", "classifier", "optimizer", "lr_scheduler"} & set(hparams)
    assert main(["finetune", *common, "--trainer.max_steps=4", "--ckpt_path=last"]) == 0
    second = torch.load(last, weights_only=True, map_location="cpu")
    assert second["global_step"] == 4
    # the optimizer state was restored, not restarted: AdamW has taken 4 steps, not 2
    steps = {float(state["step"]) for state in second["optimizer_states"][0]["state"].values()}
    assert steps == {4.0}
    # and the EMA callback's averaged model continued too (state saved in the checkpoint)
    assert any("EMAWeightAveraging" in key for key in second["callbacks"])


# ---------------------------------------------------------------------------------------------------


def loader(n=8, seed=0, batch_size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y, torch.arange(n)), batch_size=batch_size)


def fit(module, steps, data):
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, data)
    return module


def test_modules_save_their_plain_arguments(tmp_path):
    from msds_lightning.modules import AdversarialTrainingModule

    modules = [DenoiserPretrainModule(tiny_denoiser(), val_sigmas=[0.25]), ClassifierModule(tiny_classifier(), 10),
               AdversarialTrainingModule(tiny_classifier(), beta=3.0), finetune_module(lambda_ac=0.5)]  # fmt: skip
    for module in modules:
        hparams = dict(module.hparams)
        assert hparams and not {"denoiser", "classifier", "optimizer", "lr_scheduler"} & set(hparams)
        torch.save(hparams, tmp_path / "h.pt")
        assert torch.load(tmp_path / "h.pt", weights_only=True) == hparams
    assert modules[0].hparams["val_sigmas"] == [0.25] and modules[1].hparams["num_classes"] == 10
    assert modules[2].hparams["beta"] == 3.0 and modules[3].hparams["lambda_ac"] == 0.5


def test_pretrain_loss_decreases_when_overfitting():
    module = DenoiserPretrainModule(tiny_denoiser(), optimizer=partial(torch.optim.AdamW, lr=5e-3, weight_decay=0.0))
    data = loader()
    x = next(iter(data))[0]
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 1000, (8,), generator=g), torch.randn(x.shape, generator=g)
    before = module.denoiser.diffusion_loss(x, t, noise).mean().item()
    fit(module, 25, data)
    after = module.denoiser.diffusion_loss(x, t, noise).mean().item()
    assert after < 0.7 * before


def test_classifier_loss_decreases_when_overfitting():
    module = ClassifierModule(tiny_classifier(), 10, optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0))
    data = loader(n=16, batch_size=16)
    x, y, _ = next(iter(data))
    before = torch.nn.functional.cross_entropy(module.classifier.eval()(x), y).item()
    fit(module, 40, data)
    after = torch.nn.functional.cross_entropy(module.classifier.eval()(x), y).item()
    assert after < 0.5 * before


def adamw(lr):
    return partial(torch.optim.AdamW, lr=lr, weight_decay=0.0)


def finetune_module(**kwargs):
    kwargs.setdefault("num_noise_samples", 2)
    return DenoiserFinetuneModule(
        tiny_denoiser(schedule="cosine", num_train_timesteps=4000), tiny_classifier(seed=1), 10, **kwargs
    )


def objective_at_fixed_noise(module, x, y):
    module.eval()
    with torch.no_grad():
        return module.objective(x, y, torch.Generator().manual_seed(0))["loss"].mean().item()


def test_finetune_loss_decreases_classifier_frozen_unet_trained():
    module = finetune_module(optimizer=adamw(3e-3))
    data = loader()
    x, y, _ = next(iter(data))
    classifier_before = {k: v.clone() for k, v in module.classifier.state_dict().items()}
    unet_before = {k: v.clone() for k, v in module.denoiser.unet.state_dict().items()}
    before = objective_at_fixed_noise(module, x, y)
    fit(module, 12, data)
    assert objective_at_fixed_noise(module, x, y) < before
    for k, v in module.classifier.state_dict().items():
        assert torch.equal(v, classifier_before[k]), f"classifier parameter {k} changed"
    assert all(p.grad is None and not p.requires_grad for p in module.classifier.parameters())
    assert any(not torch.equal(v, unet_before[k]) for k, v in module.denoiser.unet.state_dict().items())


def test_gradients_reach_the_unet_through_the_denoise_step():
    module = finetune_module()
    module.train()
    x, y, _ = next(iter(loader()))
    module.objective(x, y)["loss"].mean().backward()
    grads = [p.grad for p in module.denoiser.unet.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert not module.classifier.training  # stays in eval mode inside a training module


class _ScriptedClassifier(torch.nn.Module):
    """Returns, at its k-th call, one-hot logits of ``votes[k]`` (a [B, M] table of classes per copy)."""

    def __init__(self, votes):
        super().__init__()
        self.votes, self.calls = votes, 0

    def forward(self, x):
        classes = torch.tensor(self.votes[self.calls]).flatten()
        self.calls += 1
        return torch.nn.functional.one_hot(classes, 10).float()


def test_cascade_recoverability_is_the_default_and_answers_strictly_above_p0():
    module = finetune_module(num_noise_samples=4)
    assert module.recoverable == "cascade" and module.sigmas == [1.0, 0.5, 0.25]
    x = torch.rand(3, 3, 32, 32)
    # levels visited highest σ first; image 0: a 2-2 tie at σ 1 (no answer: not > p0·M), then 3 of 4
    # at σ 0.5 answer 7; image 1: 3 of 4 at σ 1 answer 1 there (later levels ignored); image 2: no
    # level above half: -1
    module.classifier = _ScriptedClassifier([
        [[3, 3, 5, 5], [1, 1, 1, 0], [2, 3, 4, 5]],  # σ = 1.0
        [[7, 7, 7, 2], [9, 9, 9, 9], [2, 2, 4, 5]],  # σ = 0.5
        [[8, 8, 8, 8], [9, 9, 9, 9], [6, 6, 4, 4]],  # σ = 0.25
    ])  # fmt: skip
    assert module.cascade_prediction(x).tolist() == [7, 1, -1]
    assert module.classifier.calls == 3
    module = finetune_module(recoverable="majority", anti_consistency="full")
    xb, yb, _ = next(iter(loader()))
    parts = module.objective(xb, yb, torch.Generator().manual_seed(0))
    assert set(parts["recoverable"].tolist()) <= {0.0, 1.0}


def test_lora_trains_only_adapters_and_exports_merged(tmp_path):
    module = finetune_module(optimizer=adamw(1e-2), lora={"r": 4}, export_dir=str(tmp_path / "exported"))
    base_before = {k: v.clone() for k, v in module.denoiser.unet.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in module.denoiser.unet.state_dict().items() if "lora_" in k}
    assert lora_before and all(
        ("lora_" in n) == p.requires_grad for n, p in module.denoiser.unet.named_parameters()
    )
    fit(module, 3, loader(n=4, batch_size=4))
    state = module.denoiser.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base_before.items())
    assert any(not torch.equal(state[k], v) for k, v in lora_before.items())
    # the export is a plain UNet2DModel with the adapters merged: same outputs as the adapted module
    loaded = DiffusionDenoiser.from_pretrained(tmp_path / "exported").eval()
    assert not any("lora" in k for k in loaded.unet.state_dict())
    z = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(loaded(z, 0.5), module.denoiser.eval()(z, 0.5), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,word",
    [({"recoverable": "oracle"}, "recoverable"), ({"anti_consistency": "x"}, "anti_consistency"),
     ({"lambda_ac": -1.0}, "lambda"), ({"sigmas": [0.5, -1.0]}, "sigmas"), ({"num_noise_samples": 0}, "num_noise")],
)  # fmt: skip
def test_finetune_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        finetune_module(**kwargs)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])  # digits: same files, checked in test_demo
def test_finetuning_and_certification_share_one_classifier(dataset, monkeypatch):
    """The MSDS denoiser is calibrated against the classifier it is certified with: fine-tuning and
    certification configs resolve to the same classifier (model, weights file, preprocessing), read from
    the one shared `configs/<dataset>/classifier.yaml`."""
    import yaml
    from lightning.pytorch.cli import LightningCLI

    from msds_lightning.cli.certify import certify_arguments
    from msds_lightning.cli.lightning import lightning_cli
    from msds_lightning.modules import CertifyModule, DenoiserFinetuneModule

    monkeypatch.setattr(LightningCLI, "instantiate_classes", lambda self: None)  # parse only: no weights here
    folder = REPO / "configs" / dataset

    def classifier(module, config, **kwargs):
        cli = lightning_cli(module, ["-c", str(folder / config)], "msds", **kwargs)
        return cli.config["model"]["classifier"].as_dict()

    tuned = classifier(DenoiserFinetuneModule, "finetune_msds.yaml")
    certified = classifier(CertifyModule, "certify_msds.yaml", add_arguments=certify_arguments,
                           save_config_callback=None)  # fmt: skip
    assert tuned == certified
    shared = yaml.safe_load((folder / "classifier.yaml").read_text())
    assert tuned["class_path"] == shared["class_path"]
    assert {k: tuned["init_args"][k] for k in shared["init_args"]} == shared["init_args"]
    for config in ("finetune_msds.yaml", "certify_msds.yaml"):  # by reference, not by a copy that can drift
        assert "classifier: classifier.yaml" in (folder / config).read_text()


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_sigma_variants_are_certify_dds_with_two_keys_changed(dataset, monkeypatch):
    """`certify_dds_sigma0.50.yaml` includes `certify_dds.yaml` and overrides sigma and the output: one `-c`
    that resolves to the base config with exactly those two values changed; shared denoisers are named."""
    from lightning.pytorch.cli import LightningCLI

    from msds_lightning.cli.certify import certify_arguments
    from msds_lightning.cli.lightning import lightning_cli
    from msds_lightning.modules import CertifyModule

    monkeypatch.setattr(LightningCLI, "instantiate_classes", lambda self: None)  # parse only: no weights here
    folder = REPO / "configs" / dataset

    def config(name):
        cli = lightning_cli(CertifyModule, ["-c", str(folder / name)], "msds", add_arguments=certify_arguments,
                             save_config_callback=None)  # fmt: skip
        out = cli.config.clone()
        out.pop("config", None)
        return out.as_dict()

    base = config("certify_dds.yaml")
    assert base["model"]["denoiser"]["class_path"] == "msds_lightning.models.DiffusionDenoiser.from_pretrained"
    assert "../components/denoisers/" in (folder / "certify_dds.yaml").read_text()
    for sigma, suffix in [(0.5, "0.50"), (1.0, "1.00")]:
        variant = config(f"certify_dds_sigma{suffix}.yaml")
        assert variant["model"].pop("sigma") == sigma and base["model"]["sigma"] == 0.25
        assert variant["results"].pop("output") == f"outputs/{dataset}/dds_sigma{suffix}.tsv"
        assert variant == {**base, "model": {k: v for k, v in base["model"].items() if k != "sigma"},
                           "results": {k: v for k, v in base["results"].items() if k != "output"}}  # fmt: skip
