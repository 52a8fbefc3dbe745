"""Recorded Monte-Carlo counts: re-decide a certification without a single forward pass.

Every decision of :class:`~.engine.Engine` is a function of class counts: per image, level (σ) and phase,
the counts of draws ``0 .. end`` of the image's noise stream. :class:`CountRecorder` keeps them as they are
drawn, as *cumulative* counts at every ``end`` the engine reached (``n0`` for the selection draws; each
checkpoint of the estimation draws: ``n`` with fixed sampling, ``first_checkpoint, … , n`` as far as adaptive
sampling went). :class:`ReplayEngine` is the same engine with its counts served from such records instead
of from forward passes, so its decisions are the engine's own code on the same numbers:

* with the run's settings it reproduces the run's rows exactly;
* with another α, p0, off-class bound, adaptive stopping grid or set of σ it decides as a run with those
  settings would have, as long as the draws that run would need were recorded; otherwise
  :class:`MissingCounts` names the image, σ and draws;
* the noise of image i at σ in a phase does not depend on the cascade level σ sits at (the stream key is
  ``(seed, index, phase, block)``), so the records of single-σ runs made with the same seed, n0, n and
  noise block are exactly the counts a cascade over those σ draws, and assemble into it.

The text form of one image's record (:meth:`CountRecord.to_json`) is a JSON object, compact and sparse
(classes with count 0 left out)::

    {"0.25": {"selection": {"100": {"3": 97, "5": 3}}, "estimation": {"1000": {"3": 981, "5": 19}}}}

σ (as ``repr(float)``, [0,1] pixel units) -> phase name -> end of the draws ``0 .. end`` -> {class: count}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .engine import EMPIRICAL_PREDICTION, ESTIMATION, PREDICTION, PREDICTION_SELECTION, SELECTION, Engine

PHASE_NAMES = {
    SELECTION: "selection",
    ESTIMATION: "estimation",
    PREDICTION: "prediction",
    PREDICTION_SELECTION: "prediction_selection",
    EMPIRICAL_PREDICTION: "empirical_prediction",
}
PHASES = {name: phase for phase, name in PHASE_NAMES.items()}


class MissingCounts(ValueError):
    """A re-decision needs draws that the record does not hold."""

    def __init__(self, index: int, sigma: float, phase: int, start: int, end: int, have: Sequence[int]):
        self.index, self.sigma, self.phase, self.start, self.end = int(index), float(sigma), phase, start, end
        recorded = ", ".join(map(str, have)) if have else "none"
        super().__init__(
            f"image {index} needs the {PHASE_NAMES[phase]} draws {start}..{end} at sigma {sigma:g}, which were "
            f"not recorded (recorded ends: {recorded})"
        )


class CountRecord:
    """The recorded counts of one image: ``(σ, phase) -> {end: cumulative counts [num_classes]}``."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.ends: dict[tuple[float, int], dict[int, np.ndarray]] = {}

    def add(self, sigma: float, phase: int, start: int, num: int, counts: np.ndarray) -> None:
        """Counts of draws ``start .. start + num`` (consecutive ranges add up)."""
        ends = self.ends.setdefault((float(sigma), int(phase)), {0: np.zeros(self.num_classes, np.int64)})
        if start not in ends:
            raise ValueError(f"counts of draws from {start} at sigma {sigma:g} follow no recorded range")
        ends[start + int(num)] = ends[start] + np.asarray(counts, dtype=np.int64)

    def counts(self, sigma: float, phase: int, start: int, num: int, index: int = -1) -> np.ndarray:
        """Counts of draws ``start .. start + num``; :class:`MissingCounts` if either end was not recorded."""
        ends = self.ends.get((float(sigma), int(phase)), {})
        end = start + int(num)
        if (start != 0 and start not in ends) or end not in ends:
            raise MissingCounts(index, sigma, phase, start, end, sorted(e for e in ends if e))
        return ends[end] - (ends[start] if start else 0)

    def sigmas(self) -> set[float]:
        return {sigma for sigma, _ in self.ends}

    def merge(self, other: CountRecord, index: int = -1) -> None:
        """Add another run's records of this image; counts recorded by both must agree (same streams)."""
        for key, ends in other.ends.items():
            mine = self.ends.setdefault(key, {0: np.zeros(self.num_classes, np.int64)})
            for end, counts in ends.items():
                if end in mine and not np.array_equal(mine[end], counts):
                    raise ValueError(
                        f"image {index}: two runs recorded different counts for the {PHASE_NAMES[key[1]]} draws "
                        f"0..{end} at sigma {key[0]:g}; they were not made with the same seed, noise block and "
                        f"models"
                    )
                mine[end] = counts

    def restricted(self, sigmas: Sequence[float]) -> CountRecord:
        """The record of the levels in ``sigmas`` only."""
        keep = CountRecord(self.num_classes)
        keep.ends = {key: ends for key, ends in self.ends.items() if key[0] in {float(s) for s in sigmas}}
        return keep

    def to_json(self) -> str:
        tree: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        for (sigma, phase), ends in sorted(self.ends.items(), key=lambda item: (-item[0][0], item[0][1])):
            tree.setdefault(repr(sigma), {})[PHASE_NAMES[phase]] = {
                str(end): {str(c): int(v) for c, v in enumerate(counts) if v} for end, counts in sorted(ends.items()) if end
            }  # fmt: skip
        return json.dumps(tree, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, num_classes: int) -> CountRecord:
        """Parse :meth:`to_json`'s text; ``ValueError`` for anything else (never runs code)."""
        record = cls(num_classes)
        try:
            tree = json.loads(text)
            for sigma, phases in tree.items():
                for name, ends in phases.items():
                    table = record.ends.setdefault(
                        (float(sigma), PHASES[name]), {0: np.zeros(num_classes, np.int64)}
                    )
                    for end, sparse in ends.items():
                        counts = np.zeros(num_classes, np.int64)
                        for c, v in sparse.items():
                            counts[int(c)] = int(v)
                        if int(end) <= 0 or counts.min() < 0 or counts.sum() != int(end):
                            raise ValueError(f"counts of draws 0..{end} add up to {counts.sum()}")
                        table[int(end)] = counts
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f"not a count record ({type(err).__name__}: {err})") from None
        return record


