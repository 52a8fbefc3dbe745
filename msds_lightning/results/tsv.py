"""Resumable tab-separated row files: the one appender, scanner and merger behind every result file.

A row file has a header line and one line per image, keyed by its ``idx`` column. Certification
(:mod:`.certification`) and attacks (:mod:`msds_lightning.robustness.table`) each give a row *schema* — the
header and a ``check(cells, header_cells, size)`` that says why a row is invalid — and share the rest:

* :class:`RowAppender` appends lines and flushes (and fsyncs) each write, so a killed job loses at most
  the line being written; an existing file is appended to after checking its header and cutting an
  unfinished last line.
* :func:`scan_row_files` reads every complete row of one or more files, skips (and reports) invalid
  ones, and refuses two rows of one idx that differ outside the ``volatile`` columns (e.g. ``time``).
* :func:`merge_row_files` writes the valid rows sorted by idx, verified, then moved into place atomically.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RowCheck = Callable[[Sequence[str], Sequence[str], "int | None"], "str | None"]


class RowAppender:
    """Append-only writer of the lines of a row file with header ``columns``. The caller holds the
    file's :class:`~msds_lightning.runs.OutputLock`."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], fsync: bool = True, hint: str = ""):
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        expected = "\t".join(columns)
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open() as f:
                found = f.readline().rstrip("\n")
            if found != expected:
                raise ValueError(f"{self.path} has header {found!r}, expected {expected!r}; refusing to append{hint}")
            drop_partial_last_line(self.path)
            self._file = self.path.open("a")
        else:  # append mode even here: never truncate a file another process might be writing
            self._file = self.path.open("a")
            self.write_lines([expected])

    def write_lines(self, lines: Sequence[str]) -> None:
        try:
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError as err:  # e.g. ENOSPC: say which file; the rows written so far stay valid
            raise OSError(err.errno, f"cannot write to {self.path} ({err.strerror})") from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def drop_partial_last_line(path: Path) -> None:
    """A job killed mid-write can leave a last line without its newline: cut it so appends stay aligned
    (its image was not finished, so it is done again)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def complete_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a file that end with a newline (a partial last line is an unfinished row)."""
    with open(path, newline="") as f:
        text = f.read()
    return [line for line in text.split("\n")[:-1] if line.strip()]


@dataclass
class ScannedRows:
    """Valid rows of one or more row files: ``rows`` maps idx -> (line, "file:line") of its first row;
    ``problems`` lists the skipped malformed rows as ``"file:line: reason"``."""

    header: str | None
    rows: dict[int, tuple[str, str]]
    problems: list[str]

    def dicts(self, cast=int) -> list[dict]:
        """The rows sorted by idx as ``{column: cast(cell)}``."""
        head = (self.header or "").split("\t")
        return [dict(zip(head, map(cast, self.rows[i][0].split("\t")))) for i in sorted(self.rows)]


def scan_row_files(
    paths: Iterable[str | os.PathLike], check: RowCheck, size: int | None = None, volatile: Sequence[str] = (),
) -> ScannedRows:  # fmt: skip
    """Parse and check every complete row of the existing files among ``paths`` with ``check``.

    A malformed row is skipped (its image counts as not done, so it is done again) and reported in
    ``problems``. The files must share one header, and two valid rows of one idx must agree on every column
    but the ``volatile`` ones (a re-done image gives the same row); otherwise ``ValueError`` names both
    places."""
    head, rows, problems = None, {}, []
    for path in paths:
        if not Path(path).is_file():
            continue
        lines = complete_lines(path)
        if not lines:
            continue
        if head is None:
            head = lines[0]
        elif lines[0] != head:
            raise ValueError(f"{path} has header {lines[0]!r}, expected {head!r} (as in the other result files)")
        columns = head.split("\t")
        if "idx" not in columns or not set(volatile) <= set(columns):
            raise ValueError(f"{path}: header {head!r} is not a result header (no idx or {list(volatile)} column)")
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


def merge_row_files(
    shards: Iterable[str | os.PathLike], output: str | os.PathLike, check: RowCheck, header: str,
    expected: Iterable[int] | None = None, size: int | None = None, volatile: Sequence[str] = (),
) -> int:  # fmt: skip
    """Merge row files (same header; ``header`` if they are all empty) into ``output`` sorted by idx, one
    valid row per idx.

    Rows are checked as in :func:`scan_row_files`: malformed ones are left out (never merged), two rows of
    one idx that differ apart from ``volatile`` columns raise ``ValueError``. With ``expected`` given, a
    missing index raises. The merge is written to a temporary file, read back and verified, then moved into
    place, so the shards may be deleted once this returns. Returns the number of rows written."""
    scan = scan_row_files(shards, check, size, volatile)
    if expected is not None:
        missing = sorted(set(expected) - set(scan.rows))
        if missing:
            raise ValueError(f"merged results miss {len(missing)} index(es), e.g. {missing[:10]}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    lines = [scan.header or header] + [scan.rows[idx][0] for idx in sorted(scan.rows)]
    try:
        with tmp.open("w") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        again = scan_row_files([tmp], check, size, volatile)
        if complete_lines(tmp) != lines or again.problems or set(again.rows) != set(scan.rows):
            raise OSError(errno.EIO, f"the merged file {tmp} did not read back as written")
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {output} ({err.strerror}); the shards are kept") from None
    os.replace(tmp, output)  # atomic: a reader never sees a half-written merge
    return len(scan.rows)
