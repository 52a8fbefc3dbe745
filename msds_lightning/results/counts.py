"""The counts sidecar of a certification result file: every image's Monte-Carlo counts, for ``msds recertify``.

``msds certify`` writes, next to ``<output>.tsv``, the file ``<output>.counts``: tab-separated, header
``idx	counts``, one row per image of the TSV, whose ``counts`` cell is the image's
:class:`~msds_lightning.smoothing.records.CountRecord` as compact JSON (σ -> phase -> end of the draws ->
{class: count}, zero counts left out; the selection counts at ``n0`` and the estimation counts at every
checkpoint the image reached, for every level it visited). The name does not end in ``.tsv``, so
``msds analyze outputs/*.tsv`` passes it over.

It is written, resumed and merged exactly like the TSV (:mod:`.tsv`: per-rank shards
``<output>.shards/rank<k>.counts``, flushed per row; merged sorted by idx, verified, moved into place), and an
image's counts row is written before its result row, so every result row has its counts; counts rows of
images whose result row was never written (a job killed between the two) are dropped when the run resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..smoothing.records import CountRecord
from .tsv import RowAppender, ScannedRows, complete_lines, merge_row_files, scan_row_files

COUNTS_KEY = "counts"
"""The key of a result row dict (``CertifyModule.predict_step``) that carries the image's count record."""
COUNTS_COLUMNS = ("idx", COUNTS_KEY)


def counts_path(output: str | os.PathLike) -> Path:
    """The counts sidecar of result file ``output``: ``<output stem>.counts`` beside it."""
    return Path(output).with_suffix(".counts")


def counts_row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """Why a counts row is invalid (``None`` if it is valid): two fields, idx in range, a JSON object."""
    if len(cells) != len(head):
        return f"{len(cells)} fields, the header has {len(head)}"
    try:
        idx = int(cells[0])
        value = json.loads(cells[1])
    except ValueError as err:
        return f"unreadable value ({err})"
    if idx < 0 or (size is not None and idx >= size):
        return f"idx {idx} outside the data set (0..{size - 1 if size else '?'})"
    return None if isinstance(value, dict) else "the counts cell is not a JSON object"


class CountsWriter(RowAppender):
    """Append-only writer of counts rows (flushed and fsynced per row, like the result rows)."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        super().__init__(path, COUNTS_COLUMNS, fsync)

    def write(self, idx: int, record_json: str) -> None:
        self.write_lines([f"{int(idx)}\t{record_json}"])


def scan_counts_files(paths: Iterable[str | os.PathLike], size: int | None = None) -> ScannedRows:
    return scan_row_files(paths, counts_row_problem, size)


def merge_counts_files(
    shards: Iterable[str | os.PathLike], output: str | os.PathLike, size: int | None = None
) -> int:
    """Merge counts files into ``output`` (sorted by idx, verified, atomic); returns the row count."""
    return merge_row_files(shards, output, counts_row_problem, "\t".join(COUNTS_COLUMNS), size=size)


def keep_rows(path: str | os.PathLike, indices: set[int]) -> int:
    """Rewrite the counts file ``path`` (atomically) without the rows whose idx is not in ``indices``;
    returns how many were dropped. Used on resume: the rows of images whose result row was never written."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = complete_lines(path)
    if not lines:
        return 0
    kept = [lines[0]] + [line for line in lines[1:] if _idx(line) in indices]
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def _idx(line: str) -> int | None:
    try:
        return int(line.split("\t", 1)[0])
    except ValueError:
        return None


def read_count_records(path: str | os.PathLike, num_classes: int) -> dict[int, CountRecord]:
    """The count records of a counts file: dataset index -> :class:`CountRecord`. ``ValueError`` names the
    file and line of a malformed row (a counts file is data: nothing in it runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"counts sidecar not found: {path}")
    scan = scan_counts_files([path])
    if scan.problems:
        raise ValueError(f"{path}: {len(scan.problems)} malformed row(s), e.g. {scan.problems[0]}")
    if scan.header is not None and scan.header != "\t".join(COUNTS_COLUMNS):
        raise ValueError(f"{path} has header {scan.header!r}, expected {chr(9).join(COUNTS_COLUMNS)!r}")
    records = {}
    for idx, (line, where) in scan.rows.items():
        try:
            records[idx] = CountRecord.from_json(line.split("\t", 1)[1], num_classes)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return records
