"""Empirical robustness of the smoothed classifier g itself, next to its certificate (``msds attack-smoothed``).

A certificate says: with probability >= 1 − α, g is constant on the ℓ2 ball of radius R around x. An
attack on g gives the other side: an upper bound on g's robust accuracy. On a correct implementation the
attack can never beat the certificate (empirical robust accuracy >= certified accuracy at every radius, up
to the Monte-Carlo error of the two procedures), and the gap between them says how loose the certificate
is. This module is the library side:

* :func:`smoothed_pgd` — SmoothAdv's attack (Salman et al., NeurIPS 2019): ℓ2 PGD on the *soft* smoothed
  classifier G(x) = E_δ[softmax f(x + δ)], whose gradient is estimated by Monte Carlo with ``samples``
  draws of δ ~ N(0, σ²I) per step: the loss is −log((1/m)·Σ_j softmax f(x + δ_j)_y) (the log of the
  average, not the average of the logs, as SmoothAdv), gradients through the whole base classifier (for
  denoised smoothing: through the denoiser). For the cascade, the loss is a weighted sum of that loss over
  the levels (see :func:`level_weights`). The noise is fresh at every step, drawn per image from a stream
  keyed like the engine's, ``(seed, dataset index, ATTACK_PHASE, step)``, so it is reproducible and
  independent of the certification's and of the evaluation's noise.
* :func:`attack_smoothed` — attack a batch at each radius and *evaluate* every adversarial image with the
  real g: the engine's PREDICT (Cohen's binomial test for one σ, the cascade PREDICT for several; phases
  ``PREDICTION``/``PREDICTION_SELECTION`` of the certification seed). Only images that g predicts
  correctly when clean are attacked; an abstention counts as not robust.
* :func:`gap_table` — per radius: certified accuracy (from a certification TSV of the same images),
  empirical robust accuracy, their gap and the images that contradict the certificate.

Units: pixels in [0, 1]; σ, ε and radii are ℓ2 norms in [0, 1] pixel units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..smoothing import (
    ABSTAIN,
    EMPIRICAL_PREDICTION,
    ESTIMATION,
    PREDICTION,
    PREDICTION_SELECTION,
    SELECTION,
    Engine,
    noise_seed,
)
from .attacks import _check_pgd_arguments, _per_example_l2, _project, evaluation_mode

ATTACK_PHASE = 5
"""The attack's noise phase: its stream key is ``(seed, index, ATTACK_PHASE, step, 0)``, five words where the
engine's keys (``(seed, index, phase, block)``) have four, so the two never share a stream whatever the seeds."""
ENGINE_PHASES = (SELECTION, ESTIMATION, PREDICTION, PREDICTION_SELECTION, EMPIRICAL_PREDICTION)

CASCADE_TARGETS = ("sum", "deciding")

BaseClassifier = Callable[[torch.Tensor, float], torch.Tensor]
"""``f(x_noisy, sigma) -> logits [B, K]`` (the engine's base classifier: denoise at σ then classify, or
``IgnoreSigma(classifier)``)."""


