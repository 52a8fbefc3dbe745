"""The per-image certification result file (tab-separated).

The first six columns are exactly Cohen et al.'s (locuslab/smoothing ``certify.py``), so their
``analyze.py`` and every tool built on it read our files unchanged:

=========  ===================================================================================
idx        dataset index of the image
label      true class
predict    certified class, or -1 (ABSTAIN; multi-scale "undecided" is also written -1)
radius     certified l2 radius in [0,1] pixel units, 3 significant digits (``"{:.3}"``), 0.0 on abstain
correct    1 if predict == label else 0 (per row, never cumulative)
time       wall time spent on the image, ``datetime.timedelta`` text (e.g. ``0:00:01.250000``)
=========  ===================================================================================

Extra columns (sigma, n0, n, nA, pA_lower, level, ...) come after them. Analysis reads the radius *as
written* (rounded), like the reference, so a table computed from a file is reproducible from the file.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tsv import RowAppender, ScannedRows, merge_row_files, scan_row_files

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


def format_radius(radius: float) -> str:
    """Cohen's radius text: 3 significant digits in Python's general format (0.0, 0.941, 5.61e-06)."""
    return f"{float(radius):.3}"


def format_time(seconds: float) -> str:
    return str(datetime.timedelta(seconds=float(seconds)))


def format_value(value) -> str:
    if isinstance(value, float | np.floating):
        return repr(float(value))  # full precision for statistics such as pA_lower
    return str(value)


def format_row(
    idx: int,
    label: int,
    predict: int,
    radius: float,
    seconds: float,
    extra: Mapping[str, object] | None = None,
    extra_columns: Sequence[str] = (),
) -> str:
    """One TSV line (no newline) in the column order ``COHEN_COLUMNS + extra_columns``."""
    cells = [str(int(idx)), str(int(label)), str(int(predict)), format_radius(radius),
             str(int(int(predict) == int(label))), format_time(seconds)]  # fmt: skip
    extra = extra or {}
    cells += [format_value(extra[name]) for name in extra_columns]
    return "\t".join(cells)


def header(extra_columns: Sequence[str] = ()) -> str:
    return "\t".join((*COHEN_COLUMNS, *extra_columns))


class ResultWriter(RowAppender):
    """Append-only writer of certification rows (see :class:`~.tsv.RowAppender`: each row flushed and
    fsynced as it is written; an existing file appended to after its header is checked)."""

    def __init__(self, path: str | os.PathLike, extra_columns: Sequence[str] = (), fsync: bool = True):
        self.extra_columns = tuple(extra_columns)
        super().__init__(path, (*COHEN_COLUMNS, *self.extra_columns), fsync)

    def write(self, idx, label, predict, radius, seconds, **extra) -> None:
        self.write_lines([format_row(idx, label, predict, radius, seconds, extra, self.extra_columns)])


def row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """Why a result row is not a valid row of a file with header ``head`` (``None`` if it is valid):
    :func:`labelled_row_problem`, and ``radius`` a finite number >= 0."""
    problem = labelled_row_problem(cells, head, size)
    if problem:
        return problem
    radius = dict(zip(head, cells)).get("radius", "")
    try:
        value = float(radius)
    except ValueError as err:
        return f"unreadable value ({err})"
    if not math.isfinite(value) or value < 0:
        return f"radius {radius!r} is not a finite number >= 0"
    return None


def labelled_row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """What every per-image row (certification, prediction) must satisfy: as many fields as the header,
    ``idx``/``label``/``predict``/``correct`` integers, ``idx`` in ``[0, size)`` when the data set size is
    known, ``label`` >= 0, ``predict`` >= -1, and ``correct`` the 0/1 that ``predict == label`` gives."""
    if len(cells) != len(head):
        return f"{len(cells)} fields, the header has {len(head)}"
    row = dict(zip(head, cells))
    try:
        idx, label, predict, correct = (int(row[c]) for c in ("idx", "label", "predict", "correct"))
    except (KeyError, ValueError) as err:
        return f"unreadable value ({err})"
    if idx < 0 or (size is not None and idx >= size):
        return f"idx {idx} outside the data set (0..{size - 1 if size else '?'})"
    if predict < -1 or label < 0:
        return f"label {label} / predict {predict} out of range"
    if correct != int(predict == label):
        return f"correct {correct} contradicts predict {predict} and label {label}"
    return None


def scan_result_files(
    paths: Iterable[str | os.PathLike], size: int | None = None, check=row_problem,
    volatile: Sequence[str] = ("time",),
) -> ScannedRows:  # fmt: skip
    """:func:`~.tsv.scan_row_files` of certification result files (their rows checked by :func:`row_problem`;
    a re-certified image must give the same row but for its ``time``)."""
    return scan_row_files(paths, check, size, volatile)


def done_indices(paths: Iterable[str | os.PathLike], size: int | None = None) -> set[int]:
    """Dataset indices with a valid row in any of the existing result files (malformed rows do not count)."""
    return set(scan_result_files(paths, size).rows)


@dataclass
class Results:
    """Columns of a result file as numpy arrays (``columns`` maps every column name to its raw strings)."""

    name: str
    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, indices: Iterable[int]) -> Results:
        """The rows whose idx is in ``indices`` (e.g. the index set of the current run)."""
        keep = np.isin(self.idx, np.fromiter(indices, dtype=np.int64))
        rows = np.flatnonzero(keep)
        return Results(
            self.name, self.idx[keep], self.label[keep], self.predict[keep], self.radius[keep],
            self.correct[keep], {c: [v[k] for k in rows] for c, v in self.columns.items()},
        )  # fmt: skip

    def column(self, name: str, dtype=float) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"{self.name} has no column {name!r} (columns: {', '.join(self.columns)})")
        return np.asarray(self.columns[name], dtype=dtype)


def read_results(path: str | os.PathLike, name: str | None = None) -> Results:
    """Read a result TSV (ours, or Cohen et al.'s). ``correct`` must be per-row 0/1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path} is empty (expected a header {header()!r})")
    head, body = rows[0], [r for r in rows[1:] if r]
    missing = [c for c in ("idx", "label", "predict", "radius", "correct") if c not in head]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; header is {head}")
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(head)]
    if bad:
        raise ValueError(f"{path}: line(s) {bad[:5]} have a different number of fields than the header")
    columns = {c: [r[i] for r in body] for i, c in enumerate(head)}
    correct = np.asarray(columns["correct"], dtype=np.int64)
    if correct.size and (correct.min() < 0 or correct.max() > 1):
        raise ValueError(f"{path}: 'correct' must be 0/1 per row (cumulative counts are not supported)")
    return Results(
        name=name or path.name,
        idx=np.asarray(columns["idx"], dtype=np.int64),
        label=np.asarray(columns["label"], dtype=np.int64),
        predict=np.asarray(columns["predict"], dtype=np.int64),
        radius=np.asarray(columns["radius"], dtype=np.float64),
        correct=correct,
        columns=columns,
    )


def merge_result_files(
    shards: Iterable[str | os.PathLike], output: str | os.PathLike, expected: Iterable[int] | None = None,
    size: int | None = None, check=row_problem, volatile: Sequence[str] = ("time",),
) -> int:
    """:func:`~.tsv.merge_row_files` of certification result files into ``output`` (sorted by idx, verified,
    moved into place atomically; with ``expected`` given, a missing index raises). Returns the row count."""
    return merge_row_files(shards, output, check, header(), expected, size, volatile)
