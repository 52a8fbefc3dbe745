"""Logger factories for configs (``trainer.logger: {class_path: msds_lightning.loggers.wandb_logger}``)."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_logger(
    project: str = "msds-lightning",
    name: str | None = None,
    save_dir: str = "outputs",
    group: str | None = None,
    offline: bool | None = None,
    run_id: str | None = None,
) -> WandbLogger:
    """A :class:`WandbLogger` that is offline unless W&B credentials are available.

    ``offline=None`` (default): online when ``WANDB_API_KEY`` is set in the environment (or
    ``WANDB_MODE=online``), otherwise offline — runs are kept under ``<save_dir>/wandb/offline-run-*`` and
    can be uploaded later with ``wandb sync``. The key is read by wandb from the environment; it is
    never written to configs or logs.

    ``run_id=None``: under SLURM the id is derived from the job id (and array task id), which ``scontrol
    requeue`` keeps, so a requeued job resumes the same W&B run; elsewhere wandb picks a fresh id.
    """
    if run_id is None and os.environ.get("SLURM_JOB_ID"):
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        run_id = "-".join(filter(None, [name or project, os.environ["SLURM_JOB_ID"], task]))
    if offline is None:
        offline = not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, name=name, save_dir=save_dir, group=group, offline=offline, id=run_id)
