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
import errno
import math
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
    job loses at most the row being written. An existing file is appended to after checking its header and
    cutting an unfinished last line. The caller holds the file's :class:`~msds_lightning.runs.OutputLock`."""

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
            _drop_partial_last_line(self.path)
            self._file = self.path.open("a")
        else:  # append mode even here: never truncate a file another process might be writing
            self._file = self.path.open("a")
            self._write(expected)

    def _write(self, line: str) -> None:
        try:
            self._file.write(line + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as err:  # e.g. ENOSPC: say which file; the rows written so far stay valid
            raise OSError(err.errno, f"cannot write to {self.path} ({err.strerror})") from None

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


def row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """Why a result row is not a valid row of a file with header ``head`` (``None`` if it is valid).

    Checks the field count, ``idx``/``label``/``predict`` as integers (``idx`` in ``[0, size)`` when the data
    set size is known, ``predict`` >= -1), ``radius`` a finite number >= 0, and ``correct`` the 0/1 that
    ``predict == label`` gives."""
    if len(cells) != len(head):
        return f"{len(cells)} fields, the header has {len(head)}"
    row = dict(zip(head, cells))
    try:
        idx, label, predict = int(row["idx"]), int(row["label"]), int(row["predict"])
        radius, correct = float(row["radius"]), int(row["correct"])
    except (KeyError, ValueError) as err:
        return f"unreadable value ({err})"
    if idx < 0 or (size is not None and idx >= size):
        return f"idx {idx} outside the data set (0..{size - 1 if size else '?'})"
    if predict < -1 or label < 0:
        return f"label {label} / predict {predict} out of range"
    if not math.isfinite(radius) or radius < 0:
        return f"radius {row['radius']!r} is not a finite number >= 0"
    if correct != int(predict == label):
        return f"correct {correct} contradicts predict {predict} and label {label}"
    return None


@dataclass
class ScannedRows:
    """Valid rows of one or more result files: ``rows`` maps idx -> (line, "file:line") of its first row;
    ``problems`` lists the skipped malformed rows as ``"file:line: reason"``."""

    header: str | None
    rows: dict[int, tuple[str, str]]
    problems: list[str]


def scan_result_files(
    paths: Iterable[str | os.PathLike], size: int | None = None, check=row_problem,
    volatile: Sequence[str] = ("time",),
) -> ScannedRows:  # fmt: skip
    """Parse and check every complete row of the existing files among ``paths`` with ``check`` (default
    :func:`row_problem`; ``check(cells, header_cells, size)`` returns why a row is invalid, or ``None``).

    A malformed row is skipped (its image counts as not done, so it is certified again) and reported in
    ``problems``. The files must share one header, and two valid rows of one idx must agree on every column
    but the ``volatile`` ones (a re-done image gives the same row); otherwise ``ValueError`` names both
    places."""
    head, rows, problems = None, {}, []
    for path in paths:
        if not Path(path).is_file():
            continue
        lines = _complete_lines(path)
        if not lines:
            continue
        if head is None:
            head = lines[0]
        elif lines[0] != head:
            raise ValueError(f"{path} has header {lines[0]!r}, expected {head!r} (as in the other result files)")
        columns = head.split("\t")
        if "idx" not in columns or not set(volatile) <= set(columns):
            raise ValueError(f"{path}: header {head!r} is not a result header (expected {header()!r} ...)")
        compared = [k for k, c in enumerate(columns) if c not in volatile]
        for number, line in enumerate(lines[1:], start=2):
            where = f"{path}:{number}"
            cells = line.split("\t")
            problem = check(cells, columns, size)
            if problem:
                problems.append(f"{where}: {problem}")
                continue
            idx = int(cells[columns.index("idx")])
            if idx in rows:
                first, first_where = rows[idx]
                other = first.split("\t")
                if [other[k] for k in compared] != [cells[k] for k in compared]:
                    raise ValueError(f"conflicting rows for idx {idx}: {first_where} and {where} differ")
                continue
            rows[idx] = (line, where)
    return ScannedRows(head, rows, problems)


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
    """Merge result files (same header) into ``output`` sorted by idx, one valid row per idx.

    Rows are checked as in :func:`scan_result_files`: malformed ones are left out (never merged), two rows
    of one idx that differ apart from ``volatile`` columns raise ``ValueError``. With ``expected`` given, a missing index
    raises. The merge is written to a temporary file, read back and verified, then moved into place, so
    the shards may be deleted once this returns. Returns the number of rows written.
    """
    scan = scan_result_files(shards, size, check, volatile)
    if expected is not None:
        missing = sorted(set(expected) - set(scan.rows))
        if missing:
            raise ValueError(f"merged results miss {len(missing)} index(es), e.g. {missing[:10]}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    lines = [scan.header or header()] + [scan.rows[idx][0] for idx in sorted(scan.rows)]
    try:
        with tmp.open("w") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        again = scan_result_files([tmp], size, check, volatile)
        if _complete_lines(tmp) != lines or again.problems or set(again.rows) != set(scan.rows):
            raise OSError(errno.EIO, f"the merged file {tmp} did not read back as written")
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {output} ({err.strerror}); the shards are kept") from None
    os.replace(tmp, output)  # atomic: a reader never sees a half-written merge
    return len(scan.rows)
