"""Optimizers and schedules come from the config (LightningCLI callables) with the values the string-chosen
ones had: schedule values, module defaults, every training config's settings; old keys fail naming the new."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.modules import (
    AdversarialTrainingModule,
    ClassifierModule,
    DenoiserFinetuneModule,
    DenoiserPretrainModule,
)
from msds_lightning.modules.optim import EpochOneCycleLR, WarmupLR, configure

from .conftest import REPO
from .tiny_models import tiny_classifier, tiny_denoiser


def lrs_of(optimizer, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def warmup_cosine(lr, warmup, total, step):
    """The schedule as specified (and as the string-chosen "cosine" computed it)."""
    if step < warmup:
        return lr * ((step + 1) / warmup)
    rest = max(1, total - warmup)
    return lr * (0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / rest))))


@pytest.mark.parametrize("warmup, total", [(50, 800), (0, 40), (20, 300)])
def test_warmup_cosine_values_and_run_length_from_the_trainer(warmup, total):
    expected = [warmup_cosine(2e-3, warmup, total, s) for s in range(60)]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-3, weight_decay=0.0)
    assert lrs_of(opt, WarmupLR(opt, warmup, "cosine", total_steps=total), 60) == expected
    # total_steps unset: the run's optimizer steps, read from the trainer when the module configures
    module = SimpleNamespace(trainer=SimpleNamespace(estimated_stepping_batches=total, max_epochs=None))
    opt = torch.optim.AdamW([p], lr=2e-3, weight_decay=0.0)
    out = configure(module, [p], lambda params: opt, lambda o: WarmupLR(o, warmup, "cosine"))
    assert out["lr_scheduler"]["interval"] == "step"
    assert lrs_of(opt, out["lr_scheduler"]["scheduler"], 60) == expected


def test_warmup_constant_and_one_cycle_need_or_take_the_run_length():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    assert lrs_of(opt, WarmupLR(opt, 20), 30) == [0.1 * ((s + 1) / 20) for s in range(20)] + [0.1] * 10
    with pytest.raises(ValueError, match="run length"):
        WarmupLR(torch.optim.SGD([p], lr=0.1), 0, "cosine")  # outside configure, no total_steps
    with pytest.raises(ValueError, match="set trainer.max_epochs"):
        configure(SimpleNamespace(trainer=SimpleNamespace(max_epochs=None)), [p],
                  lambda ps: torch.optim.SGD(ps, lr=0.1), EpochOneCycleLR)  # fmt: skip


def groups(optimizer):
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, amsgrad=False, maximize=False, capturable=False, differentiable=False)
SGD = dict(dampening=0, maximize=False, differentiable=False)


def test_module_defaults_are_the_former_defaults():
    """Optimizer class, hyperparameters, parameter sets and schedule of every module's defaults."""
    module = ClassifierModule(tiny_classifier())
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=None)
    out = module.configure_optimizers()
    opt = out["optimizer"]
    assert type(opt) is torch.optim.SGD and out["lr_scheduler"]["interval"] == "step"
    g = groups(opt)[0]
    assert {k: g[k] for k in ("lr", "momentum", "weight_decay", "nesterov", *SGD)} == dict(
        lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, **SGD
    )
    assert [p for p in opt.param_groups[0]["params"]] == list(module.classifier.parameters())
    assert type(out["lr_scheduler"]["scheduler"]) is WarmupLR and out["lr_scheduler"]["scheduler"].decay == "cosine"

    for module, lr in [(DenoiserPretrainModule(tiny_denoiser()), 2e-4),
                       (DenoiserFinetuneModule(tiny_denoiser("cosine", 4000), tiny_classifier(seed=1), 10), 1e-5)]:  # fmt: skip
        out = module.configure_optimizers()  # constant: no run length needed
        opt = out["optimizer"]
        assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
        g = groups(opt)[0]
        assert {k: g[k] for k in ("lr", "weight_decay", *ADAMW)} == dict(lr=lr, weight_decay=0.0, **ADAMW)
        # only the denoiser's parameters: the frozen classifier of fine-tuning is not optimised
        assert opt.param_groups[0]["params"] == list(module.denoiser.parameters())
        assert out["lr_scheduler"]["interval"] == "step" and out["lr_scheduler"]["scheduler"].decay == "constant"
        assert lrs_of(opt, out["lr_scheduler"]["scheduler"], 5) == [lr] * 5

    module = AdversarialTrainingModule(tiny_classifier())
    module._trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=400)
    out = module.configure_optimizers()
    assert type(out["lr_scheduler"]["scheduler"]) is EpochOneCycleLR and out["lr_scheduler"]["interval"] == "epoch"
    g = groups(out["optimizer"])[0]
    assert (g["max_lr"], g["initial_lr"], g["nesterov"], g["weight_decay"]) == (0.2, 0.2 / 25, True, 5e-4)


