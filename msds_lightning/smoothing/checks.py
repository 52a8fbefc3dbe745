"""Up-front argument checks shared by the certifiers.

Every check raises ``ValueError`` naming the argument and saying why, before any sample is drawn: a
certification run that dies hours in on a bad α is worse than one refused at once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


def check_sigma(sigma: float, name: str = "sigma") -> float:
    """σ is the Gaussian noise std in [0,1] pixel units; it must be a finite number > 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise ValueError(f"{name} must be a positive number (noise std in [0,1] pixel units), got {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{name} must be finite and > 0 (noise std in [0,1] pixel units), got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """α is the failure probability of the certificate; it must lie strictly between 0 and 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ValueError(f"{name} must satisfy 0 < {name} < 1 (failure probability), got {alpha!r}")
    return float(alpha)


def check_count(value: int, name: str, minimum: int = 1) -> int:
    """Sample counts and batch sizes are integers >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_num_classes(num_classes: int) -> int:
    return check_count(num_classes, "num_classes", minimum=2)


def check_images(x: torch.Tensor, name: str = "x", batched: bool = False) -> torch.Tensor:
    """Check an image tensor: [C,H,W] (or [B,C,H,W] when ``batched``), floating point, values in [0,1]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    want = 4 if batched else 3
    shape = "[B,C,H,W]" if batched else "a single image [C,H,W]"
    if x.dim() != want:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor with pixels in [0,1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    lo, hi = torch.aminmax(x.detach())
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must hold pixels in [0,1] (noise is added in [0,1] pixel units, before any "
            f"normalisation), got values in [{lo:.4g}, {hi:.4g}]"
        )
    return x


def check_certify_call(
    x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
) -> tuple[int, int, float, int]:
    """The checks of a single-image CERTIFY call; returns the normalised ``(n0, n, alpha, batch_size)``."""
    check_images(x)
    return (
        check_count(n0, "n0"),
        check_count(n, "n"),
        check_alpha(alpha),
        check_count(batch_size, "batch_size"),
    )


def check_sigmas(sigmas: float | Sequence[float]) -> tuple[float, ...]:
    """One noise level, or the distinct levels of a cascade ([0,1] pixel units, > 0), highest first (the
    visiting order). The certifiers check σ here, once, before any sample is drawn."""
    if isinstance(sigmas, numbers.Real):
        return (check_sigma(sigmas),)
    sigmas = [check_sigma(s, "sigmas") for s in sigmas]
    if not sigmas or len(set(sigmas)) != len(sigmas):
        raise ValueError(f"sigmas must be a non-empty list of distinct noise levels, got {sigmas}")
    return tuple(sorted(sigmas, reverse=True))  # the cascade visits the highest σ first


def check_p0(p0: float) -> float:
    """The cascade's threshold on the top-class probability, 0 < p0 < 1."""
    if not 0 < p0 < 1:
        raise ValueError(f"p0 must satisfy 0 < p0 < 1 (threshold on the top-class probability), got {p0!r}")
    return float(p0)
