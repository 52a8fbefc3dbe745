"""Optimiser + schedule shared by the training modules: AdamW (or SGD with Nesterov), linear warm-up, then
constant or cosine decay to zero over the run; or ``onecycle``: torch's ``OneCycleLR`` stepped once per
epoch over ``max_epochs`` (peak at 2.5% of the run, cosine down; momentum cycled), the schedule of the
adversarial-training-with-generated-data recipe (Wang, Pang et al. 2023)."""

from __future__ import annotations

import math

import torch


def build_optimizer(module, params, optimizer: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    warmup_steps: int = 0, schedule: str = "constant"):  # fmt: skip
    """Lightning ``configure_optimizers`` return value. ``params``: parameters, or parameter-group dicts
    (e.g. BatchNorm parameters without weight decay)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0
        )
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("constant", "cosine", "onecycle"):
        raise ValueError(f"schedule must be 'constant', 'cosine' or 'onecycle', got {schedule!r}")
    if schedule == "onecycle":
        epochs = module.trainer.max_epochs
        if not epochs or epochs < 1:
            raise ValueError("schedule 'onecycle' steps per epoch: set trainer.max_epochs")
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs, pct_start=0.025)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        total = max(1, module.trainer.estimated_stepping_batches - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / total)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
