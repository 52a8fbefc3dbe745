"""Empirical robustness: PGD (ℓ∞/ℓ2) for adversarial training and evaluation, AutoAttack for evaluation.

Pure PyTorch (no Lightning). Conventions, as in DM-Improves-AT (Wang et al., ICML 2023; see
../shared/research/others.md part B):

* pixels in [0, 1]; ``eps`` in [0, 1] pixel units (ℓ∞ 8/255, ℓ2 128/255); any normalization is part of the
  model (e.g. :class:`msds_lightning.models.Classifier`);
* adversarial examples stay in the per-example ε-ball *and* in [0, 1] (the inputs must lie in [0, 1]);
* :func:`pgd` never changes ``model.training`` and never writes gradients into the parameters
  (``torch.autograd.grad`` w.r.t. the input only); it runs under ``torch.enable_grad`` so it works from
  ``torch.no_grad`` code too;
* inside TRADES the attack runs on the model in ``train()`` mode with BatchNorm running statistics frozen
  (:func:`frozen_batchnorm`): batch statistics are used, the running buffers are not touched;
* evaluation attacks run the model in ``eval()`` mode (:func:`autoattack` and :func:`robust_accuracy` switch
  to it and restore every module's mode afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
AA_VERSIONS = ("standard", "plus", "rand")
AA_ITERATIONS = 100  # fra31/auto-attack: n_iter of APGD-CE/-DLR, APGD-T and FAB(-T)
AA_TARGET_CLASSES = 9  # fra31/auto-attack: APGD-T and FAB-T target the 9 most likely other classes
_TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}
# Least number of classes each AutoAttack version handles: APGD-T's targeted DLR loss reads the 4th-largest
# logit; the untargeted DLR loss of "rand" reads the 3rd-largest.
_AA_MIN_CLASSES = {"standard": 4, "plus": 4, "rand": 3}

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""An attack as :func:`robust_accuracy` takes it: ``attack(x, y) -> x_adv`` (same shape, detached)."""


# ------------------------------------------------------------------------------------------------------
# Model state helpers
# ------------------------------------------------------------------------------------------------------


@contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """While inside, no BatchNorm layer of ``model`` updates its running statistics.

    Every ``_BatchNorm`` (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, timm's ``BatchNormAct2d``) gets
    ``track_running_stats = False`` and keeps its train/eval mode: in ``train()`` mode it normalizes with the
    batch's statistics and leaves ``running_mean``/``running_var``/``num_batches_tracked`` alone (the
    DM-Improves-AT behaviour while generating TRADES adversarial examples); in ``eval()`` mode it keeps using
    the running statistics. The previous flags are restored on exit, also when an exception is raised.
    Yields ``model``.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in layers]
    try:
        for m in layers:
            m.track_running_stats = False
        yield model
    finally:
        for m, flag in zip(layers, saved):
            m.track_running_stats = flag


@contextmanager
def evaluation_mode(model: nn.Module, freeze_parameters: bool = False) -> Iterator[nn.Module]:
    """``model.eval()`` inside; every module's own ``training`` flag (and, with ``freeze_parameters``, every
    parameter's ``requires_grad``) restored exactly on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()] if freeze_parameters else []
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------------------
# PGD
# ------------------------------------------------------------------------------------------------------


def cw_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini–Wagner margin ``max_{j≠y} z_j − z_y`` per example ([B]); positive means misclassified."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def _loss_function(loss: str | Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if callable(loss):
        return loss
    if loss == "ce":
        # Summed, not averaged: per-example gradients do not shrink with the batch size (the step direction
        # is normalized per example, so this changes nothing else).
        return lambda logits, y: F.cross_entropy(logits, y, reduction="sum")
    if loss == "cw":
        return lambda logits, y: cw_loss(logits, y).sum()
    raise ValueError(
        f"loss must be one of {LOSSES} or a callable loss(logits_adv, y) -> scalar, got {loss!r}"
    )


def _check_eps(eps: float) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(eps, bool) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"eps must be a finite number >= 0 (in [0, 1] pixel units), got {eps!r}")
    return value


