"""Device selection shared by the plain (argparse) commands."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → CUDA if available, else CPU; anything else as ``torch.device``, refusing a
    CUDA device on a machine without one (a clear error instead of a failure deep in a run)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available")
    return resolved
