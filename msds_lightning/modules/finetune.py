"""MSDS fine-tuning of the diffusion denoiser with the classifier frozen.

Per batch (x, y), for each image: draw σ from the levels, draw M noisy copies x + δ_i, denoise each with
one UNet call *with gradients*, classify with the frozen classifier → softmax p_1..p_M. The image is
"recoverable" when the cascaded smoothed classifier gets it right (default ``recoverable="cascade"``, as
the paper's reviewers summarise it and the authors did not dispute: the training image goes through the
cascade, whose label decides): a point-estimate cascade over all levels, highest σ first, M fresh copies
per level, no gradient, answering at the first level whose top class holds *more than* p0 of the copies.
``recoverable="majority"`` is the cheaper alternative: the majority vote of the M copies at the drawn σ.
Loss per image (see :mod:`msds_lightning.losses`):

    r · Brier + λ_ac · (1 − r) · AntiConsistency + λ_dm · ε-MSE

Brier makes recoverable images consistently correct; anti-consistency makes the copies of unrecoverable
images disagree instead of agreeing on a wrong class (which would let the cascade answer wrongly at a high
σ); ε-MSE, the ordinary diffusion loss at the same timesteps, keeps the denoiser a denoiser. The exact
objective of the paper is not public: this is our specification (docs/training.md, "MSDS fine-tuning").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric

from ..losses import majority_vote, msds_loss
from ..models import DiffusionDenoiser
from ..models.lora import add_lora
from ..smoothing.checks import check_count, check_num_classes, check_sigma
from .denoiser_pretrain import export_denoiser
from .optim import TrainingModule, configure, spec

_LOGGED = ("loss", "brier", "anti_consistency", "diffusion_mse", "recoverable", "agreement", "vote_accuracy")


# defaults: AdamW lr 1e-5 without weight decay, constant lr (a config sets both: model.optimizer, model.lr_scheduler)
OPTIMIZER = spec("torch.optim.AdamW", lr=1e-5, weight_decay=0.0)
LR_SCHEDULER = spec("msds_lightning.modules.optim.WarmupLR", warmup_steps=0, decay="constant")


class DenoiserFinetuneModule(TrainingModule):
    """:param denoiser: the pretrained :class:`DiffusionDenoiser` to fine-tune
    :param classifier: the base classifier ([0,1] pixels → logits); frozen (no gradients, eval mode)
    :param num_classes: number of classes
    :param sigmas: noise levels (std, [0,1] pixel units) drawn uniformly per image
    :param num_noise_samples: M noisy copies per image
    :param lambda_ac: weight of the anti-consistency term on unrecoverable images
    :param lambda_dm: weight of the diffusion ε-MSE term
    :param recoverable: "cascade" (default: point-estimate cascade over all levels, M copies each, no
        gradient; its answer must be y) or "majority" (vote of the M copies at the drawn σ)
    :param anti_consistency: "off_class" (Σ_{c≠y} p̄_c²) or "full" (‖p̄‖²)
    :param p0: cascade threshold for ``recoverable="cascade"``: a level answers when its top class holds
        strictly more than ``p0 · M`` copies (see :meth:`cascade_prediction` for why strictly)
    :param lora: LoRA adapters instead of full fine-tuning, e.g. ``{r: 8, alpha: 8}`` (peft; merged on export)
    :param gradient_checkpointing: trade compute for UNet activation memory
    :param optimizer: the optimizer (default AdamW, lr 1e-5, no weight decay) of the denoiser's trainable
        parameters; :param lr_scheduler: its schedule (default :class:`~.optim.WarmupLR`: constant, no warm-up)
    :param lr, weight_decay, warmup_steps, schedule: removed (now in ``optimizer`` / ``lr_scheduler``);
        setting one is an error naming its new key
    :param export_dir: ``save_pretrained`` the fine-tuned denoiser here at the end (EMA weights with the
        ``EMAWeightAveraging`` callback); ``msds certify`` loads that folder directly
    """

    def __init__(
        self,
        denoiser: DiffusionDenoiser,
        classifier: torch.nn.Module,
        num_classes: int = 10,
        sigmas: list[float] = [0.25, 0.5, 1.0],  # noqa: B006 (jsonargparse needs a concrete default)
        num_noise_samples: int = 4,
        lambda_ac: float = 1.0,
        lambda_dm: float = 1.0,
        recoverable: str = "cascade",
        anti_consistency: str = "off_class",
        p0: float = 0.5,
        optimizer: OptimizerCallable | str = OPTIMIZER,
        lr_scheduler: LRSchedulerCallable | None = LR_SCHEDULER,
        lora: dict | None = None,
        gradient_checkpointing: bool = False,
        export_dir: str | None = None,
        **removed,
    ):
        super().__init__(optimizer, lr_scheduler, **removed)
        self.save_hyperparameters(ignore=["denoiser", "classifier", "optimizer", "lr_scheduler"])
        if recoverable not in ("majority", "cascade"):
            raise ValueError(f"recoverable must be 'majority' or 'cascade', got {recoverable!r}")
        if anti_consistency not in ("off_class", "full"):
            raise ValueError(f"anti_consistency must be 'off_class' or 'full', got {anti_consistency!r}")
        if lambda_ac < 0 or lambda_dm < 0:
            raise ValueError(f"lambda_ac and lambda_dm must be >= 0, got {lambda_ac}, {lambda_dm}")
        self.sigmas = sorted((check_sigma(s, "sigmas") for s in sigmas), reverse=True)
        for s in self.sigmas:
            denoiser.timestep_for_sigma(s)  # reject unreachable σ up front
        self.num_classes = check_num_classes(num_classes)
        self.num_noise_samples = check_count(num_noise_samples, "num_noise_samples")
        self.lambda_ac, self.lambda_dm, self.p0 = float(lambda_ac), float(lambda_dm), float(p0)
        self.recoverable, self.anti_consistency = recoverable, anti_consistency
        self.export_dir = export_dir

        self.denoiser = denoiser
        if lora:
            add_lora(denoiser.unet, **lora)
        if gradient_checkpointing:
            denoiser.unet.enable_gradient_checkpointing()
        self.classifier = classifier.eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.val_means = torch.nn.ModuleDict({k: MeanMetric() for k in _LOGGED})

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval()  # frozen: no dropout, no batch-norm statistics updates
        return self

    # ------------------------------------------------------------------------------------------------

    def objective(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        """Per-image loss parts ([B] each) plus recoverable / agreement / vote-accuracy diagnostics."""
        b, m, k = x.shape[0], self.num_noise_samples, self.num_classes
        levels = torch.tensor(self.sigmas, device=x.device, dtype=x.dtype)
        sigma = levels[torch.randint(len(levels), (b,), generator=generator, device=x.device)]
        x_rep, sigma_rep = x.repeat_interleave(m, 0), sigma.repeat_interleave(m)
        delta = torch.randn(x_rep.shape, generator=generator, device=x.device, dtype=x.dtype)
        delta = delta * sigma_rep.view(-1, 1, 1, 1)
        step = self.denoiser.denoise_step(x_rep + delta, sigma_rep)
        probs = F.softmax(self.classifier(step.x0).float(), dim=-1).view(b, m, k)

        # ε implied by the noise actually added: x_t = sqrt(ᾱ_t)(2x − 1) + sqrt(1 − ᾱ_t)·ε
        x0 = 2.0 * x_rep - 1.0
        sqrt_a = self.denoiser.sqrt_alphas_cumprod[step.t].view(-1, 1, 1, 1).to(x.dtype)
        sqrt_1ma = self.denoiser.sqrt_one_minus_alphas_cumprod[step.t].view(-1, 1, 1, 1).to(x.dtype)
        eps = (step.x_t - sqrt_a * x0) / sqrt_1ma
        target = self.denoiser.target(x0, eps, step.t)
        diffusion_mse = (
            (step.model_output.float() - target.float()).pow(2).flatten(1).mean(1).view(b, m).mean(1)
        )

        with torch.no_grad():
            predictions = probs.argmax(-1)
            vote = majority_vote(predictions, k)
            if self.recoverable == "majority":
                recoverable = vote == y
            else:
                recoverable = self.cascade_prediction(x, generator) == y
            agreement = (predictions == vote[:, None]).float().mean(1)
        parts = msds_loss(probs, y, recoverable, diffusion_mse, self.lambda_ac, self.lambda_dm,
                          include_true_class=self.anti_consistency == "full")  # fmt: skip
        parts.update(recoverable=recoverable.float(), agreement=agreement, vote_accuracy=(vote == y).float())
        return parts

    @torch.no_grad()
    def cascade_prediction(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Point-estimate cascade with M copies per level: the top class of the first level (highest σ
        first) whose top class holds strictly more than ``p0 · M`` copies; -1 where no level does.

        Strictly more, not at least: the certifying cascade answers only when the *lower* confidence bound
        of the top class reaches p0, which a frequency of exactly p0 never gives (its lower bound is below
        p0); and at p0 = 1/2 "at least" would let two classes tie at M/2 and the level answer a coin flip."""
        b, m, k = x.shape[0], self.num_noise_samples, self.num_classes
        answer = torch.full((b,), -1, dtype=torch.long, device=x.device)
        x_rep = x.repeat_interleave(m, 0)
        for sigma in self.sigmas:
            noise = torch.randn(x_rep.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
            predictions = self.classifier(self.denoiser(x_rep + noise, sigma)).argmax(-1).view(b, m)
            counts = F.one_hot(predictions, k).sum(1)
            top_count, top_class = counts.max(-1)
            fires = (answer < 0) & (top_count > self.p0 * m)
            answer = torch.where(fires, top_class, answer)
        return answer

    def training_step(self, batch, batch_idx):
        parts = self.objective(batch[0], batch[1])
        for name in _LOGGED:
            self.log(f"train/{name}", parts[name].mean(), prog_bar=name in ("loss", "recoverable"))
        return parts["loss"].mean()

    def validation_step(self, batch, batch_idx):
        g = torch.Generator(device=batch[0].device).manual_seed(batch_idx)  # same noise every epoch
        parts = self.objective(batch[0], batch[1], generator=g)
        for name in _LOGGED:
            self.val_means[name].update(parts[name])

    def on_validation_epoch_end(self):
        for name, metric in self.val_means.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "loss")
            metric.reset()

    def configure_optimizers(self):
        return configure(self, self.denoiser.parameters(), self.optimizer, self.lr_scheduler)

    def on_train_end(self):
        if self.export_dir:
            export_denoiser(self.denoiser, self.export_dir, self.card_training())

    def card_training(self) -> dict:
        """What the exported model card records: method, σ set, objective and its weights, settings."""
        return {
            "method": "MSDS fine-tuning (msds finetune), classifier frozen",
            "sigmas": sorted(self.sigmas),
            "objective": "r·Brier + λ_ac·(1 − r)·AntiConsistency + λ_dm·ε-MSE",
            "weights": {"λ_ac": self.lambda_ac, "λ_dm": self.lambda_dm},
            "settings": {
                "noise copies M": self.num_noise_samples,
                "recoverable": self.recoverable,
                "anti_consistency": self.anti_consistency,
                "p0": self.p0,
                "LoRA": self.hparams.get("lora") or "none (full fine-tuning)",
            },
        }
