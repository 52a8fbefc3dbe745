"""Loss terms: MSDS diffusion fine-tuning, TRADES adversarial training, and IDC's bridge training.

MSDS ("consistent where recoverable, diverse where not"): the public sources of Jeong & Shin (NeurIPS 2023)
name the two terms — a Brier loss and an anti-consistency loss — but not their formulas or weights (see
../shared/research/msds.md §3.2). These are *our specification*; every term and weight is configurable.
Shapes: ``probs`` [B, M, K] are the frozen classifier's softmax outputs on M denoised noisy copies of each
of B images; ``labels`` [B] the true classes. Every function returns a per-image loss [B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def majority_vote(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Most frequent class along the last dim of integer ``predictions`` [B, M]; ties go to the lowest class."""
    counts = F.one_hot(predictions, num_classes).sum(dim=-2)
    return counts.argmax(dim=-1)  # argmax returns the first maximum


def brier_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i ‖p_i − onehot(y)‖²: pushes every copy to the true class with confidence (consistency)."""
    target = F.one_hot(labels, probs.shape[-1]).to(probs.dtype).unsqueeze(1)
    return (probs - target).pow(2).sum(-1).mean(-1)


def anti_consistency_loss(
    probs: torch.Tensor, labels: torch.Tensor, include_true_class: bool = False
) -> torch.Tensor:
    """Σ_{c≠y} p̄_c² with p̄ = mean_i p_i: large when the copies agree on a *wrong* class, so minimising it
    spreads them out (diversity) instead of letting the smoothed classifier be confidently wrong.
    ``include_true_class`` gives ‖p̄‖² (all classes)."""
    mean = probs.mean(dim=1)
    if not include_true_class:
        mean = mean * (1.0 - F.one_hot(labels, probs.shape[-1]).to(mean.dtype))
    return mean.pow(2).sum(-1)


def msds_loss(
    probs: torch.Tensor,
    labels: torch.Tensor,
    recoverable: torch.Tensor,
    diffusion_mse: torch.Tensor,
    lambda_ac: float = 1.0,
    lambda_dm: float = 1.0,
    include_true_class: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-image MSDS objective r·Brier + λ_ac·(1 − r)·AC + λ_dm·ε-MSE and its parts (each [B]).

    ``recoverable`` [B] is 1 where the image counts as recoverable (decided without gradient, e.g. the
    majority vote of the copies equals the label) and 0 elsewhere; ``diffusion_mse`` [B] is the ordinary
    diffusion loss of the same UNet calls.
    """
    r = recoverable.to(probs.dtype)
    brier = brier_loss(probs, labels)
    ac = anti_consistency_loss(probs, labels, include_true_class)
    total = r * brier + lambda_ac * (1.0 - r) * ac + lambda_dm * diffusion_mse
    return {"loss": total, "brier": brier, "anti_consistency": ac, "diffusion_mse": diffusion_mse}


def trades_kl(logits_natural: torch.Tensor, logits_adversarial: torch.Tensor) -> torch.Tensor:
    """KL(softmax(natural) ‖ softmax(adversarial)), summed over classes, mean over the batch (TRADES)."""
    return F.kl_div(
        F.log_softmax(logits_adversarial, dim=1), F.log_softmax(logits_natural, dim=1), reduction="batchmean",
        log_target=True,
    )  # fmt: skip


def trades_loss(
    logits_natural: torch.Tensor,
    logits_adversarial: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 5.0,
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """TRADES (Zhang et al. 2019) as trained with generated data (Wang, Pang et al. 2023):
    CE_ls(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x_adv)); the natural distribution is *not* detached
    in this outer loss. Returns the total and its two parts (scalars)."""
    natural = F.cross_entropy(logits_natural, labels, label_smoothing=label_smoothing)
    robust = trades_kl(logits_natural, logits_adversarial)
    return {"loss": natural + beta * robust, "natural": natural, "robust": robust}


# ------------------------------------------------------------------------------------------------------
# IDC (image-to-image diffusion classifier): the Brownian-bridge objective against every label image
# ------------------------------------------------------------------------------------------------------


def bridge_objective_distances(
    residual: torch.Tensor, x0: torch.Tensor, label_images: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``d_k = mean|o^(k) − ô|`` [B, K]: how far the prediction is from the objective of each class.

    For each label image ``p_k`` (in [-1, 1]) the objective the network would need if the target were ``p_k``
    is ``o^(k) = m_{t−1}·(p_k − x0) + m_t·(y_img − p_k) + √δ_t·ε = o_t + (m_t − m_{t−1})·(x0 − p_k)``
    (``m_{−1} = 0``; IDC's definition), so ``o^(y) = o_t`` and ``d_y`` is the L1 loss of the example.

    Args:
        residual: ``o_t − ô`` [B, C, H, W]; x0: the true label images [B, C, H, W] in [-1, 1];
        label_images: all K label images [K, C, H, W] in [-1, 1]; shift: ``m_t − m_{t−1}`` [B].
    """
    shift = shift.to(residual.dtype).view(-1, 1, 1, 1)
    # one label image at a time keeps memory at O(B·D) for K = 100
    return torch.stack(
        [(residual + shift * (x0 - p)).abs().flatten(1).mean(dim=1) for p in label_images], dim=1
    )


def bridge_classification_term(distances: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IDC's inter-class term per example ([B]), to be *subtracted* (times λ = 0.2) from the L1 loss:
    ``min_{k≠y} d_k`` for examples whose nearest objective (:func:`bridge_objective_distances`) is another
    class's, 0 for the others (the official definition; ties count as correct)."""
    own = distances.gather(1, y.view(-1, 1)).squeeze(1)
    others = distances.masked_fill(F.one_hot(y, distances.shape[1]).bool(), float("inf")).amin(dim=1)
    return torch.where(others < own, others, torch.zeros_like(others))
