"""Certified accuracy as a torchmetrics ``Metric``, exact under DDP (also with a sampler's padded duplicates).

Same definitions as :mod:`msds_lightning.results.analysis` (Cohen et al.'s ``analyze.py``): certified accuracy at r is
the fraction of rows that are correct with ``radius >= r`` (inclusive), over **all** rows, abstentions (radius
0, incorrect) included; ACR is the mean of ``radius * correct``. Radii are l2 distances in [0, 1] pixel units.

Why per-sample ``cat`` states rather than a hit count per radius: ``DistributedSampler`` pads the last batch
with repeated samples so every rank gets as many; summed counts would count those twice. Here every row
carries its dataset index, the states are gathered whole, and :meth:`CertifiedAccuracy.compute` keeps one
row per index, so the result equals a single-process run on the same rows. (Memory: 17 bytes per row, trivial
for a test set of 10,000 images.)
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isfinite
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .results.analysis import average_certified_radius, certified_accuracy

# dtype of each per-row state. float64 radii compare with the radius grid exactly as numpy does in
# msds_lightning.results.analysis; integer "correct" avoids bool, which not every collective backend can gather.
_STATE_DTYPES = {"index": torch.int64, "radius": torch.float64, "correct": torch.int64}


def _check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(r) for r in radii)
    except (TypeError, ValueError) as err:
        raise ValueError(f"radii must be a sequence of numbers, got {radii!r}") from err
    if not values:
        raise ValueError("radii must not be empty")
    if not all(isfinite(r) and r >= 0 for r in values):
        raise ValueError(f"radii must be finite and >= 0, got {values}")
    return values


def certified_accuracy_at_radii(radius: Tensor, correct: Tensor, radii: Sequence[float] | Tensor) -> Tensor:
    """Certified accuracy at each of ``radii``: the fraction of rows with ``correct`` and ``radius >= r``.

    :func:`msds_lightning.results.analysis.certified_accuracy` (the project's one definition) on tensors:

    Args:
        radius: float [N], certified l2 radius of each row in [0, 1] pixel units (0 for abstentions).
        correct: [N], 0/1 or bool: whether the row's prediction is the label (abstentions: 0).
        radii: the radius grid r (any length), compared in float64.

    Returns:
        float64 [len(radii)] on ``radius``'s device; all NaN when N = 0.
    """
    radius = torch.as_tensor(radius).to(torch.float64)
    correct = torch.as_tensor(correct, device=radius.device).to(torch.bool)
    if radius.ndim != 1 or correct.shape != radius.shape:
        raise ValueError(
            f"radius and correct must be 1-D of the same length, got {tuple(radius.shape)} and "
            f"{tuple(correct.shape)}"
        )
    grid = torch.as_tensor(radii, dtype=torch.float64).reshape(-1).tolist()
    accuracy = certified_accuracy(radius.cpu().numpy(), correct.cpu().numpy(), grid)  # the one definition
    return torch.from_numpy(accuracy).to(device=radius.device, dtype=torch.float64)


class CertifiedAccuracy(Metric):
    """Certified accuracy at fixed radii, ACR and row count, exact across processes.

    ``update(index, radius, correct)`` takes 1-D tensors of one batch: ``index`` the dataset indices (integers,
    as yielded by the data modules), ``radius`` the certified l2 radii in [0, 1] pixel units (>= 0, finite; 0 for
    abstentions), ``correct`` 0/1 or bool. ``compute()`` gathers every process's rows, keeps one row per index
    (a repeated index must repeat the same radius and correctness, else ``ValueError``: e.g. two data sets
    logged into one metric), and returns a dict:

    * ``accuracy``: float64 [len(radii)], fraction of rows with ``correct`` and ``radius >= r`` at each r,
      over all rows, abstentions included (:func:`msds_lightning.results.analysis.certified_accuracy`, bit for bit);
    * ``acr``: float64 scalar, mean of ``radius * correct`` (average certified radius);
    * ``count``: int64 scalar, number of distinct rows.

    With no rows, ``accuracy`` and ``acr`` are NaN and ``count`` 0.

    Args:
        radii: the radius grid r, finite and >= 0 (e.g. ``msds_lightning.results.analysis.CIFAR10_RADII``). Kept as
            the float64 non-persistent buffer ``radii`` (moves with ``.to(device)``, not synced or saved);
            comparisons use the exact float64 values given here, whatever dtype casts the module undergoes.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ``compute_on_cpu``, …).

    Note:
        Rows are matched by index alone: do not feed two splits into one metric. Compared with ``msds analyze``
        on a written result file, ties at a grid radius can differ, because the file stores radii rounded to
        3 significant digits while the metric sees the unrounded values.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, radii: Sequence[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._radii = _check_radii(radii)
        self.register_buffer("radii", torch.tensor(self._radii, dtype=torch.float64), persistent=False)
        for name in _STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, radius: Tensor, correct: Tensor) -> None:
        """Add one batch of rows (see the class docstring for the arguments)."""
        index = torch.as_tensor(index, device=self.device)
        radius = torch.as_tensor(radius, device=self.device)
        correct = torch.as_tensor(correct, device=self.device)
        for name, value in (("index", index), ("radius", radius), ("correct", correct)):
            if value.ndim != 1:
                raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
        if not (len(index) == len(radius) == len(correct)):
            raise ValueError(
                f"index, radius and correct must have the same length, got {len(index)}, {len(radius)}, "
                f"{len(correct)}"
            )
        if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
            raise ValueError(f"index must hold integers, got dtype {index.dtype}")
        if radius.is_complex() or not bool(torch.isfinite(radius).all() and (radius >= 0).all()):
            raise ValueError("radius must be finite and >= 0 (0 for abstentions)")
        if correct.dtype != torch.bool and not bool(((correct == 0) | (correct == 1)).all()):
            raise ValueError("correct must be bool or hold only 0 and 1")
        self.index.append(index.to(_STATE_DTYPES["index"]))
        self.radius.append(radius.to(_STATE_DTYPES["radius"]))
        self.correct.append(correct.to(_STATE_DTYPES["correct"]))

    def sync(self, *args: Any, **kwargs: Any) -> None:
        # torchmetrics substitutes an empty tensor of the metric's default float dtype for an empty list state
        # before gathering, which would mismatch the int64/float64 tensors of ranks that have rows. Give a
        # rank without rows empty tensors of the right dtypes instead (a no-op for the values).
        for name, dtype in _STATE_DTYPES.items():
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.zeros(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)

    def rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """This process's rows so far, de-duplicated and sorted by index: ``(index, radius, correct)``.

        Not synced across processes (``compute`` is); raises ``ValueError`` on a conflicting duplicate.
        """
        index, radius, correct = (self._cat(name) for name in _STATE_DTYPES)
        order = torch.argsort(index, stable=True)
        index, radius, correct = index[order], radius[order], correct[order]
        if index.numel() > 1:
            repeat = index[1:] == index[:-1]
            if bool(repeat.any()):
                conflict = repeat & ((radius[1:] != radius[:-1]) | (correct[1:] != correct[:-1]))
                if bool(conflict.any()):
                    at = int(torch.nonzero(conflict)[0, 0]) + 1
                    raise ValueError(
                        f"index {int(index[at])} appears twice with different values: (radius, correct) = "
                        f"({float(radius[at - 1])}, {int(correct[at - 1])}) and ({float(radius[at])}, "
                        f"{int(correct[at])})"
                    )
                keep = torch.cat([repeat.new_ones(1), ~repeat])
                index, radius, correct = index[keep], radius[keep], correct[keep]
        return index, radius, correct

    def compute(self) -> dict[str, Tensor]:
        _, radius, correct = self.rows()  # inside compute the states are already gathered from all ranks
        count = torch.tensor(radius.numel(), dtype=torch.int64, device=radius.device)
        acr = average_certified_radius(radius.cpu().numpy(), correct.cpu().numpy())
        acr = torch.tensor(acr, dtype=torch.float64, device=radius.device)
        return {
            "accuracy": certified_accuracy_at_radii(radius, correct, self._radii),
            "acr": acr,
            "count": count,
        }

    def _cat(self, name: str) -> Tensor:
        state = getattr(self, name)
        if isinstance(state, list) and not state:
            return torch.zeros(0, dtype=_STATE_DTYPES[name], device=self.device)
        return dim_zero_cat(state).to(_STATE_DTYPES[name])
