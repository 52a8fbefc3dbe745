"""Optimisers and learning-rate schedules of the training modules, chosen in the config as LightningCLI
means it (``OptimizerCallable`` / ``LRSchedulerCallable``)::

    model:
      optimizer:
        class_path: torch.optim.AdamW
        init_args: {lr: 1.0e-4, weight_decay: 0.05}
      lr_scheduler:
        class_path: msds_lightning.modules.optim.WarmupLR
        init_args: {warmup_steps: 500, decay: cosine}

Any torch optimiser or scheduler fits. The two schedules here take the run's length from the trainer when
the module builds them (:func:`configure`): :class:`WarmupLR`, linear warm-up then constant or cosine decay
to zero at the end of the run, stepped every optimizer step; :class:`EpochOneCycleLR`, torch's
``OneCycleLR`` stepped once per epoch over ``trainer.max_epochs`` (peak at 2.5% of the run, cosine down;
momentum cycled), the schedule of the adversarial-training-with-generated-data recipe (Wang, Pang et al.
2023). ``ReduceLROnPlateau`` is stepped every optimizer step on ``train/loss``; any other scheduler once per
epoch (Lightning's default) unless it has an ``interval`` attribute.
"""

from __future__ import annotations

import importlib
import math
from contextvars import ContextVar
from functools import partial

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningModule

# The trainer of the module whose configure_optimizers is building a scheduler (see ``configure``).
_TRAINER: ContextVar = ContextVar("msds_lightning_trainer", default=None)

# Old (string-chosen) keys of the training modules → what replaced them; setting one is a clear error.
REPLACED = {
    "lr": "model.optimizer.init_args.lr",
    "weight_decay": "model.optimizer.init_args.weight_decay",
    "momentum": "model.optimizer.init_args.momentum (class_path torch.optim.SGD, with nesterov: true as before)",
    "betas": "model.optimizer.init_args.betas",
    "warmup_steps": "model.lr_scheduler.init_args.warmup_steps (class_path msds_lightning.modules.optim.WarmupLR)",
    "schedule": "model.lr_scheduler: {class_path: msds_lightning.modules.optim.WarmupLR, init_args: {decay: "
    "constant|cosine}} (onecycle: class_path msds_lightning.modules.optim.EpochOneCycleLR)",
    "lr_schedule": "model.lr_scheduler (plateau: class_path torch.optim.lr_scheduler.ReduceLROnPlateau; step: "
    "torch.optim.lr_scheduler.StepLR; constant: null)",
    "plateau_factor": "model.lr_scheduler.init_args.factor (ReduceLROnPlateau)",
    "plateau_patience": "model.lr_scheduler.init_args.patience (ReduceLROnPlateau)",
    "plateau_threshold": "model.lr_scheduler.init_args.threshold (ReduceLROnPlateau)",
    "plateau_cooldown": "model.lr_scheduler.init_args.cooldown (ReduceLROnPlateau)",
    "min_lr": "model.lr_scheduler.init_args.min_lr (ReduceLROnPlateau)",
    "step_epochs": "model.lr_scheduler.init_args.step_size (StepLR)",
    "step_gamma": "model.lr_scheduler.init_args.gamma (StepLR)",
}
_OLD_OPTIMIZERS = {"adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD (momentum: 0.9, nesterov: true)"}


def reject_removed(**given) -> None:
    """Raise a ValueError naming the new key for the first old key given (not None)."""
    for key, value in given.items():
        if value is not None:
            raise ValueError(f"model.{key} was replaced by {REPLACED[key]}")


def spec(class_path: str, **init_args) -> Namespace:
    """A ``class_path`` / ``init_args`` default for an optimizer or scheduler argument (what a config writes)."""
    return Namespace(class_path=class_path, init_args=Namespace(**init_args))


def resolve(value, what: str = "optimizer"):
    """The callable of an ``optimizer`` / ``lr_scheduler`` argument: as given (LightningCLI's callable, a class,
    a ``functools.partial``), built from a ``class_path`` spec (a module constructed in Python with the
    defaults), or None. An old string (``"adamw"``) is an error naming the new form."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        new = _OLD_OPTIMIZERS.get(value, "<class>") if what == "optimizer" else "<class>"
        raise ValueError(f"model.{what}: {value} was replaced by model.{what}: {{class_path: {new}, init_args: {{...}}}}")
    if isinstance(value, (Namespace, dict)) and "class_path" in value:
        module_name, _, name = value["class_path"].rpartition(".")
        init_args = value.get("init_args") or {}
        init_args = dict(init_args.items() if isinstance(init_args, dict) else vars(init_args).items())
        return partial(getattr(importlib.import_module(module_name), name), **init_args)
    raise ValueError(f"model.{what} must be a class_path/init_args spec or a callable, got {value!r}")


def trainable(params) -> list:
    """Parameters (or parameter-group dicts) that require gradients; empty groups dropped."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
        params = [g for g in params if g["params"]]
    else:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    return params


