"""Training of IDC, the image-to-image diffusion classifier (Mei, Dong, Xu 2024): a Brownian bridge from each
input image to its class's label image, L1 objective plus the inter-class term.

Per training batch: t ~ Uniform{0..T−1} per image; ``x_t, o_t`` from the bridge's marginal with x0 = the label
image of y and the source = the input (both in [-1, 1]); loss = mean|o_t − ô| − λ·mean(term), ``term`` the
distance to the nearest wrong class's objective for images currently closer to it than to their own
(:func:`~msds_lightning.losses.bridge_classification_term`; λ = ``cls_weight`` = 0.2).

Validation (EMA weights with :class:`~msds_lightning.callbacks.CopyThenEMAWeightAveraging`): ``val/loss``
(the L1 term) and ``val/acc``, the accuracy of the full stochastic sampler with a fixed seed per batch
(the same noise every epoch). Hold out training images for it (``MixedDataModule(val_size=...)``) rather
than selecting checkpoints on the test split as the official code does.

Units: pixels in [0, 1] at the data boundary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..losses import bridge_classification_term, bridge_objective_distances
from ..models.idc import IDCClassifier
from .optim import TrainingModule, configure, spec

# defaults (the paper, CIFAR-10): Adam lr 1e-4; ReduceLROnPlateau on train/loss, stepped every optimizer step
OPTIMIZER = spec("torch.optim.Adam", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
LR_SCHEDULER = spec("torch.optim.lr_scheduler.ReduceLROnPlateau", mode="min", factor=0.5, patience=3000,
                    threshold=1e-4, threshold_mode="rel", cooldown=3000, min_lr=5e-7)  # fmt: skip

class IDCModule(TrainingModule):
    """:param idc: the :class:`IDCClassifier` to train (``IDCClassifier.from_config`` for a fresh one)
    :param cls_weight: λ of the inter-class term (0.2)
    :param optimizer: Adam (lr 1e-4, betas (0.9, 0.999), weight decay 0 in the paper)
    :param lr_scheduler: ``ReduceLROnPlateau`` (CIFAR-10, the default: on ``train/loss`` every optimizer step,
        factor 0.5, patience 3000, threshold 1e-4 relative, cooldown 3000, min_lr 5e-7), ``StepLR``
        (CIFAR-100: ×``gamma`` every ``step_size`` epochs) or null (constant)
    :param lr, betas, weight_decay, lr_schedule, plateau_*, min_lr, step_epochs, step_gamma: removed (now in
        ``optimizer`` / ``lr_scheduler``); setting one is an error naming its new key
    :param val_seed: seed of the validation sampler's noise (per batch: ``val_seed + batch_idx``)
    :param export_dir: ``save_pretrained`` the model here at the end of training (EMA weights with the EMA
        callback); ``msds attack --idc`` loads that folder
    """

    def __init__(
        self,
        idc: IDCClassifier,
        cls_weight: float = 0.2,
        optimizer: OptimizerCallable | str = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        val_seed: int = 0,
        export_dir: str | None = None,
        **removed,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, **removed)
        if cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {cls_weight}")
        self.save_hyperparameters(ignore=["idc", "optimizer", "lr_scheduler"])
        self.idc = idc
        self.cls_weight = float(cls_weight)
        self.val_seed, self.export_dir = int(val_seed), export_dir
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(idc.num_classes, average="micro")

    def bridge_losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"l1", "cls_term", "loss", "cls_active"}`` for images ``x`` ([0, 1]) and labels ``y``;
        ``cls_active``: the share of examples whose prediction is nearer another class's objective than their
        own (where the inter-class term acts). It is high early in training: a blurred ``x̂0`` is nearer the
        objectives of other classes, which move the target part-way towards another label image."""
        if int(y.max()) >= self.idc.num_classes:
            raise ValueError(f"label {int(y.max())} out of range for {self.idc.num_classes} label images")
        bridge = self.idc.bridge
        labels = self.idc.label_images.to(x.dtype) * 2.0 - 1.0
        x0, source = labels[y], x * 2.0 - 1.0
        t = torch.randint(0, bridge.num_timesteps, (len(x),), device=x.device)
        x_t, objective = bridge.marginal(x0, source, t, torch.randn_like(x0))
        residual = objective - self.idc.objective(x_t, t)
        l1 = residual.abs().mean()
        m_prev = torch.where(t > 0, bridge.m[(t - 1).clamp_min(0)], torch.zeros_like(bridge.m[t]))
        distances = bridge_objective_distances(residual, x0, labels, bridge.m[t] - m_prev)
        term = bridge_classification_term(distances, y)
        loss = l1 - self.cls_weight * term.mean() if self.cls_weight else l1
        return {"l1": l1, "cls_term": term.mean(), "loss": loss, "cls_active": (term > 0).float().mean()}

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        parts = self.bridge_losses(x, y)
        self.log("train/loss", parts["loss"], prog_bar=True)
        self.log_dict({"train/l1": parts["l1"], "train/cls_term": parts["cls_term"],
                       "train/cls_active": parts["cls_active"]})  # fmt: skip
        return parts["loss"]

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.val_loss(self.bridge_losses(x, y)["l1"])
        generator = torch.Generator(device=x.device).manual_seed(self.val_seed + batch_idx)
        self.val_acc(self.idc.predict(x, generator), y)
        self.log("val/loss", self.val_loss)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        # ReduceLROnPlateau: stepped every optimizer step on train/loss; StepLR: every epoch (optim.configure)
        return configure(self, self.idc.parameters(), self.optimizer, self.lr_scheduler)

    def on_train_end(self):
        if self.export_dir:
            _export(self.idc, self.export_dir)


@rank_zero_only
def _export(idc: IDCClassifier, path: str) -> None:
    idc.save_pretrained(Path(path))
    rank_zero_info(f"IDC model exported to {path} (IDCClassifier.from_pretrained / msds attack --idc)")
