"""Adversarial training: TRADES loss values, Swish WRNs, the one-cycle schedule, and a short TRADES run."""

from __future__ import annotations

import math
from functools import partial

import pytest
import timm
import torch

from msds_lightning.losses import trades_kl, trades_loss
from msds_lightning.models import Classifier


def test_trades_loss_on_hand_made_logits():
    natural = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    adversarial = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1])
    p = [[math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2), 1 / (math.exp(2) + 2)],
         [1 / (math.e + 2), math.e / (math.e + 2), 1 / (math.e + 2)]]  # fmt: skip
    q = [[1 / 3] * 3, [1 / (2 * math.e + 1), math.e / (2 * math.e + 1), math.e / (2 * math.e + 1)]]
    kl = sum(pi * math.log(pi / qi) for row_p, row_q in zip(p, q) for pi, qi in zip(row_p, row_q)) / 2
    s = 0.1  # label smoothing: (1 - s)·NLL + s·mean_c(−log p_c)
    ce = (
        sum((1 - s) * -math.log(row[y]) + s * sum(-math.log(v) for v in row) / 3 for row, y in zip(p, (0, 1)))
        / 2
    )
    out = trades_loss(natural, adversarial, labels, beta=5.0, label_smoothing=s)
    assert out["robust"].item() == pytest.approx(kl, rel=1e-6)
    assert out["natural"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(ce + 5.0 * kl, rel=1e-6)
    assert trades_kl(natural, natural).item() == pytest.approx(0.0, abs=1e-7)


def test_swish_wrns_have_the_reference_sizes():
    sizes = {"wrn28_10_swish": 36_479_194, "wrn70_16_swish": 266_796_506}
    for name, count in sizes.items():
        with torch.device("meta"):
            model = timm.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == count
    small = timm.create_model("wrn16_4_swish", num_classes=100)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_onecycle_schedule_steps_per_epoch():
    from msds_lightning.modules.adversarial import AdversarialTrainingModule
    from msds_lightning.modules.optim import configure

    class Module:
        class trainer:  # noqa: N801
            max_epochs = 400

    layer = torch.nn.Linear(2, 2)
    defaults = AdversarialTrainingModule(layer)  # its default optimizer and schedule: SGD lr 0.2, one-cycle
    out = configure(Module, layer.parameters(), defaults.optimizer, defaults.lr_scheduler)
    scheduler, opt = out["lr_scheduler"]["scheduler"], out["optimizer"]
    assert out["lr_scheduler"]["interval"] == "epoch"
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(400):
        opt.step()
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.2 / 25)  # starts at lr / 25
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 9  # peak in the 10th epoch (2.5%)
    assert lrs[400] < 1e-5


def test_batchnorm_parameters_get_no_weight_decay():
    from msds_lightning.modules.adversarial import AdversarialTrainingModule

    classifier = Classifier("wrn16_4_swish", 10, mean=[0.5] * 3, std=[0.5] * 3)
    module = AdversarialTrainingModule(classifier, lr_scheduler=None)
    groups = module.configure_optimizers().param_groups
    bn = {id(p) for m in classifier.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == bn and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 5e-4 and not bn & {id(p) for p in groups[0]["params"]}


@pytest.mark.parametrize("method", ["trades", "pgd"])
def test_short_adversarial_run_on_digits(method, tmp_path):
    """Two epochs of TRADES / PGD-AT on digits: loss finite, BN stats updated only by the outer forwards,
    validation reports clean and PGD accuracy (PGD ≤ clean), weights exported."""
    from lightning.pytorch import Trainer

    from msds_lightning.data import DigitsDataModule
    from msds_lightning.modules.adversarial import AdversarialTrainingModule

    torch.manual_seed(0)
    classifier = Classifier(
        "msds_small_cnn", 10, mean=[0.5], std=[0.5], model_kwargs={"in_chans": 1, "width": 8}
    )
    export = tmp_path / "adv.safetensors"
    module = AdversarialTrainingModule(classifier, method=method, eps=0.1, attack_steps=3, attack_step_size=0.04,
                                       val_attack_steps=3, export_path=str(export),
                                       optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True))  # fmt: skip
    data = DigitsDataModule(image_size=8, channels=1, batch_size=128)
    trainer = Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, inference_mode=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert 0.0 <= float(metrics["val/pgd_acc"]) <= float(metrics["val/acc"]) <= 1.0
    assert export.is_file()


def test_validation_refuses_inference_mode():
    from msds_lightning.modules.adversarial import AdversarialTrainingModule

    module = AdversarialTrainingModule(Classifier("msds_small_cnn", 10, model_kwargs={"in_chans": 1}))
    batch = (torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        module.validation_step(batch, 0)
