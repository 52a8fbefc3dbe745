"""Adversarial training (TRADES or PGD-AT), l∞ or l2, as in "Better diffusion models further improve
adversarial training" (Wang, Pang et al., ICML 2023) — with real data alone or mixed with generated data
(:class:`~msds_lightning.data.MixedDataModule`).

Per training batch (TRADES): the model stays in train mode and BatchNorm statistics are frozen while the
attack runs (:func:`~msds_lightning.robustness.attacks.frozen_batchnorm`); PGD maximises KL(p_nat ‖ p(x_adv)) with
p_nat detached; the loss is CE_ls(f(x), y) + β·KL(f(x) ‖ f(x_adv)), whose two forwards update the BN
statistics. PGD-AT: CE_ls(f(x_adv), y) with x_adv from cross-entropy PGD. Validation reports clean and
PGD accuracy (``val/pgd_acc``, margin loss, on the held-out split) for checkpoint selection.

Attacks need autograd during validation: configs must set ``trainer.inference_mode: false``.
Units: pixels in [0,1]; ``eps`` and ``step_size`` in [0,1] pixel units (8/255 = 0.0314 for l∞, 128/255 =
0.502 for l2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from ..losses import trades_kl, trades_loss
from ..robustness.attacks import frozen_batchnorm, pgd
from .classifier_train import ClassifierModule
from .optim import configure, spec

# defaults (the paper): SGD + Nesterov lr 0.2, momentum 0.9, weight decay 5e-4; one cycle over the epochs
OPTIMIZER = spec("torch.optim.SGD", lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=True)
LR_SCHEDULER = spec("msds_lightning.modules.optim.EpochOneCycleLR", pct_start=0.025)

METHODS = ("trades", "pgd")


class AdversarialTrainingModule(ClassifierModule):
    """:param classifier: a :class:`~msds_lightning.models.Classifier` ([0,1] pixels in, logits out)
    :param method: ``"trades"`` (default) or ``"pgd"`` (Madry et al. PGD adversarial training)
    :param norm: ``"linf"`` or ``"l2"``; :param eps: radius ([0,1] pixel units)
    :param attack_steps, attack_step_size: training PGD (10 steps; step 2/255 for l∞ 8/255; None = the
        attack's default for the norm)
    :param beta: TRADES weight of the KL term (5 for l∞ in the paper)
    :param label_smoothing: on the natural cross-entropy (0.1 in the paper)
    :param val_attack_steps: PGD steps (margin loss) of the validation attack used to select checkpoints
    :param optimizer: SGD + Nesterov, lr 0.2, momentum 0.9, weight decay 5e-4 as in the paper; BatchNorm
        parameters get no weight decay
    :param lr_scheduler: :class:`~.optim.EpochOneCycleLR` (one-cycle over ``trainer.max_epochs``) as in the paper
    :param lr, weight_decay, momentum, warmup_steps, schedule: removed (now in ``optimizer`` /
        ``lr_scheduler``); setting one is an error naming its new key
    :param export_path: write the (EMA, with ``EMAWeightAveraging``) weights here at the end of training
    """

    def __init__(
        self,
        classifier: torch.nn.Module,
        num_classes: int = 10,
        method: str = "trades",
        norm: str = "linf",
        eps: float = 8 / 255,
        attack_steps: int = 10,
        attack_step_size: float | None = 2 / 255,
        beta: float = 5.0,
        label_smoothing: float = 0.1,
        val_attack_steps: int = 10,
        optimizer: OptimizerCallable | str = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        export_path: str | None = None,
        **removed,
    ):
        super().__init__(classifier, num_classes, 0.0, label_smoothing, optimizer, lr_scheduler, export_path, **removed)
        self.save_hyperparameters(ignore=["classifier", "optimizer", "lr_scheduler"])
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0 ([0,1] pixel units), got {eps!r}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        self.method, self.norm, self.eps, self.beta = method, norm, float(eps), float(beta)
        self.attack = dict(eps=self.eps, norm=norm, steps=int(attack_steps), step_size=attack_step_size)
        self.val_attack_steps = int(val_attack_steps)
        self.val_pgd_acc = MulticlassAccuracy(num_classes)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        model = self.classifier
        with frozen_batchnorm(model):
            if self.method == "trades":
                with torch.no_grad():
                    natural = model(x)  # the attack's target distribution, detached
                x_adv = pgd(model, x, y, loss=lambda logits, _: trades_kl(natural, logits), **self.attack)
            else:
                x_adv = pgd(model, x, y, loss="ce", **self.attack)
        if self.method == "trades":
            logits, logits_adv = model(x), model(x_adv)
            parts = trades_loss(logits, logits_adv, y, self.beta, self.label_smoothing)
            loss = parts["loss"]
            self.log_dict({"train/natural": parts["natural"], "train/robust_kl": parts["robust"]})
        else:
            logits_adv = model(x_adv)
            loss = F.cross_entropy(logits_adv, y, label_smoothing=self.label_smoothing)
        self.train_acc(logits_adv, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/adv_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        if torch.is_inference_mode_enabled():
            raise RuntimeError("adversarial validation needs autograd: set trainer.inference_mode: false")
        x, y = batch[0], batch[1]
        with torch.no_grad():
            logits = self.classifier(x)
        self.val_acc(logits, y)
        self.log("val/acc", self.val_acc, prog_bar=True)
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)  # the same attack every epoch
        attack = dict(self.attack, steps=self.val_attack_steps)
        x_adv = pgd(self.classifier, x, y, loss="cw", generator=generator, **attack)
        with torch.no_grad():
            self.val_pgd_acc(self.classifier(x_adv), y)
        self.log("val/pgd_acc", self.val_pgd_acc, prog_bar=True)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for module in self.classifier.modules():
            is_norm = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for p in module.parameters(recurse=False):
                (no_decay if is_norm else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return configure(self, groups, self.optimizer, self.lr_scheduler)
