"""Logs certified-accuracy curves of a certification run to every logger of the trainer.

Rows come from the certification module's predict outputs; a :class:`~msds_lightning.metrics.CertifiedAccuracy`
metric accumulates them (per-sample states, de-duplicated by dataset index, so the result is exact across
DDP ranks), together with the rows an interrupted run had already written (read from the
:class:`CertificationWriter`'s files at start). At the end of the run:

* W&B (``WandbLogger``): a table (radius, certified accuracy, run) and a line plot of it, plus ACR;
* any other logger (CSV, TensorBoard): scalars ``certify/<run>/acc@<r>`` and ``certify/<run>/acr``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from ..metrics import CertifiedAccuracy
from ..results import read_results
from ..results.analysis import CIFAR10_RADII, certified_accuracy


class CertifiedAccuracyLogger(Callback):
    """:param radii: radii of the logged scalars (CSV/TensorBoard); the W&B curve uses ``curve_step``
    :param name: run label in the logs (default: the result file's stem)
    :param curve_step: radius step of the W&B curve ([0,1] pixel units)"""

    def __init__(
        self, radii: Sequence[float] = CIFAR10_RADII, name: str | None = None, curve_step: float = 0.05
    ):
        self.radii = [float(r) for r in radii]
        self.name = name
        self.curve_step = curve_step
        self.metric: CertifiedAccuracy | None = None

    def _writer(self, trainer):
        from .writer import CertificationWriter

        return next((c for c in trainer.callbacks if isinstance(c, CertificationWriter)), None)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        writer = self._writer(trainer)
        self.name = self.name or (writer.output.stem if writer else "certify")
        self.metric = CertifiedAccuracy(self.radii).to(pl_module.device)
        if writer is not None and writer.output.is_file():  # rows of an earlier, interrupted run
            done = read_results(writer.output)
            if len(done):
                self.metric.update(torch.as_tensor(done.idx), torch.as_tensor(done.radius),
                                   torch.as_tensor(done.correct))  # fmt: skip

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs:
            device = pl_module.device
            self.metric.update(
                torch.tensor([r["idx"] for r in outputs], device=device),
                torch.tensor([float(r["radius"]) for r in outputs], dtype=torch.float64, device=device),
                torch.tensor([int(r["predict"] == r["label"]) for r in outputs], device=device),
            )

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.metric is None:
            return
        # every rank takes part in the gather; afterwards rank 0 holds all rows, de-duplicated by index
        with self.metric.sync_context():
            result = self.metric.compute()
            _, radius, correct = self.metric.rows()
        if not trainer.is_global_zero or not trainer.loggers:
            return
        radius, correct = radius.cpu().numpy(), correct.cpu().numpy().astype(bool)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, radius, correct, float(result["acr"]))
            else:
                scalars = {f"certify/{self.name}/acc@{r:g}": float(a) for r, a in
                           zip(self.radii, torch.atleast_1d(result["accuracy"]))}  # fmt: skip
                scalars[f"certify/{self.name}/acr"] = float(result["acr"])
                logger.log_metrics(scalars, step=trainer.global_step)
                logger.save()

    def _log_wandb(self, logger: WandbLogger, radius: np.ndarray, correct: np.ndarray, acr: float) -> None:
        import wandb

        top = float(radius.max()) if radius.size else 0.0
        grid = np.arange(0.0, top + self.curve_step, self.curve_step)
        data = [[float(r), float(a), self.name] for r, a in zip(grid, certified_accuracy(radius, correct, grid))]
        table = wandb.Table(columns=["radius", "certified_accuracy", "run"], data=data)
        plot = wandb.plot.line(table, "radius", "certified_accuracy", stroke="run",
                               title=f"certified accuracy vs radius: {self.name}")  # fmt: skip
        logger.experiment.log({f"certify/{self.name}/curve": plot, f"certify/{self.name}/table": table,
                               f"certify/{self.name}/acr": acr})  # fmt: skip