def _run_trainer(what: str):
    trainer = _TRAINER.get()
    if trainer is None:
        raise ValueError(f"{what}: built outside a module's configure_optimizers, give the run length explicitly")
    return trainer


class WarmupLR(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up over ``warmup_steps`` optimizer steps (factor (step + 1) / warmup_steps), then constant
    (``decay="constant"``) or cosine decay to zero over the rest of the run (``decay="cosine"``); stepped every
    optimizer step. ``total_steps``: the run's optimizer steps, None = ``trainer.estimated_stepping_batches``."""

    interval = "step"

    def __init__(self, optimizer, warmup_steps: int = 0, decay: str = "constant", total_steps: int | None = None):
        if decay not in ("constant", "cosine"):
            raise ValueError(f"decay must be 'constant' or 'cosine', got {decay!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps, self.decay, self.total_steps = int(warmup_steps), decay, total_steps
        run_steps = None
        if decay == "cosine":
            run_steps = total_steps if total_steps is not None else _run_trainer("WarmupLR").estimated_stepping_batches
        warmup = self.warmup_steps

        def factor(step: int) -> float:  # a function (not a bound method): LambdaLR does not checkpoint it
            if step < warmup:
                return (step + 1) / warmup
            if decay == "constant":
                return 1.0
            total = max(1, run_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))

        super().__init__(optimizer, factor)


class EpochOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's ``OneCycleLR`` peaking at the optimizer's lr, stepped once per epoch over ``epochs`` (None =
    ``trainer.max_epochs``), peak at ``pct_start`` of the run."""

    interval = "epoch"

    def __init__(
        self,
        optimizer,
        pct_start: float = 0.025,
        epochs: int | None = None,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ):
        if epochs is None:
            epochs = _run_trainer("EpochOneCycleLR").max_epochs
            if not epochs or epochs < 1:
                raise ValueError("EpochOneCycleLR steps per epoch: set trainer.max_epochs")
        super().__init__(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=epochs, pct_start=pct_start,
            anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum, base_momentum=base_momentum,
            max_momentum=max_momentum, div_factor=div_factor, final_div_factor=final_div_factor,
        )  # fmt: skip


def configure(module, params, optimizer, lr_scheduler):
    """Lightning ``configure_optimizers`` return value: ``optimizer(trainable params)`` and
    ``lr_scheduler(optimizer)`` (None: no scheduler). ``params``: parameters, or parameter-group dicts
    (e.g. BatchNorm parameters without weight decay)."""
    opt = optimizer(trainable(params))
    for group in opt.param_groups:
        if not group["lr"] > 0:
            raise ValueError(f"lr must be > 0, got {group['lr']}")
    if lr_scheduler is None:
        return opt
    try:
        trainer = module.trainer
    except RuntimeError:  # a LightningModule not attached to a trainer: schedules given their run length work
        trainer = None
    token = _TRAINER.set(trainer)
    try:
        scheduler = lr_scheduler(opt)
    finally:
        _TRAINER.reset(token)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        config = {"interval": "step", "frequency": 1, "monitor": "train/loss"}
    else:
        config = {"interval": getattr(scheduler, "interval", "epoch")}
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, **config}}


class TrainingModule(LightningModule):
    """Base of the training modules: the optimizer and lr schedule injected from the config (callables, see
    above), and the keys they replaced, which are accepted only to fail with the key that replaced them
    (:data:`REPLACED`). A subclass takes ``optimizer``/``lr_scheduler`` and ``**removed`` and passes them on;
    its :meth:`configure_optimizers` is ``configure(self, params, self.optimizer, self.lr_scheduler)``."""

    def __init__(
        self, optimizer, lr_scheduler, *, lr: float | None = None, weight_decay: float | None = None,
        momentum: float | None = None, betas: tuple[float, float] | None = None, warmup_steps: int | None = None,
        schedule: str | None = None, lr_schedule: str | None = None, plateau_factor: float | None = None,
        plateau_patience: int | None = None, plateau_threshold: float | None = None,
        plateau_cooldown: int | None = None, min_lr: float | None = None, step_epochs: int | None = None,
        step_gamma: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        given = {k: v for k, v in locals().items() if k in REPLACED}
        reject_removed(**given)
        self.optimizer, self.lr_scheduler = resolve(optimizer), resolve(lr_scheduler, "lr_scheduler")
