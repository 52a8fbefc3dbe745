"""Logs denoised samples during denoiser training: a grid of clean | noisy | denoised rows per σ."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid


class DenoisedSamplesLogger(Callback):
    """At the end of every validation epoch, denoise ``num_images`` fixed validation images at each σ
    (fixed noise) and log one image grid per σ (rows: clean, noisy x + δ clamped for display, denoised)
    to W&B or TensorBoard. The module must have a ``denoiser`` attribute (``denoiser(x_noisy, σ)``).

    :param sigmas: noise levels in [0,1] pixel units
    :param num_images: images per grid
    """

    def __init__(self, sigmas: Sequence[float] = (0.25, 0.5, 1.0), num_images: int = 8):
        self.sigmas = [float(s) for s in sigmas]
        self.num_images = num_images
        self._images: torch.Tensor | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._images is None and batch_idx == 0:
            self._images = batch[0][: self.num_images].detach().clone()

    @torch.no_grad()
    def grids(self, denoiser, images: torch.Tensor) -> dict[float, torch.Tensor]:
        g = torch.Generator(device=images.device).manual_seed(0)
        out = {}
        for sigma in self.sigmas:
            noisy = images + torch.randn(images.shape, generator=g, device=images.device) * sigma
            denoised = denoiser(noisy, sigma)
            rows = torch.cat([images, noisy.clamp(0, 1), denoised]).float().cpu()
            out[sigma] = make_grid(rows, nrow=images.shape[0], padding=1, pad_value=1.0)
        return out

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._images is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        was_training = pl_module.denoiser.training
        pl_module.denoiser.eval()
        grids = self.grids(pl_module.denoiser, self._images.to(pl_module.device))
        pl_module.denoiser.train(was_training)
        for logger in trainer.loggers:
            for sigma, grid in grids.items():
                key = f"samples/denoised@sigma{sigma:g}"
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=key, images=[grid], step=trainer.global_step,
                                     caption=["rows: clean | noisy | denoised"])  # fmt: skip
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(key, grid, global_step=trainer.global_step)