# The settings every training config had as string-chosen keys (optimizer, lr, weight_decay, momentum,
# warmup_steps, schedule; IDC: lr, betas, weight_decay, lr_schedule, plateau_*, min_lr, step_*).
FORMER = {
    "digits/pretrain_denoiser": ("AdamW", dict(lr=2e-3, weight_decay=0.0), "WarmupLR", dict(warmup_steps=50, decay="cosine")),
    "digits/pretrain_generator": ("AdamW", dict(lr=2e-3, weight_decay=0.0), "WarmupLR", dict(warmup_steps=50, decay="cosine")),
    "digits/train_classifier": ("AdamW", dict(lr=3e-3, weight_decay=1e-4), "WarmupLR", dict(warmup_steps=0, decay="cosine")),
    "digits/train_classifier_noisy": ("AdamW", dict(lr=3e-3, weight_decay=1e-4), "WarmupLR", dict(warmup_steps=0, decay="cosine")),
    "digits/finetune_msds": ("AdamW", dict(lr=5e-4, weight_decay=0.0), "WarmupLR", dict(warmup_steps=20, decay="constant")),
    "digits/adversarial_real": ("SGD", dict(lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True), "EpochOneCycleLR", dict(pct_start=0.025)),
    "digits/adversarial_generated": ("SGD", dict(lr=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True), "EpochOneCycleLR", dict(pct_start=0.025)),
    "digits/train_idc": ("Adam", dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0), None, None),
    "cifar10/pretrain_denoiser": ("AdamW", dict(lr=1e-4, weight_decay=0.0), "WarmupLR", dict(warmup_steps=1000, decay="constant")),
    "cifar10/train_classifier": ("AdamW", dict(lr=1e-4, weight_decay=0.05), "WarmupLR", dict(warmup_steps=500, decay="cosine")),
    "cifar10/finetune_msds": ("AdamW", dict(lr=1e-5, weight_decay=0.0), "WarmupLR", dict(warmup_steps=200, decay="constant")),
    "cifar10/adversarial_trades": ("SGD", dict(lr=0.2, weight_decay=5e-4, momentum=0.9, nesterov=True), "EpochOneCycleLR", dict(pct_start=0.025)),
    "cifar100/adversarial_trades": ("SGD", dict(lr=0.2, weight_decay=5e-4, momentum=0.9, nesterov=True), "EpochOneCycleLR", dict(pct_start=0.025)),
    "cifar10/train_idc": ("Adam", dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0), "ReduceLROnPlateau",
                          dict(mode="min", factor=0.5, patience=3000, threshold=1e-4, threshold_mode="rel", cooldown=3000, min_lr=5e-7)),
    "cifar100/train_idc": ("Adam", dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0), "StepLR", dict(step_size=500, gamma=0.5)),
    "imagenet/finetune_msds": ("AdamW", dict(lr=1e-4, weight_decay=0.0), "WarmupLR", dict(warmup_steps=200, decay="constant")),
}  # fmt: skip
COMMANDS = {"pretrain": "DenoiserPretrainModule", "train_classifier": "ClassifierModule", "finetune": "DenoiserFinetuneModule",
            "adversarial": "AdversarialTrainingModule", "train_idc": "IDCModule"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORMER))
def test_configs_keep_their_former_optimizer_settings(name, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    import msds_lightning.modules as modules
    from msds_lightning.cli.lightning import lightning_cli

    monkeypatch.setattr(LightningCLI, "instantiate_classes", lambda self: None)  # parse only
    module_class = getattr(modules, next(v for k, v in COMMANDS.items() if name.split("/")[1].startswith(k)))
    config = lightning_cli(module_class, ["-c", str(REPO / "configs" / f"{name}.yaml")], "msds").config.model
    optimizer, opt_args, scheduler, sched_args = FORMER[name]
    assert config.optimizer.class_path.rsplit(".", 1)[1] == optimizer
    assert {k: config.optimizer.init_args[k] for k in opt_args} == opt_args
    if scheduler is None:
        assert config.lr_scheduler is None
    else:
        assert config.lr_scheduler.class_path.rsplit(".", 1)[1] == scheduler
        assert {k: config.lr_scheduler.init_args[k] for k in sched_args} == sched_args


@pytest.mark.parametrize(
    "command, config, arg, message",
    [("train-classifier", "digits/train_classifier", "--model.lr=0.1", "model.lr was replaced by model.optimizer.init_args.lr"),
     ("train-classifier", "digits/train_classifier", "--model.optimizer=adamw",
      "model.optimizer: adamw was replaced by model.optimizer: {class_path: torch.optim.AdamW"),
     ("train-classifier", "digits/train_classifier", "--model.schedule=cosine", "model.schedule was replaced by model.lr_scheduler"),
     ("train-idc", "digits/train_idc", "--model.lr_schedule=plateau",
      "model.lr_schedule was replaced by model.lr_scheduler (plateau: class_path torch.optim.lr_scheduler.ReduceLROnPlateau")],
)  # fmt: skip
def test_former_keys_fail_naming_the_new_key(command, config, arg, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["-c", str(REPO / "configs" / f"{config}.yaml"), arg, "--trainer.logger=false"]
    assert main([command, *args]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="model.warmup_steps was replaced by model.lr_scheduler.init_args.warmup_steps"):
        ClassifierModule(tiny_classifier(), warmup_steps=10)
