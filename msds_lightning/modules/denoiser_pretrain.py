"""Standard DDPM pre-training of the diffusion denoiser (Ho et al. 2020): ε-prediction MSE at uniform t."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from ..models import DiffusionDenoiser
from .optim import TrainingModule, configure, spec

# defaults: AdamW lr 2e-4 without weight decay, constant lr
OPTIMIZER = spec("torch.optim.AdamW", lr=2e-4, weight_decay=0.0)
LR_SCHEDULER = spec("msds_lightning.modules.optim.WarmupLR", warmup_steps=0, decay="constant")


class DenoiserPretrainModule(TrainingModule):
    """Train ``denoiser.unet`` with the diffusion loss of its scheduler's prediction type.

    :param denoiser: the :class:`DiffusionDenoiser` to train (built with ``from_config`` for a fresh model)
    :param optimizer: default AdamW, lr 2e-4, no weight decay; :param lr_scheduler: default
        :class:`~.optim.WarmupLR` (constant, no warm-up; ``decay: cosine`` for cosine decay to zero)
    :param lr, weight_decay, warmup_steps, schedule: removed (now in ``optimizer`` / ``lr_scheduler``);
        setting one is an error naming its new key
    :param val_sigmas: σ (in [0,1] pixel units) at which validation reports one-shot denoising PSNR
    :param train_sigma_max: if set, train only timesteps up to the one of this σ — the noise levels
        one-shot denoised smoothing uses — instead of the whole schedule (the model is then a denoiser,
        not a sampler; it is much cheaper to train)
    :param export_dir: at the end of training, ``save_pretrained`` the denoiser here (EMA weights when the
        ``EMAWeightAveraging`` callback is used: it swaps them in before this module's hook runs)

    Models with learned variance (2·C output channels) train only the prediction half here.
    """

    def __init__(
        self,
        denoiser: DiffusionDenoiser,
        optimizer: OptimizerCallable | str = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        val_sigmas: list[float] = [0.25, 0.5],  # noqa: B006 (jsonargparse needs a concrete default)
        export_dir: str | None = None,
        train_sigma_max: float | None = None,
        **removed,
    ):
        super().__init__(optimizer, lr_scheduler, **removed)
        self.save_hyperparameters(ignore=["denoiser", "optimizer", "lr_scheduler"])
        self.denoiser = denoiser
        self.val_sigmas = [float(s) for s in val_sigmas]
        for s in self.val_sigmas:
            denoiser.timestep_for_sigma(s)  # reject unreachable σ up front
        self.export_dir = export_dir
        # highest timestep trained (inclusive): the whole schedule, or up to train_sigma_max's timestep
        self.max_timestep = (
            denoiser.num_train_timesteps - 1
            if train_sigma_max is None
            else denoiser.timestep_for_sigma(train_sigma_max)
        )
        self.val_loss = MeanMetric()
        self.val_psnr = torch.nn.ModuleList(PeakSignalNoiseRatio(data_range=1.0) for _ in self.val_sigmas)

    @property
    def class_conditional(self) -> bool:
        """A UNet with class embeddings (``num_class_embeds``): a data generator trained on (x, y)."""
        return bool(getattr(self.denoiser.unet.config, "num_class_embeds", None))

    def _labels(self, batch):
        return batch[1] if self.class_conditional else None

    def training_step(self, batch, batch_idx):
        x = batch[0]
        t = torch.randint(0, self.max_timestep + 1, (x.shape[0],), device=x.device)
        loss = self.denoiser.diffusion_loss(x, t, class_labels=self._labels(batch)).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x = batch[0]
        # fixed noise per batch: validation numbers are comparable across epochs
        g = torch.Generator(device=x.device).manual_seed(batch_idx)
        t = torch.randint(0, self.max_timestep + 1, (x.shape[0],), generator=g, device=x.device)
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        labels = self._labels(batch)
        self.val_loss.update(self.denoiser.diffusion_loss(x, t, noise, class_labels=labels))
        if labels is not None:  # a class-conditional generator is not used as a denoiser: no PSNR
            return
        for sigma, psnr in zip(self.val_sigmas, self.val_psnr):
            delta = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * sigma
            psnr.update(self.denoiser(x + delta, sigma), x)

    def on_validation_epoch_end(self):
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()
        for sigma, psnr in zip(self.val_sigmas, self.val_psnr):
            if self.class_conditional:
                break
            self.log(f"val/psnr@{sigma:g}", psnr.compute())
            psnr.reset()

    def configure_optimizers(self):
        return configure(self, self.denoiser.parameters(), self.optimizer, self.lr_scheduler)

    def on_train_end(self):
        if self.export_dir:
            training = {"method": "DDPM pre-training (msds pretrain-denoiser)", "objective": "diffusion loss"}
            export_denoiser(self.denoiser, self.export_dir, training)


@rank_zero_only
def export_denoiser(denoiser: DiffusionDenoiser, path: str, training: dict | None = None) -> None:
    """``save_pretrained`` with LoRA adapters (if any) merged, so ``msds certify`` loads it directly. The
    model card records where the weights started (``denoiser.source``) and ``training`` (method, σ set,
    objective and its weights)."""
    from ..models.lora import has_lora, merged_copy

    source = denoiser.source
    if has_lora(denoiser.unet):
        denoiser = DiffusionDenoiser(merged_copy(denoiser.unet), denoiser.scheduler, denoiser.rescale_timesteps,
                                     denoiser.pad_to)  # fmt: skip
    denoiser.provenance = {"base_model": source or "randomly initialised (DiffusionDenoiser.from_config)"}
    if training:
        denoiser.provenance["training"] = training
    denoiser.save_pretrained(Path(path))
    rank_zero_info(f"denoiser exported to {path} (DiffusionDenoiser.from_pretrained / msds certify)")
