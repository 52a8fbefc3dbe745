"""IDC: label images, the Brownian bridge, the classifier, its training module and the copy-then-EMA callback."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import UNet2DModel

from msds_lightning.callbacks import CopyThenEMAWeightAveraging
from msds_lightning.losses import bridge_classification_term, bridge_objective_distances
from msds_lightning.models.idc import (
    IDC_UNETS,
    BrownianBridge,
    IDCClassifier,
    bbdm_steps,
    idc_unet_config,
    label_distances,
    orthogonal_label_images,
)
from msds_lightning.modules import IDCModule
from msds_lightning.robustness import pgd, predict_labels


def centred_cosines(labels: torch.Tensor) -> torch.Tensor:
    """|cos| between mean-centred label images, off the diagonal ([K, K], diagonal 0)."""
    flat = labels.flatten(1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    return (flat @ flat.T - torch.eye(len(flat), dtype=torch.float64)).abs()


def tiny_unet(channels: int = 1, size: int = 8) -> dict:
    return idc_unet_config("idc_digits", in_channels=channels, out_channels=channels, sample_size=size,
                           block_out_channels=(16, 32), attention_head_dim=8)  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Label images
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes, bound", [(10, 0.005), (100, 0.005)])
def test_label_images_are_pairwise_near_orthogonal(num_classes, bound):
    # Bound: after min-max scaling, centred cosines are -D·mean_i·mean_j / (norms), of order 1/D; for
    # CIFAR's D = 3072 the largest is 0.0016 (K = 10) and 0.0025 (K = 100): we assert < 0.005.
    labels = orthogonal_label_images(num_classes, (3, 32, 32), seed=0)
    assert labels.shape == (num_classes, 3, 32, 32) and labels.dtype == torch.float32
    flat = labels.flatten(1)
    assert torch.equal(flat.amin(1), torch.zeros(num_classes)) and torch.allclose(
        flat.amax(1), torch.ones(num_classes)
    )
    cosines = centred_cosines(labels)
    assert float(cosines.max()) < bound
    # and far apart: the smallest pairwise mean absolute difference is about 0.14 (mean 0.16)
    d = label_distances(labels, labels) + torch.eye(num_classes) * 10
    assert float(d.min()) > 0.13


def test_label_images_reproduce_the_reference_construction():
    # The official construction (seed 0, QR of A^T, per-image min-max) measured on CIFAR-10 K = 10:
    # largest centred cosine 0.0016, pairwise mean-L1 distance min 0.148 and mean 0.162.
    labels = orthogonal_label_images(10, (3, 32, 32), seed=0)
    d = label_distances(labels, labels)
    off = d[~torch.eye(10, dtype=torch.bool)]
    assert float(off.min()) == pytest.approx(0.148, abs=1e-3)
    assert float(off.mean()) == pytest.approx(0.162, abs=1e-3)
    assert float(centred_cosines(labels).max()) == pytest.approx(0.0016, abs=1e-4)


def test_label_images_are_stable_for_a_seed():
    a = orthogonal_label_images(10, (3, 32, 32), seed=0)
    assert torch.equal(a, orthogonal_label_images(10, (3, 32, 32), seed=0))
    assert not torch.allclose(a, orthogonal_label_images(10, (3, 32, 32), seed=1))
    # golden values: a change of generator, QR or scaling changes every stored model's classes
    assert a.flatten()[:4].tolist() == pytest.approx(
        [0.36214933, 0.35891327, 0.46895063, 0.44658393], abs=1e-6
    )
    assert float(a[3, 2, 31, 31]) == pytest.approx(0.42477784, abs=1e-6)
    small = orthogonal_label_images(10, (1, 8, 8), seed=0)
    assert small.flatten()[:3].tolist() == pytest.approx([0.17904982, 0.17425038, 0.33744743], abs=1e-6)


def test_label_images_reject_impossible_requests():
    with pytest.raises(ValueError, match="at most"):
        orthogonal_label_images(65, (1, 8, 8))
    with pytest.raises(ValueError, match="num_classes"):
        orthogonal_label_images(1, (1, 8, 8))


# ------------------------------------------------------------------------------------------------------
# Brownian bridge
# ------------------------------------------------------------------------------------------------------


def test_bridge_schedule_is_the_papers():
    bridge = BrownianBridge()
    assert bridge.m.tolist() == pytest.approx([0.001, 0.33366667, 0.66633333, 0.999], abs=1e-6)
    assert bridge.variance.tolist() == pytest.approx([0.001998, 0.44466645, 0.44466645, 0.001998], abs=1e-6)
    assert bbdm_steps(4, 4) == [3, 1, 1, 0]  # 4 network evaluations
    assert bbdm_steps(4, 3) == [3, 1, 0]
    assert bbdm_steps(1000, 200)[:2] == [999, 993] and bbdm_steps(1000, 200)[-2:] == [1, 0]
    with pytest.raises(ValueError, match="sample_steps"):
        bbdm_steps(4, 2)


def _moments(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return samples.mean(dim=0), samples.var(dim=0)


@pytest.mark.parametrize("t", [0, 1, 2, 3])
def test_bridge_forward_marginals_match_the_schedule(t):
    torch.manual_seed(0)
    bridge, n = BrownianBridge(), 40_000
    x0, y = torch.rand(1, 6) * 2 - 1, torch.rand(1, 6) * 2 - 1
    noise = torch.randn(n, 6)
    x_t, objective = bridge.marginal(x0.expand(n, 6), y.expand(n, 6), torch.full((n,), t), noise)
    m, var = float(bridge.m[t]), float(bridge.variance[t])
    mean, variance = _moments(x_t)
    # mean within 5 standard errors, variance within 5 % (its relative standard error is 0.7 %)
    assert torch.allclose(mean, (1 - m) * x0[0] + m * y[0], atol=5 * (var / n) ** 0.5 + 1e-6)
    assert torch.allclose(variance, torch.full((6,), var), rtol=0.05)
    assert torch.allclose(x_t - objective, x0.expand(n, 6), atol=1e-6)  # x0 = x_t - o_t exactly


@pytest.mark.parametrize("t, t_next", [(3, 1), (2, 1), (1, 0), (3, 0), (2, 2)])
def test_reverse_step_with_the_true_target_maps_marginal_to_marginal(t, t_next):
    torch.manual_seed(1)
    bridge, n = BrownianBridge(), 40_000
    x0, y = torch.rand(1, 6) * 2 - 1, torch.rand(1, 6) * 2 - 1
    x_t, _ = bridge.marginal(x0.expand(n, 6), y.expand(n, 6), torch.full((n,), t), torch.randn(n, 6))
    x_next = bridge.posterior_step(x_t, y, x0, t, t_next, eta=1.0)
    m, var = float(bridge.m[t_next]), float(bridge.variance[t_next])
    mean, variance = _moments(x_next)
    assert torch.allclose(mean, (1 - m) * x0[0] + m * y[0], atol=5 * (var / n) ** 0.5 + 1e-6)
    assert torch.allclose(variance, torch.full((6,), var), rtol=0.05)
    if t == t_next:
        assert torch.allclose(x_next, x_t, atol=1e-6)  # the 1 -> 1 step of [3, 1, 1, 0] is the identity


def test_objective_distances_follow_the_reference_definition():
    torch.manual_seed(2)
    bridge = BrownianBridge()
    labels = orthogonal_label_images(4, (1, 4, 4)) * 2 - 1
    y_cls = torch.tensor([0, 1, 2, 3, 1])
    x0, source, noise = labels[y_cls], torch.rand(5, 1, 4, 4) * 2 - 1, torch.randn(5, 1, 4, 4)
    t = torch.tensor([0, 1, 2, 3, 3])
    _, objective = bridge.marginal(x0, source, t, noise)
    prediction = torch.randn(5, 1, 4, 4) * 0.3
    m_prev = torch.tensor([0.0, *bridge.m[:-1].tolist()])[t]
    d = bridge_objective_distances(objective - prediction, x0, labels, bridge.m[t] - m_prev)
    for i in range(5):  # o^(k) = m_{t-1}(p_k - x0) + m_t(y - p_k) + sqrt(delta_t) eps, written out
        m_t, m_p, std = bridge.m[t[i]], m_prev[i], bridge.variance[t[i]].sqrt()
        for k in range(4):
            o_k = m_p * (labels[k] - x0[i]) + m_t * (source[i] - labels[k]) + std * noise[i]
            assert float(d[i, k]) == pytest.approx(float((o_k - prediction[i]).abs().mean()), abs=1e-6)
    assert torch.allclose(
        d[torch.arange(5), y_cls], (objective - prediction).abs().flatten(1).mean(1), atol=1e-6
    )


def test_classification_term_acts_only_on_examples_nearer_another_class():
    d = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.2, 0.4], [0.3, 0.3, 0.9]])
    y = torch.tensor([0, 2, 1])
    # example 0: own class nearest -> 0; example 1: class 1 nearer than own (2) -> min over others = 0.2;
    # example 2: a tie with the own class counts as correct -> 0
    assert bridge_classification_term(d, y).tolist() == pytest.approx([0.0, 0.2, 0.0])


# ------------------------------------------------------------------------------------------------------
# The classifier
# ------------------------------------------------------------------------------------------------------


def test_registered_unets_have_the_papers_layout():
    assert set(IDC_UNETS) >= {"idc_cifar10", "idc_cifar100", "idc_digits"}
    config = idc_unet_config("idc_cifar10")
    assert config["block_out_channels"] == (64, 256) and config["layers_per_block"] == 1
    assert config["resnet_time_scale_shift"] == "scale_shift" and config["attention_head_dim"] == 32
    with pytest.raises(ValueError, match="registered"):
        idc_unet_config("idc_imagenet")


def test_predictions_are_the_nearest_label_image():
    torch.manual_seed(0)
    model = IDCClassifier.from_config(tiny_unet(), num_classes=5).eval()
    x = torch.rand(6, 1, 8, 8)
    seed = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    translated = model.translate(x, seed())
    translated = translated.detach()
    assert translated.shape == x.shape and float(translated.min()) >= 0 and float(translated.max()) <= 1
    by_hand = (translated[:, None] - model.label_images[None]).abs().mean(dim=(2, 3, 4))
    assert torch.allclose(model.distances(x, seed()), by_hand, atol=1e-6)
    assert torch.equal(model.predict(x, seed()), by_hand.argmin(dim=1))
    assert torch.allclose(model(x, seed()), -by_hand / model.tau, atol=1e-5)
    assert torch.allclose(model.scores(x, seed()), torch.softmax(-by_hand / model.tau, 1), atol=1e-6)
    # label images themselves, slightly perturbed, are classified as themselves by the distance read-out
    noisy = (model.label_images + 0.05 * torch.randn_like(model.label_images)).clamp(0, 1)
    assert torch.equal(label_distances(noisy, model.label_images).argmin(1), torch.arange(5))


def test_sampler_is_stochastic_unless_eta_is_zero():
    torch.manual_seed(0)
    model = IDCClassifier.from_config(tiny_unet(), num_classes=3).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(model.translate(x), model.translate(x))
        model.eta = 0.0
        assert torch.equal(model.translate(x), model.translate(x))
    assert model.nfe == 4


def test_gradients_flow_from_scores_to_input_through_every_step():
    torch.manual_seed(0)
    model = IDCClassifier.from_config(tiny_unet(), num_classes=4).eval()
    inputs: list[torch.Tensor] = []
    original = model.objective

    def recording(x_t, t):
        inputs.append(x_t)
        return original(x_t, t)

    model.objective = recording
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    scores = model.scores(x)
    assert len(inputs) == 4
    for step, x_t in enumerate(inputs):
        (grad,) = torch.autograd.grad(scores[:, 0].sum(), x_t, retain_graph=True)
        assert float(grad.abs().sum()) > 0, f"no gradient reaches the U-Net input of step {step}"
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert float(grad.abs().sum()) > 0


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = IDCClassifier.from_config(tiny_unet(), num_classes=4, eta=0.5, tau=0.2).eval()
    model.save_pretrained(tmp_path / "idc")
    loaded = IDCClassifier.from_pretrained(tmp_path / "idc").eval()
    assert torch.equal(loaded.label_images, model.label_images)
    assert (loaded.steps, loaded.eta, loaded.tau, loaded.output) == ([3, 1, 1, 0], 0.5, 0.2, "logits")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(
            loaded(x, torch.Generator().manual_seed(3)), model(x, torch.Generator().manual_seed(3))
        )
    assert IDCClassifier.from_pretrained(tmp_path / "idc", eta=0.0, output="scores").eta == 0.0
    with pytest.raises(FileNotFoundError, match="lacks"):
        IDCClassifier.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown IDC override"):
        IDCClassifier.from_pretrained(tmp_path / "idc", sample_steps=3)


def test_invalid_settings_are_rejected():
    unet = UNet2DModel(**tiny_unet())
    labels = orthogonal_label_images(3, (1, 8, 8))
    with pytest.raises(ValueError, match="steps"):
        IDCClassifier(unet, labels, steps=[3, 1, 2, 0])
    with pytest.raises(ValueError, match="steps"):
        IDCClassifier(unet, labels, steps=[3, 1])
    with pytest.raises(ValueError, match="tau"):
        IDCClassifier(unet, labels, tau=0)
    with pytest.raises(ValueError, match="output"):
        IDCClassifier(unet, labels, output="probs")
    with pytest.raises(ValueError, match="px"):
        IDCClassifier(unet, orthogonal_label_images(3, (1, 4, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        IDCClassifier(unet, labels * 2)


# ------------------------------------------------------------------------------------------------------
# Training: a tiny IDC overfits a handful of images; EOT-PGD breaks it
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit_idc():
    """A tiny IDC trained with IDCModule's loss (Adam, cosine decay, 400 steps, ~25 s) on 8 random 3×8×8
    images of 4 classes."""
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 4
    module = IDCModule(
        IDCClassifier.from_config(tiny_unet(channels=3), num_classes=4), lr_scheduler=None
    )
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 400)
    module.train()
    for _ in range(400):
        loss = module.bridge_losses(x.repeat(4, 1, 1, 1), y.repeat(4))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return module.idc.eval(), x, y


def test_tiny_idc_overfits_a_handful_of_images(overfit_idc):
    model, x, y = overfit_idc
    # The translation itself is learnt exactly: the deterministic sampler (eta = 0) classifies all 8 images.
    model.eta = 0.0
    try:
        assert torch.equal(model.predict(x), y)
    finally:
        model.eta = 1.0
    # The paper's stochastic sampler injects noise of std 0.67 (in [-1, 1] units) at its 3 -> 1 step; on
    # 192-pixel images single draws err now and then (measured: 5 of 160 predictions), a 9-draw vote never.
    draws = torch.stack([model.predict(x, torch.Generator().manual_seed(s)) for s in range(20)])
    assert float((draws == y).float().mean()) >= 0.9
    assert torch.equal(predict_labels(model, x, samples=9), y)


def test_eot_attack_moves_accuracy(overfit_idc):
    model, x, y = overfit_idc
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=0.3, steps=10, eot_samples=4, generator=torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6
    clean = float((predict_labels(model, x, samples=9) == y).float().mean())
    robust = float((predict_labels(model, x_adv, samples=9) == y).float().mean())
    assert clean == 1.0 and robust <= 0.5


def test_training_module_losses_and_validation_metric():
    torch.manual_seed(0)
    module = IDCModule(IDCClassifier.from_config(tiny_unet(), num_classes=3))
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    parts = module.bridge_losses(x, y)
    assert float(parts["loss"]) == pytest.approx(float(parts["l1"] - 0.2 * parts["cls_term"]), abs=1e-6)
    assert 0.0 <= float(parts["cls_active"]) <= 1.0
    with pytest.raises(ValueError, match="out of range"):
        module.bridge_losses(x, torch.tensor([0, 1, 2, 3, 1, 2]))
    with pytest.raises(ValueError, match="model.lr_schedule was replaced by model.lr_scheduler"):
        IDCModule(module.idc, lr_schedule="cosine")


# ------------------------------------------------------------------------------------------------------
# Copy-then-EMA
# ------------------------------------------------------------------------------------------------------


def test_copy_then_ema_copies_before_the_start_step_and_averages_after():
    from lightning.pytorch import LightningModule

    class Tiny(LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(2))

    module = Tiny()
    callback = CopyThenEMAWeightAveraging(decay=0.5, update_every_n_steps=1, copy_before_step=2)
    callback.setup(types.SimpleNamespace(), module, "fit")
    average = lambda: callback._average_model.module.weight.detach().clone()  # noqa: E731
    expected = []
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        module.weight.data.fill_(value)  # the optimizer step
        callback.on_train_batch_end(types.SimpleNamespace(global_step=step), module, None, None, step - 1)
        expected.append(float(average()[0]))
    # steps 1-2 copy (1, 2); then EMA with decay 0.5: 0.5*2 + 0.5*4 = 3, 0.5*3 + 0.5*8 = 5.5
    assert expected == [1.0, 2.0, 3.0, 5.5]


# ------------------------------------------------------------------------------------------------------
# The commands: msds train-idc (the real digits config, tiny) and msds attack --idc
# ------------------------------------------------------------------------------------------------------


def test_train_idc_then_attack_it_from_the_cli(tmp_path, monkeypatch, capsys):
    import csv
    import json
    from pathlib import Path

    from msds_lightning.cli import main
    from msds_lightning.robustness.evaluation import columns

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "train_idc.yaml"
    assert main(["train-idc", "-c", str(config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                 "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=1",
                 "--trainer.enable_progress_bar=false"]) == 0  # fmt: skip
    exported = tmp_path / "outputs" / "demo" / "idc"
    model = IDCClassifier.from_pretrained(exported)
    assert model.steps == [3, 1, 1, 0] and model.eta == 1.0 and model.num_classes == 10

    out = tmp_path / "attack" / "idc.tsv"
    argv = ["--idc", str(exported), "--data", "digits", "--max", "6", "--eps", "0.1", "--attacks", "pgd", "eot-pgd",
            "--pgd-steps", "2", "--eot-steps", "2", "--eot-samples", "2", "--predict-samples", "3",
            "--batch-size", "6", "--device", "cpu", "--output", str(out)]  # fmt: skip
    assert main(["attack", *argv]) == 0
    printed = capsys.readouterr().out
    with out.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = [{k: int(v) for k, v in r.items()} for r in reader]
        assert tuple(reader.fieldnames) == columns(["pgd", "eot-pgd"])
    assert [r["idx"] for r in rows] == list(range(6))
    for r in rows:  # robust only if correct clean and after the attack
        assert r["eot_correct"] == int(r["clean_correct"] and r["eot_pred"] == r["label"])
        assert r["worst_correct"] == min(r["clean_correct"], r["pgd_correct"], r["eot_correct"])
    cost = json.loads(out.with_suffix(".cost.json").read_text())
    assert cost["nfe_per_prediction"] == 12  # 4 U-Net evaluations x 3 votes
    assert cost["images"]["clean"] == 6 and cost["seconds_per_image"]["clean"] > 0
    assert "EOT-PGD-2 (2 samples per step" in printed and "network evaluations per prediction" in printed

    for bad in (["--model-name", "msds_small_cnn"], []):
        args = [a for a in argv if a not in ("--idc", str(exported))] + bad
        if bad:
            args = [*args, "--idc", str(exported)]
        assert main(["attack", *args, "--overwrite"]) == 2
        assert "--idc" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config, unet, classes, schedule, flip",
    [("cifar10", (64, 256), 10, "plateau", False), ("cifar100", (64, 256, 512), 100, "step", True)],
)
def test_cifar_configs_build_the_papers_setup(config, unet, classes, schedule, flip, tmp_path, monkeypatch):
    """The CIFAR configs instantiate (no data needed until setup): U-Net, T = 4 schedule, recipe, EMA policy."""
    from pathlib import Path

    from msds_lightning.cli.lightning import lightning_cli

    monkeypatch.chdir(tmp_path)
    path = Path(__file__).resolve().parents[1] / "configs" / config / "train_idc.yaml"
    cli = lightning_cli(IDCModule, ["-c", str(path), "--trainer.accelerator=cpu", "--trainer.devices=1"],
                         "msds train-idc")  # fmt: skip
    model = cli.model
    assert tuple(model.idc.unet.config.block_out_channels) == unet and model.idc.num_classes == classes
    assert model.idc.steps == [3, 1, 1, 0] and model.idc.eta == 1.0 and model.idc.tau == 0.1
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]
    assert type(optimizer) is torch.optim.Adam and model.cls_weight == 0.2
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["betas"]) == (1e-4, (0.9, 0.999))
    assert type(scheduler["scheduler"]).__name__ == {"plateau": "ReduceLROnPlateau", "step": "StepLR"}[schedule]
    assert scheduler["interval"] == {"plateau": "step", "step": "epoch"}[schedule]
    assert cli.trainer.accumulate_grad_batches == 2
    ema = next(c for c in cli.trainer.callbacks if isinstance(c, CopyThenEMAWeightAveraging))
    assert (ema.copy_before_step, ema.update_every_n_steps) == (15000, 8)
    data = cli.datamodule
    assert (data.val_size, data.crop_padding, data.flip, data.generated_fraction) == (1024, 0, flip, 0.0)


def test_eot_pgd_on_a_deterministic_model_is_plain_pgd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    plain = pgd(model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(1))
    eot = pgd(model, x, y, eps=0.1, steps=5, eot_samples=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, eot)  # l-inf steps follow the sign of the summed (identical) gradients
    with pytest.raises(ValueError, match="eot_samples"):
        pgd(model, x, y, eps=0.1, eot_samples=0)


def test_vote_predictions_take_the_majority_and_break_ties_low():
    outputs = iter(
        [torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])]
    )
    assert predict_labels(lambda x: next(outputs), torch.zeros(1, 1), samples=3).tolist() == [1]
    outputs = iter([torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]])])
    assert predict_labels(lambda x: next(outputs), torch.zeros(1, 1), samples=2).tolist() == [1]
    with pytest.raises(ValueError, match="samples"):
        predict_labels(lambda x: x, torch.zeros(1, 3), samples=0)
