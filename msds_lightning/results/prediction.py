"""The per-image prediction file of ``msds predict`` (tab-separated).

The first five columns are exactly Cohen et al.'s ``predict.py`` output:

=========  ===================================================================================
idx        dataset index of the image
label      true class
predict    g(x), or -1 (abstain)
correct    1 if predict == label else 0
time       wall time spent on the image, ``datetime.timedelta`` text
=========  ===================================================================================

Then ``sigma``, ``n`` (and for the cascade ``level``, ``stage``, ``n0``, ``p0``), ``nA``/``nB`` (the two
largest estimation counts of the last level visited) and ``samples`` (draws spent on the image).
Resuming, merging and the checks on every row are those of the certification file (:mod:`.tsv`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np

from .certification import format_time, format_value, labelled_row_problem
from .tsv import RowAppender, ScannedRows, merge_row_files, scan_row_files

PREDICTION_COLUMNS = ("idx", "label", "predict", "correct", "time")


class PredictionWriter(RowAppender):
    """Append-only writer of prediction rows (each flushed and fsynced as it is written)."""

    def __init__(self, path: str | os.PathLike, extra_columns: Sequence[str] = (), fsync: bool = True):
        self.extra_columns = tuple(extra_columns)
        super().__init__(path, (*PREDICTION_COLUMNS, *self.extra_columns), fsync)

    def write(self, idx, label, predict, seconds, **extra) -> None:
        cells = [str(int(idx)), str(int(label)), str(int(predict)), str(int(int(predict) == int(label))),
                 format_time(seconds), *(format_value(extra[name]) for name in self.extra_columns)]  # fmt: skip
        self.write_lines(["\t".join(cells)])


def prediction_row_problem(cells: Sequence[str], head: Sequence[str], size: int | None = None) -> str | None:
    """Why a prediction row is not valid under header ``head`` (``None`` if it is): the checks every
    per-image row passes (:func:`~.certification.labelled_row_problem`); a prediction has no radius."""
    return labelled_row_problem(cells, head, size)


def scan_prediction_files(paths: Iterable[str | os.PathLike], size: int | None = None) -> ScannedRows:
    return scan_row_files(paths, prediction_row_problem, size, ("time",))


def merge_prediction_files(
    shards: Iterable[str | os.PathLike], output: str | os.PathLike, expected: Iterable[int] | None = None,
    size: int | None = None,
) -> int:  # fmt: skip
    """Merge prediction shards into ``output`` (sorted by idx, verified, atomic; see :func:`~.tsv.merge_row_files`)."""
    return merge_row_files(shards, output, prediction_row_problem, "\t".join(PREDICTION_COLUMNS), expected, size,
                           ("time",))  # fmt: skip


def prediction_summary(rows: Sequence[dict], name: str = "") -> str:
    """Markdown table of prediction rows (dicts of cells): images, accuracy (correct / images), abstention,
    wrong answers (answered and not the label), and for the cascade the share answered at each σ."""
    predict = np.array([int(r["predict"]) for r in rows], dtype=np.int64)
    correct = np.array([int(r["correct"]) for r in rows], dtype=np.int64)
    count = len(rows)
    share = (lambda k: k / count) if count else (lambda k: float("nan"))
    cells = {
        "file": name, "images": str(count), "accuracy": f"{share(int(correct.sum())):.3f}",
        "abstain": f"{share(int((predict == -1).sum())):.3f}",
        "wrong": f"{share(int(((predict != -1) & (correct == 0)).sum())):.3f}",
    }  # fmt: skip
    if rows and "level" in rows[0]:
        answered = [r for r in rows if int(r["level"]) >= 0]
        for sigma in sorted({float(r["sigma"]) for r in answered}, reverse=True):
            cells[f"answered at σ={sigma:g}"] = f"{share(sum(float(r['sigma']) == sigma for r in answered)):.3f}"
    head = list(cells)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells.values()) + " |"])