class CountRecorder:
    """Collects :class:`CountRecord` s per dataset index from an engine: ``engine.recorder = recorder``."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.records: dict[int, CountRecord] = {}

    def add(
        self, indices: Sequence[int], sigma: float, phase: int, start: int, num: int, counts: np.ndarray
    ) -> None:
        for index, row in zip(indices, counts):
            self.records.setdefault(int(index), CountRecord(self.num_classes)).add(
                sigma, phase, start, num, row
            )


def _no_forward(x: torch.Tensor, sigma: float) -> torch.Tensor:
    raise RuntimeError("a ReplayEngine decides from recorded counts and never runs the base classifier")


class ReplayEngine(Engine):
    """:class:`~.engine.Engine` whose counts come from ``records`` (dataset index -> :class:`CountRecord`)
    instead of forward passes; every other argument as the engine's. Call :meth:`certify` with the indices
    (``images`` may be omitted)."""

    def __init__(
        self, records: Mapping[int, CountRecord], num_classes: int, sigmas, p0: float = 0.5, **options
    ):
        options.pop("compile", None), options.pop("autocast", None), options.pop("batch_size", None)
        super().__init__(_no_forward, num_classes, sigmas, p0, batch_size=1, **options)
        self.records = records

    def certify(self, images, indices, n0, n, alpha):  # noqa: D102 (Engine.certify)
        if images is None:
            images = torch.zeros(len(indices), 1, 1, 1)
        return super().certify(images, indices, n0, n, alpha)

    def _counts(self, images, indices, rows, num, sigma, phase, start: int = 0) -> np.ndarray:
        out = []
        for k in rows:
            record = self.records.get(indices[k])
            if record is None:
                raise MissingCounts(indices[k], sigma, phase, start, start + num, [])
            out.append(record.counts(sigma, phase, start, num, indices[k]))
        counts = np.stack(out) if out else np.zeros((0, self.num_classes), np.int64)
        if self.recorder is not None:
            self.recorder.add([indices[k] for k in rows], sigma, phase, start, num, counts)
        return counts
