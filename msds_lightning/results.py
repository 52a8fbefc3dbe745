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
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


class ResultWriter:
    """Append-only writer of result rows; each row is flushed (and fsynced) as it is written, so a killed
    job loses at most the row being written. An existing file is appended to after checking its header."""

    def __init__(self, path: str | os.PathLike, extra_columns: Sequence[str] = (), fsync: bool = True):
        self.path = Path(path)
        self.extra_columns = tuple(extra_columns)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        expected = header(self.extra_columns)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open() as f:
                found = f.readline().rstrip("\n")
            if found != expected:
                raise ValueError(
                    f"{self.path} has header {found!r}, expected {expected!r}; refusing to append"
                )
            self._file = self.path.open("a")
        else:
            self._file = self.path.open("w")
            self._write(expected)

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def write(self, idx, label, predict, radius, seconds, **extra) -> None:
        self._write(format_row(idx, label, predict, radius, seconds, extra, self.extra_columns))

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _drop_partial_last_line(path: Path) -> None:
    """A job killed mid-write can leave a last line without its newline: cut it so appends stay aligned
    (its image was not finished, so it is certified again)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _complete_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a file that end with a newline (a partial last line is an unfinished row)."""
    with open(path, newline="") as f:
        text = f.read()
    return [line for line in text.split("\n")[:-1] if line.strip()]


def done_indices(paths: Iterable[str | os.PathLike]) -> set[int]:
    """Dataset indices already written to any of the existing result files (complete rows only)."""
    done: set[int] = set()
    for path in paths:
        if Path(path).is_file():
            done.update(int(line.split("\t", 1)[0]) for line in _complete_lines(path)[1:])
    return done


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
    shards: Iterable[str | os.PathLike], output: str | os.PathLike, expected: Iterable[int] | None = None
) -> int:
    """Merge shard TSVs (same header) into ``output`` sorted by idx, keeping one row per idx.

    Rows of an idx seen twice (e.g. re-done after a crash) must be identical apart from ``time``;
    otherwise a ``ValueError`` is raised rather than silently picking one. With ``expected`` given, a
    missing index also raises. Returns the number of rows written.
    """
    head, by_idx = None, {}
    for shard in shards:
        lines = _complete_lines(shard)
        if not lines:
            continue
        if head is None:
            head = lines[0]
        elif lines[0] != head:
            raise ValueError(f"{shard} has header {lines[0]!r}, expected {head!r}")
        time_col = head.split("\t").index("time")
        for line in lines[1:]:
            cells = line.split("\t")
            idx = int(cells[0])
            if idx in by_idx:
                other = by_idx[idx].split("\t")
                if other[:time_col] + other[time_col + 1 :] != cells[:time_col] + cells[time_col + 1 :]:
                    raise ValueError(f"conflicting rows for idx {idx}: {by_idx[idx]!r} vs {line!r}")
                continue
            by_idx[idx] = line
    if expected is not None:
        missing = sorted(set(expected) - set(by_idx))
        if missing:
            raise ValueError(f"merged results miss {len(missing)} index(es), e.g. {missing[:10]}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w") as f:
        f.write((head or header()) + "\n")
        for idx in sorted(by_idx):
            f.write(by_idx[idx] + "\n")
    os.replace(tmp, output)  # atomic: a reader never sees a half-written merge
    return len(by_idx)
