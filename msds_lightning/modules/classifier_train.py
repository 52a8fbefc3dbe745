"""Classifier training for smoothing: cross-entropy (label smoothing optional) on clean or Gaussian-noised
inputs (Cohen et al. train the base classifier with the noise it will be smoothed with)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from safetensors.torch import save_file
from torchmetrics.classification import MulticlassAccuracy

from ..models import Classifier
from ..runs import honour_umask
from ..smoothing.checks import check_num_classes
from .optim import TrainingModule, configure, spec

# defaults: SGD + Nesterov lr 0.1, momentum 0.9, weight decay 5e-4; cosine decay to zero over the run
OPTIMIZER = spec("torch.optim.SGD", lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
LR_SCHEDULER = spec("msds_lightning.modules.optim.WarmupLR", warmup_steps=0, decay="cosine")

class ClassifierModule(TrainingModule):
    """:param classifier: a :class:`Classifier` (timm model, [0,1] pixels in, logits out)
    :param num_classes: number of classes
    :param noise_sigma: std (in [0,1] pixel units) of Gaussian noise added to training inputs; 0 = clean
    :param label_smoothing: cross-entropy label smoothing
    :param optimizer: default SGD + Nesterov, lr 0.1, momentum 0.9, weight decay 5e-4
    :param lr_scheduler: default :class:`~.optim.WarmupLR` with cosine decay to zero, no warm-up
    :param lr, weight_decay, momentum, warmup_steps, schedule: removed (now in ``optimizer`` /
        ``lr_scheduler``); setting one is an error naming its new key
    :param export_path: at the end of training, write the timm model's weights (safetensors) here; load
        them with ``Classifier(model_name, num_classes, checkpoint=export_path)``. With the
        ``EMAWeightAveraging`` callback these are the EMA weights.
    """

    def __init__(
        self,
        classifier: torch.nn.Module,
        num_classes: int = 10,
        noise_sigma: float = 0.0,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable | str = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        export_path: str | None = None,
        **removed,
    ):
        super().__init__(optimizer, lr_scheduler, **removed)
        if type(self).__init__ is ClassifierModule.__init__:  # a subclass saves its own (fuller) arguments
            self.save_hyperparameters(ignore=["classifier", "optimizer", "lr_scheduler"])
        if noise_sigma < 0:
            raise ValueError(f"noise_sigma must be >= 0 ([0,1] pixel units), got {noise_sigma}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.classifier = classifier
        self.num_classes = check_num_classes(num_classes)
        self.noise_sigma, self.label_smoothing = float(noise_sigma), float(label_smoothing)
        self.export_path = export_path
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.val_noisy_acc = MulticlassAccuracy(num_classes)

    def forward(self, x):
        return self.classifier(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        if self.noise_sigma > 0:
            x = x + torch.randn_like(x) * self.noise_sigma
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self.classifier(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        if self.noise_sigma > 0:
            g = torch.Generator(device=x.device).manual_seed(batch_idx)
            noisy = x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * self.noise_sigma
            self.val_noisy_acc(self.classifier(noisy), y)
            self.log(f"val/acc@sigma{self.noise_sigma:g}", self.val_noisy_acc)

    def configure_optimizers(self):
        return configure(self, self.classifier.parameters(), self.optimizer, self.lr_scheduler)

    def on_train_end(self):
        if self.export_path:
            export_classifier(self.classifier, self.export_path)


@rank_zero_only
def export_classifier(classifier: torch.nn.Module, path: str) -> None:
    net = classifier.model if isinstance(classifier, Classifier) else classifier
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, path)
    honour_umask(path)  # safetensors writes 0600
    rank_zero_info(f"classifier weights exported to {path} (Classifier(..., checkpoint=...))")