def attack_noise(x: torch.Tensor, indices: Sequence[int], samples: int, seed: int, step: int) -> torch.Tensor:
    """Standard normal noise [B, samples, C, H, W] for PGD step ``step`` of the images ``x`` [B, C, H, W]:
    image i's from a generator seeded with ``noise_seed(seed, indices[i], (ATTACK_PHASE, step), 0)`` on
    ``x``'s device (so it depends on the image's dataset index, not on its batch-mates)."""
    generator = torch.Generator(device=x.device)
    draws = []
    for index in indices:
        generator.manual_seed(noise_seed(seed, int(index), (ATTACK_PHASE, step), 0))
        draws.append(
            torch.randn((samples, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        )
    return torch.stack(draws)


def soft_log_probability(
    base_classifier: BaseClassifier, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, sigma: float
) -> torch.Tensor:
    """log G_y(x) [B] for the soft smoothed classifier at σ, estimated with the standard normal ``noise``
    [B, m, C, H, W]: ``log((1/m)·Σ_j softmax(f(x + σ·δ_j, σ))_y)``, computed as a logsumexp of log-softmaxes
    (stable where a class's probability underflows). Differentiable in ``x``."""
    batch, samples = noise.shape[:2]
    noisy = (x.unsqueeze(1) + sigma * noise).flatten(0, 1)
    log_p = torch.log_softmax(base_classifier(noisy, sigma).float(), dim=1).view(batch, samples, -1)
    true = log_p.gather(2, y.view(-1, 1, 1).expand(batch, samples, 1)).squeeze(2)
    return torch.logsumexp(true, dim=1) - math.log(samples)


def smoothed_pgd(
    base_classifier: BaseClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Sequence[int],
    *,
    sigmas: float | Sequence[float],
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    samples: int = 16,
    seed: int = 0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """SmoothAdv's ℓ2 PGD on the soft smoothed classifier (Salman et al. 2019): maximise
    ``−Σ_k w_k·log G^{σ_k}_y(x')`` over ``‖x' − x‖₂ <= eps``, x' in [0, 1].

    Each step draws ``samples`` fresh standard normal δ per image (:func:`attack_noise`, step t = 0, 1, ...),
    shared by the levels (δ·σ_k at level k, common random numbers as the engine draws them), takes the
    gradient of the loss w.r.t. x' through ``base_classifier`` and moves ``step_size`` along its
    per-example ℓ2-normalised direction, then projects onto [0, 1] and the ball (clip, then rescale: the
    order of SmoothAdv's and :func:`~.attacks.pgd`'s ℓ2 projection). The attack starts at x (SmoothAdv's
    PGD has no random start; the Monte-Carlo noise already randomises the path). An image whose estimated
    gradient is exactly 0 does not move at that step.

    Args:
        base_classifier: ``f(x_noisy, sigma) -> logits``; gradients must flow (no ``no_grad`` inside). Its
            mode is used as it is (call it in eval mode) and parameters get no ``.grad``.
        x: clean images [B, C, H, W] in [0, 1]; y: labels [B] (int64); indices: their dataset indices (keys
            of the noise streams).
        sigmas: σ of g, or the cascade's levels (highest first, as the engine orders them).
        eps: ℓ2 radius in [0, 1] pixel units (>= 0; 0 returns a copy of x).
        steps: PGD steps (>= 1); step_size: default ``2·eps/steps`` (SmoothAdv's and DM-Improves-AT's ℓ2 rate).
        samples: m, noise draws per image and step (>= 1).
        seed: attack seed (with the index and step, the key of the noise).
        weights: [B, L] per-image weights of the L levels' losses (default: all 1, the sum over levels;
            :func:`level_weights`).

    Returns:
        ``x_adv``, detached, same shape as ``x``.
    """
    _check_pgd_arguments(eps, "l2", steps, step_size)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    sigmas = [float(sigmas)] if isinstance(sigmas, int | float) else [float(s) for s in sigmas]
    indices = [int(i) for i in indices]
    if len(indices) != len(x):
        raise ValueError(f"indices has {len(indices)} entries for {len(x)} images")
    if weights is None:
        weights = x.new_ones(len(x), len(sigmas))
    if tuple(weights.shape) != (len(x), len(sigmas)):
        raise ValueError(f"weights has shape {tuple(weights.shape)}, expected ({len(x)}, {len(sigmas)})")
    x = x.detach()
    eps = float(eps)
    if eps == 0:
        return x.clone()
    step_size = 2.0 * eps / steps if step_size is None else float(step_size)
    x_adv = x.clone()
    with torch.enable_grad():
        for step in range(steps):
            x_adv.requires_grad_(True)
            noise = attack_noise(x, indices, samples, seed, step)
            loss = x.new_zeros(())
            for level, sigma in enumerate(sigmas):
                loss = (
                    loss
                    - (
                        weights[:, level] * soft_log_probability(base_classifier, x_adv, y, noise, sigma)
                    ).sum()
                )
            grad = torch.autograd.grad(loss, x_adv)[0]
            x_adv = x_adv.detach() + step_size * grad / _per_example_l2(grad).clamp_min(1e-12)
            x_adv = _project(x_adv, x, eps, "l2")
    return x_adv.detach()


def level_weights(target: str, levels: int, deciding: Sequence[int]) -> torch.Tensor:
    """[B, levels] weights of the cascade's levels in :func:`smoothed_pgd`'s loss.

    ``"sum"``: every level weighs 1. The cascade answers y at x' only if, top down, the first level whose
    top class is above p0 has top class y; lowering y's soft probability at *every* level attacks both
    ways of breaking it (the deciding level drops below p0 and a lower level answers otherwise or
    abstains, or a higher level switches on with another class). ``"deciding"``: only the level that
    answered for the clean image (``deciding[i]``, the engine's ``Prediction.level``) — the cheaper,
    greedier surrogate that ignores the other levels. For one σ both are the plain SmoothAdv loss."""
    if target not in CASCADE_TARGETS:
        raise ValueError(f"cascade target must be one of {CASCADE_TARGETS}, got {target!r}")
    if target == "sum" or levels == 1:
        return torch.ones(len(deciding), levels)
    if any(not 0 <= int(k) < levels for k in deciding):
        raise ValueError(f"deciding levels must lie in [0, {levels}), got {list(deciding)}")
    return torch.nn.functional.one_hot(torch.as_tensor([int(k) for k in deciding]), levels).float()


@dataclass(frozen=True)
class SmoothedAttackSettings:
    """The attack and its evaluation (``msds attack-smoothed``'s flags of the same names).

    ``radii``: the ε (ℓ2, [0, 1] pixel units) attacked, one independent attack each; ``steps``,
    ``step_size`` (``None``: 2·ε/steps), ``samples`` (m) and ``seed``: :func:`smoothed_pgd`;
    ``cascade_target``: :func:`level_weights`; ``predict_n``, ``predict_alpha``, ``predict_n0``: the PREDICT
    that evaluates g on the clean and the adversarial images (``predict_n0``: the cascade's selection draws)."""

    radii: tuple[float, ...]
    predict_n: int
    predict_alpha: float
    predict_n0: int = 100
    steps: int = 20
    step_size: float | None = None
    samples: int = 16
    seed: int = 0
    cascade_target: str = "sum"


def columns(radii: Sequence[float]) -> tuple[str, ...]:
    """Header of the result file: ``idx label clean_pred clean_correct`` then, per ε, ``eps{ε}_pred
    eps{ε}_correct`` (e.g. ``eps0.25_pred``). ``*_pred`` is g's PREDICT answer (−1: abstain); on an image not
    attacked (g wrong or abstaining when clean) it is the clean answer. ``*_correct``: 1 if g answers the
    label on the clean image *and* on the attacked one. All cells are integers (the schema of
    :func:`~.evaluation.row_problem`)."""
    names = [prefix(r) for r in radii]
    return ("idx", "label", "clean_pred", "clean_correct",
            *(c for n in names for c in (f"{n}_pred", f"{n}_correct")))  # fmt: skip


def prefix(radius: float) -> str:
    return f"eps{float(radius):g}"


def attack_smoothed(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: Sequence[int],
    settings: SmoothedAttackSettings,
    images_per_forward: int | None = None,
) -> list[dict[str, int]]:
    """Attack a batch at every radius and evaluate with g; one row per image (:func:`columns`).

    ``engine`` is the certification's :class:`~msds_lightning.smoothing.Engine` (its base classifier, σ,
    rule, p0 and seed): clean and adversarial images are PREDICTed with it. ``images_per_forward`` bounds
    the images attacked together (each brings ``samples`` noisy copies per level to one forward; default
    the engine's batch size // samples)."""
    indices = [int(i) for i in indices]
    y = y.to(x.device)
    base = engine.base_classifier
    predict = lambda images, idx: engine.predict_with_levels(  # noqa: E731
        images, idx, settings.predict_n, settings.predict_alpha, settings.predict_n0
    )
    clean = predict(x, indices)
    labels = y.tolist()
    rows = [{"idx": i, "label": label, "clean_pred": p.prediction, "clean_correct": int(p.prediction == label)}
            for i, label, p in zip(indices, labels, clean)]  # fmt: skip
    attacked = [k for k, row in enumerate(rows) if row["clean_correct"]]
    chunk = images_per_forward or max(1, (engine.batch_size or 1000) // settings.samples)
    for radius in settings.radii:
        name = prefix(radius)
        for row in rows:
            row[f"{name}_pred"], row[f"{name}_correct"] = row["clean_pred"], 0
        with evaluation_mode(base, freeze_parameters=isinstance(base, torch.nn.Module)):
            for start in range(0, len(attacked), chunk):
                part = attacked[start : start + chunk]
                idx = [indices[k] for k in part]
                weights = level_weights(
                    settings.cascade_target, len(engine.sigmas), [max(clean[k].level, 0) for k in part]
                ).to(x.device)
                x_adv = smoothed_pgd(
                    base, x[part], y[part], idx, sigmas=engine.sigmas, eps=radius, steps=settings.steps,
                    step_size=settings.step_size, samples=settings.samples, seed=settings.seed, weights=weights,
                )  # fmt: skip
                for k, answer in zip(part, predict(x_adv, idx)):
                    rows[k][f"{name}_pred"] = answer.prediction
                    rows[k][f"{name}_correct"] = int(answer.prediction == labels[k])
    return rows


# ------------------------------------------------------------------------------------------------------
# Certified vs empirical
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GapRow:
    """One radius of :func:`gap_table`: certified and empirical robust accuracy over ``images``, their
    ``gap`` (empirical − certified; >= 0 on a correct implementation, up to Monte-Carlo error),
    ``abstained`` (images certified correct at >= ε on which g abstained after an attack: what a negative gap
    is made of; an attack cannot make a sound PREDICT answer wrongly inside a certified ball, but
    near its edge g's top class can be pushed close to 1/2, where PREDICT abstains) and ``violations``
    (images certified correct at >= ε whose adversarial image g answers with *another class*: each one
    contradicts the certificate, which happens with probability at most about α + the PREDICT's α)."""

    radius: float
    certified: float
    empirical: float
    images: int
    abstained: int
    violations: int

    @property
    def gap(self) -> float:
        return self.empirical - self.certified


def gap_table(rows: Sequence[dict], certified, radii: Sequence[float]) -> list[GapRow]:
    """Per radius of ``radii`` (each attacked, i.e. with ``eps{r}_*`` columns in ``rows``): certified
    accuracy from ``certified`` (a :class:`~msds_lightning.results.Results` of a certification of the same
    images: its rows are matched to ``rows`` by ``idx``, radius read as written), empirical robust accuracy
    from ``rows`` (attack rows, :func:`columns`): an image is robust at ε if g answered its label after the
    attack at *every* attacked radius <= ε (the attacks at the radii are independent; an adversarial example
    found at r lies in every larger ball, so the accuracy is non-increasing in ε). ``abstained`` and
    ``violations`` count in the same way (any attacked radius <= ε). Raises ``ValueError`` when an attacked image has no
    certification row or another label."""
    from ..results.analysis import certified_accuracy

    rows = sorted(rows, key=lambda r: int(r["idx"]))
    idx = np.array([int(r["idx"]) for r in rows], dtype=np.int64)
    position = {int(i): k for k, i in enumerate(certified.idx)}
    missing = [int(i) for i in idx if int(i) not in position]
    if missing:
        raise ValueError(f"{certified.name} has no certification row for {len(missing)} attacked image(s), e.g. "
                         f"idx {missing[:5]}: certify the same images (same data, skip and max) first")  # fmt: skip
    order = np.array([position[int(i)] for i in idx], dtype=np.int64)
    radius, correct = certified.radius[order], certified.correct[order]
    label = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    if np.any(certified.label[order] != label):
        bad = int(idx[np.flatnonzero(certified.label[order] != label)[0]])
        raise ValueError(
            f"{certified.name}: idx {bad} has another label than the attacked image: not the same data"
        )
    certified_acc = certified_accuracy(radius, correct, radii) if len(rows) else np.full(len(radii), np.nan)
    attacked = sorted(set(float(r) for r in radii))
    robust = np.ones(len(rows), dtype=bool)
    wrong = np.zeros(len(rows), dtype=bool)
    cumulative = {}
    for (
        r
    ) in attacked:  # an image broken at r is broken at every larger radius: its example lies in that ball too
        name = prefix(r)
        answer = np.array([int(row[f"{name}_pred"]) for row in rows], dtype=np.int64)
        robust &= np.array([int(row[f"{name}_correct"]) for row in rows], dtype=bool)
        wrong |= (answer != ABSTAIN) & (answer != label)
        cumulative[r] = (robust.copy(), wrong.copy())
    table = []
    for r, cert in zip(radii, certified_acc):
        robust_r, wrong_r = cumulative[float(r)]
        inside = (correct == 1) & (radius >= r)
        table.append(GapRow(
            radius=float(r), certified=float(cert), empirical=float(robust_r.mean()) if len(rows) else float("nan"),
            images=len(rows), abstained=int(np.sum(inside & ~robust_r & ~wrong_r)),
            violations=int(np.sum(inside & wrong_r)),
        ))  # fmt: skip
    return table


GAP_COLUMNS = ("radius", "certified", "empirical", "gap", "certified_abstained", "violations", "images")


def format_gap_markdown(table: Sequence[GapRow], title: str = "") -> str:
    """The gap table in markdown (accuracies in %, gap in points)."""
    lines = [title, ""] if title else []
    lines += ["| radius | certified (%) | empirical, attack on g (%) | gap (points) | certified, g abstains "
              "after attack | certified, g answers another class | images |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in table:
        lines.append(f"| {row.radius:g} | {100 * row.certified:.1f} | {100 * row.empirical:.1f} | "
                     f"{100 * row.gap:+.1f} | {row.abstained} | {row.violations} | {row.images} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def format_gap_csv(table: Sequence[GapRow]) -> str:
    """The gap table as CSV (:data:`GAP_COLUMNS`; accuracies and gap as fractions)."""
    lines = [",".join(GAP_COLUMNS)]
    for row in table:
        lines.append(f"{row.radius:g},{row.certified:.6f},{row.empirical:.6f},{row.gap:.6f},{row.abstained},"
                     f"{row.violations},{row.images}")  # fmt: skip
    return "\n".join(lines) + "\n"