def _check_pgd_arguments(eps: float, norm: str, steps: int, step_size: float | None) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    _check_eps(eps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0 (or None for the default), got {step_size!r}")


def _random(kind: str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``torch.rand``/``torch.randn`` shaped like ``like``, drawn on the generator's device, moved to ``like``'s."""
    device = like.device if generator is None else generator.device
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _per_example_l2(t: torch.Tensor) -> torch.Tensor:
    """‖t_i‖₂ shaped [B, 1, ..., 1] for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Into [0, 1] and the ε-ball around ``x``: ℓ∞ clips (exact projection onto box ∩ ball); ℓ2 clips to
    [0, 1] and then rescales δ to ‖δ‖₂ ≤ ε (DM-Improves-AT's order; rescaling a δ with x + δ in the box
    towards 0 keeps it in the box, since x is)."""
    if norm == "linf":
        return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    delta = x_adv.clamp(0.0, 1.0) - x
    factor = (eps / _per_example_l2(delta).clamp_min(1e-12)).clamp_max(1.0)
    return (x + delta * factor).clamp_(0.0, 1.0)  # the clamp only absorbs rounding


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "ce",
    random_start: bool | str = True,
    generator: torch.Generator | None = None,
    eot_samples: int = 1,
) -> torch.Tensor:
    """Projected gradient ascent of ``loss`` within the per-example ε-ball (ℓ∞ or ℓ2) and [0, 1].

    With ``eot_samples > 1`` this is EOT-PGD (expectation over transformation, Athalye et al. 2018): each
    step follows the sum of the loss gradients of ``eot_samples`` forward passes, the attack to use on a
    stochastic model (IDC's sampler, DiffPure), whose single-sample gradient is one noisy draw.

    Args:
        model: maps [B, C, H, W] pixels in [0, 1] to [B, K] logits. Its train/eval mode is used as it is
            and left unchanged; wrap the call in :func:`frozen_batchnorm` to attack a model in train mode
            without touching BatchNorm running statistics (TRADES).
        x: clean images in [0, 1] (the result lies in [0, 1] and within ``eps`` of ``x``).
        y: labels [B] (int64), passed to ``loss``.
        eps: radius in [0, 1] pixel units (>= 0; 0 returns a copy of ``x``).
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations (>= 1).
        step_size: ℓ∞: size of the sign-gradient step (default ``2.5 * eps / steps``: enough to cross the ball;
            2/255 at ε = 8/255 and 10 steps, DM-Improves-AT's TRADES setting); ℓ2: length of the step along the per-example ℓ2-normalised
            gradient (default ``2 * eps / steps``, DM-Improves-AT's learning rate for ℓ2).
        loss: maximised objective: ``"ce"`` (cross-entropy), ``"cw"`` (margin ``max_{j≠y} z_j − z_y``), or a
            callable ``loss(logits_adv, y) -> scalar`` (e.g. TRADES' KL to the clean prediction). Built-in
            losses are summed over the batch; examples do not interact unless the model couples them
            (BatchNorm with batch statistics).
        random_start: ``True``: ℓ∞ starts uniformly in the ε-cube (Madry; DM-Improves-AT); ℓ2 starts at the
            small Gaussian ``0.001 · N(0, I)`` (DM-Improves-AT's ℓ2 initialisation: almost the clean image,
            so ℓ2 restarts hardly differ). ``"ball"``: uniform in the ε-ball for either norm (for ℓ2:
            a uniform direction and radius ``eps · U^(1/d)``), the start to use for evaluation restarts.
            ``False``: start at ``x``. Every start is projected like a step.
        generator: random source of the start and of the random directions replacing zero ℓ2 gradients
            (``None``: torch's global generator). May live on another device than ``x``. A stochastic
            model draws its own randomness (torch's global generator for IDC).
        eot_samples: forward/backward passes per step whose gradients are summed (>= 1; 1: plain PGD).

    Returns:
        ``x_adv``, detached, same shape and dtype as ``x``.

    Raises:
        ValueError: bad ``norm``, ``eps``, ``steps``, ``step_size``, ``loss``, ``random_start`` or
            ``eot_samples``.
    """
    _check_pgd_arguments(eps, norm, steps, step_size)
    if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
        raise ValueError(f"eot_samples must be an integer >= 1, got {eot_samples!r}")
    eps = float(eps)
    loss_fn = _loss_function(loss)
    if random_start not in (True, False, "ball"):
        raise ValueError(f"random_start must be True, False or 'ball', got {random_start!r}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    if step_size is None:
        step_size = (2.5 if norm == "linf" else 2.0) * eps / steps

    if random_start is False:
        x_adv = x.clone()
    elif norm == "linf":
        x_adv = _project(x + (2 * _random("uniform", x, generator) - 1) * eps, x, eps, norm)
    elif random_start == "ball":
        direction = _random("normal", x, generator)
        direction = direction / _per_example_l2(direction).clamp_min(1e-12)
        u = _random("uniform", x.new_empty(len(x), *([1] * (x.ndim - 1))), generator)
        x_adv = _project(x + direction * eps * u.pow(1.0 / x[0].numel()), x, eps, norm)
    else:
        x_adv = _project(x + 0.001 * _random("normal", x, generator), x, eps, norm)

    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            grad = torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)[0]
            for _ in range(eot_samples - 1):
                grad = grad + torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)[0]
            x_adv = x_adv.detach()
            if norm == "linf":
                x_adv = x_adv + step_size * grad.sign()
            else:
                # DM-Improves-AT: a random direction where the gradient vanishes (drawn every step, so no
                # host-device synchronisation is needed to find out whether one is needed)
                noise = _random("normal", grad, generator)
                grad = torch.where(_per_example_l2(grad) == 0, noise, grad)
                grad_norm = _per_example_l2(grad)
                x_adv = x_adv + step_size * grad / grad_norm.clamp_min(1e-12)
            x_adv = _project(x_adv, x, eps, norm)
    return x_adv.detach()


def pgd_with_restarts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, restarts: int = 1, **pgd_kwargs
) -> torch.Tensor:
    """Worst case of ``restarts`` :func:`pgd` runs: each restart attacks only the examples still classified
    as ``y``, and an example keeps the first adversarial example that fools the model (else the last run's).

    Restarts after the first use ``random_start="ball"`` for ℓ2 (DM-Improves-AT's tiny Gaussian start would
    make them almost identical) unless ``random_start`` is given. Evaluation helper: call it with the model
    in eval mode (the success check calls the model without gradient).
    """
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    x_best = pgd(model, x, y, **pgd_kwargs)
    explicit_start = "random_start" in pgd_kwargs
    for _ in range(restarts - 1):
        with torch.no_grad():
            alive = (model(x_best).argmax(dim=1) == y).nonzero().flatten()
        if len(alive) == 0:
            break
        kwargs = dict(pgd_kwargs)
        if not explicit_start and kwargs.get("norm", "linf") == "l2":
            kwargs["random_start"] = "ball"
        x_best[alive] = pgd(model, x[alive], y[alive], **kwargs)
    return x_best


# ------------------------------------------------------------------------------------------------------
# AutoAttack (torchattacks)
# ------------------------------------------------------------------------------------------------------


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 128,
    num_classes: int | None = None,
) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through ``torchattacks.AutoAttack`` (torchattacks 3.5.1).

    ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square (5,000 queries) one after the other, each
    on the examples the previous ones did not break; ``"plus"`` and ``"rand"`` as in torchattacks. The
    sub-attacks are set to the reference implementation's (fra31/auto-attack, which DM-Improves-AT uses)
    settings where torchattacks 3.5.1 differs: 100 iterations for APGD/APGD-T/FAB (torchattacks: 10),
    ``min(9, num_classes - 1)`` target classes for APGD-T/FAB-T (torchattacks: all others) and Square
    without the rescaled schedule. The model
    runs in ``eval()`` mode with its parameters' ``requires_grad`` off (FAB calls ``backward``; no gradient
    reaches the parameters); every module's mode and every ``requires_grad`` flag are restored afterwards.
    torch's global RNG (which torchattacks reseeds with ``seed``) is restored too.

    Args:
        model: [0, 1] pixels → logits.
        x, y: images in [0, 1] and labels [B].
        eps: radius in [0, 1] pixel units (0 returns a copy of ``x``).
        norm: ``"linf"`` or ``"l2"`` (torchattacks' ``"Linf"``/``"L2"``).
        version: ``"standard"``, ``"plus"`` or ``"rand"``.
        seed: torchattacks' seed (fixed starting points; the same seed gives the same result).
        batch_size: examples per torchattacks call.
        num_classes: logits per example (at least 4 for "standard"/"plus", 3 for "rand"); ``None`` reads
            it from one forward pass.

    Returns:
        ``x_adv`` (detached; an example no attack broke is returned unchanged).
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if version not in AA_VERSIONS:
        raise ValueError(f"version must be one of {AA_VERSIONS}, got {version!r}")
    eps = _check_eps(eps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x = x.detach()
    if eps == 0 or len(x) == 0:
        return x.clone()
    import torchattacks  # lazy: only evaluation needs it

    devices = [x.device] if x.device.type == "cuda" else []
    with evaluation_mode(model, freeze_parameters=True), torch.random.fork_rng(devices=devices):
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(model(x[:1]).shape[1])
        if num_classes < _AA_MIN_CLASSES[version]:
            raise ValueError(
                f"AutoAttack version {version!r} needs at least {_AA_MIN_CLASSES[version]} classes "
                f"(targeted/DLR losses), got {num_classes}"
            )
        attack = torchattacks.AutoAttack(
            model, norm=_TORCHATTACKS_NORMS[norm], eps=float(eps), version=version,
            n_classes=num_classes, seed=int(seed),
        )  # fmt: skip
        attack.set_device(x.device)
        _match_reference_autoattack(attack, num_classes)
        chunks = [attack(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).detach().to(x.dtype)


def _match_reference_autoattack(attack, num_classes: int) -> None:
    """Set torchattacks 3.5.1's AutoAttack sub-attacks to the reference (fra31/auto-attack) settings.

    torchattacks builds APGD, APGD-T and FAB with its own default of 10 iterations and targets all
    ``n_classes - 1`` other classes; the reference runs 100 iterations, targets the top 9 other classes
    (``n_target_classes = 9``) and runs Square with ``resc_schedule=False``.
    """
    import torchattacks

    for sub in attack._autoattack.attacks:
        if isinstance(sub, torchattacks.APGD | torchattacks.APGDT | torchattacks.FAB):
            sub.steps = AA_ITERATIONS
        if isinstance(sub, torchattacks.APGDT | torchattacks.FAB):
            sub.n_target_classes = min(AA_TARGET_CLASSES, num_classes - 1)
        if isinstance(sub, torchattacks.Square):
            sub.rescale_schedule = False
