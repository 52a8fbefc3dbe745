"""Writes certification rows from every rank and merges them into one result TSV.

Each rank appends its rows to ``<output>.shards/rank<k>.tsv`` (flushed per row). At the end rank 0 merges
the previous merged file and all shards into ``<output>``, sorted by idx, with exactly one row per
dataset index of the run (a missing or conflicting index raises), then prints the summary table of the
run's index set and writes it next to the output as ``<output stem>.md``. The images' Monte-Carlo counts
go the same way into ``<output stem>.counts`` (:mod:`msds_lightning.results.counts`; ``msds recertify``
re-decides a run from them), each counts row written before its result row.

Resuming, and what is checked so that a resumed table cannot mix runs:

* **settings** — the run fingerprint (:mod:`msds_lightning.runs`; set by ``msds certify``) is stored as
  ``<output stem>.fingerprint.json`` and in the shard folder; a rerun with other settings (σ, n, α, seed,
  model, checkpoint contents, precision, data set and split) is refused, naming the differences.
* **one writer** — rank 0 holds ``<output>.lock`` and each rank ``rank<k>.lock`` for the run.
* **rows** — every existing row is parsed and checked (fields, types, idx in the data set, ``correct``);
  malformed rows are reported with file and line and their images certified again; the merge is verified
  before the shards are deleted.

At start every rank reads the indices already present in ``<output>`` and the shards, and the module skips
them. A killed run therefore loses at most the images in flight, and a restarted run — with any number of
processes — fills in exactly the rest. SIGTERM/SIGINT stop the run after the rows of the current batch are
written (:class:`CertificationStopped`); a second SIGINT stops at once.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..results import ResultWriter, merge_result_files, read_results, scan_result_files
from ..results.analysis import (
    CIFAR10_RADII,
    format_markdown,
    format_shift,
    is_shift_run,
    summarize,
    summarize_shift,
)
from ..results.counts import (
    COUNTS_KEY,
    CountsWriter,
    counts_path,
    keep_rows,
    merge_counts_files,
    scan_counts_files,
)
from ..results.prediction import PredictionWriter as PredictionRowWriter
from ..results.prediction import merge_prediction_files, prediction_summary, scan_prediction_files
from ..runs import OutputLock, check_fingerprint, check_output_path, fingerprint_path, write_fingerprint

OVERWRITE_HINT = "--results.overwrite true"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CertificationStopped(Exception):
    """A stop signal arrived; the rows of every finished batch are written, and a rerun resumes."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class CertificationWriter(BasePredictionWriter):
    """:param output: merged result TSV path
    :param radii: radii of the summary table ([0,1] pixel units)
    :param progress_interval: seconds between per-rank progress lines on stderr (0: never); the progress
        bar shows rank 0 only, and on a cluster every rank's pace matters
    :param overwrite: discard an existing output (TSV, shards, summary, fingerprint) instead of resuming it

    ``fingerprint`` (set by ``msds certify`` before the run) is the run's settings fingerprint; without one
    (the writer used from Python) rows are resumed on idx alone, as before."""

    def __init__(
        self, output: str = "outputs/certify.tsv", radii: Sequence[float] = CIFAR10_RADII,
        progress_interval: float = 300.0, overwrite: bool = False,
    ):  # fmt: skip
        super().__init__(write_interval="batch")
        self.progress_interval = float(progress_interval)
        self._started = self._last_report = 0.0
        self.output = Path(output)
        self.shard_dir = self.output.with_name(self.output.name + ".shards")
        self.radii = [float(r) for r in radii]
        self.overwrite = bool(overwrite)
        self.fingerprint: dict | None = None
        self._data = None  # the data module, when it adds columns to the rows (row_columns, row_fields)
        self._writer: ResultWriter | None = None
        self._counts_writer: CountsWriter | None = None
        self._lock = OutputLock(self.output, hint="give another --results.output")
        self._shard_lock: OutputLock | None = None
        self._prepared = False
        self._stop_signal: int | None = None
        self._old_handlers: dict[int, object] = {}

    def _existing(self) -> list[Path]:
        return [self.output, *sorted(self.shard_dir.glob("rank*.tsv"))]

    def _existing_counts(self) -> list[Path]:
        if not self.records_counts:
            return []
        return [counts_path(self.output), *sorted(self.shard_dir.glob("rank*.counts"))]

    def _fingerprint_files(self) -> list[Path]:
        return [fingerprint_path(self.output), self.shard_dir / "fingerprint.json"]

    def discard(self) -> None:
        """Delete the output's rows, summary and fingerprint (``overwrite``); lock files stay."""
        for path in (self.output, self.output.with_suffix(".md"), *self._fingerprint_files(), *self._existing_counts()):
            path.unlink(missing_ok=True)
        for shard in self.shard_dir.glob("rank*.tsv"):
            shard.unlink()

    def prepare(self) -> None:
        """Rank 0, before anything is written: check the output path, take the output lock, and check (or,
        for a fresh output, record) the run fingerprint. Raises ``ValueError`` naming the problem."""
        if self._prepared:
            return
        check_output_path(self.output, "--results.output")
        self._lock.acquire()
        try:
            self._check_or_discard()
        except BaseException:
            self._lock.release()
            raise
        self._prepared = True

    def _check_or_discard(self) -> None:
        if self.overwrite:
            self.discard()
        if self.fingerprint is not None:
            has_rows = any(p.is_file() and p.stat().st_size > 0 for p in self._existing())
            stored, in_shards = self._fingerprint_files()
            if in_shards.is_file():  # shards of an unfinished run
                check_fingerprint(in_shards, self.fingerprint, has_rows, str(self.shard_dir), OVERWRITE_HINT)
            if check_fingerprint(stored, self.fingerprint, has_rows, str(self.output), OVERWRITE_HINT):
                write_fingerprint(stored, self.fingerprint)  # a fresh output: recorded before any row

    def close(self) -> None:
        """Restore the signal handlers, close the shard and release the locks (idempotent)."""
        self._restore_signal_handlers()
        self.release()

    def release(self) -> None:
        self._close_writers()
        for lock in (self._shard_lock, self._lock):
            if lock is not None:
                lock.release()
        self._prepared = False

    # --- stop signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop_signal = signum
        rank_zero_info(f"{signal.Signals(signum).name} received: stopping after the rows of this batch")

    def _install_signal_handlers(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers = {}

    # --- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        if trainer.is_global_zero:
            self.prepare()  # done already by `msds certify`; here for runs driven from Python
        trainer.strategy.barrier()  # the output is locked and checked (or discarded) before anyone reads it
        size = _dataset_size(trainer)
        scan = self._scan(self._existing(), size)
        if scan.problems and trainer.is_global_zero:
            rank_zero_warn(
                f"{len(scan.problems)} malformed result row(s) skipped; their images are done again:\n  "
                + "\n  ".join(scan.problems[:10])
            )
        trainer.strategy.barrier()  # everyone has read the old shards before anyone appends to them
        if trainer.is_global_zero:  # counts of images whose result row a killed job never wrote
            for path in self._existing_counts():
                keep_rows(path, set(scan.rows))
        trainer.strategy.barrier()
        pl_module.skip_indices = set(scan.rows)
        if scan.rows:
            rank_zero_info(f"resuming: {len(scan.rows)} image(s) already done in {self.output}")
        shard = self.shard_dir / f"rank{trainer.global_rank}.tsv"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._shard_lock = OutputLock(shard, hint="give another --results.output").acquire()
        if trainer.is_global_zero and self.fingerprint is not None:
            write_fingerprint(self.shard_dir / "fingerprint.json", self.fingerprint)
        # a data module may name columns of its own (the shift data sets: corruption, severity), computed
        # from each row's idx; without them the header is the module's alone, as before
        self._data = trainer.datamodule if getattr(trainer.datamodule, "row_columns", ()) else None
        data_columns = tuple(self._data.row_columns) if self._data is not None else ()
        self._writer = self._row_writer(shard, (*data_columns, *getattr(pl_module, "extra_columns", ())))
        if self.records_counts:
            self._counts_writer = CountsWriter(self.shard_dir / f"rank{trainer.global_rank}.counts")
        self._stop_signal = None
        self._install_signal_handlers()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        for row in prediction:
            record = row.pop(COUNTS_KEY, None)
            if record is not None and self._counts_writer is not None:
                self._counts_writer.write(row["idx"], record)  # first: a result row always has its counts
            if self._data is not None:
                row = {**row, **self._data.row_fields(row["idx"])}
            self._writer.write(**row)
        if self._stop_signal is not None:
            raise CertificationStopped(self._stop_signal)

    def _close_writers(self) -> None:
        for writer in (self._writer, self._counts_writer):
            if writer is not None:
                writer.close()
        self._writer = self._counts_writer = None

    def on_predict_end(self, trainer, pl_module) -> None:
        self._close_writers()
        trainer.strategy.barrier()  # every shard is complete
        if trainer.is_global_zero:
            # a complete run must hold every index of the data set; a debug run (limit_predict_batches,
            # fast_dev_run) merges what it did and a later full run fills in the rest
            limit = trainer.limit_predict_batches  # int 1 means one batch, float 1.0 means all of them
            complete = (
                limit is None or (isinstance(limit, float) and limit == 1.0)
            ) and not trainer.fast_dev_run
            indices = getattr(trainer.predict_dataloaders.dataset, "indices", None)
            shards = [p for p in self._existing() if p.is_file()]
            count = self._merge(shards, indices if complete else None, _dataset_size(trainer))
            count_files = [p for p in self._existing_counts() if p.is_file()]
            if count_files:
                self._merge_counts(count_files, _dataset_size(trainer))
            for shard in shards[1:] + count_files[1:]:  # the merges are written and verified: the shards can go
                shard.unlink()
            shutil.rmtree(self.shard_dir, ignore_errors=True)  # fingerprint copy and lock files
            table = self._summary(indices) + _precision_note(str(trainer.precision))
            self.output.with_suffix(".md").write_text(table)
            rank_zero_info(f"\n{count} images {self.done_word} -> {self.output}\n\n{table}")
        trainer.strategy.barrier()

    # --- the row format (PredictionWriter overrides these) ------------------------------------------------
    done_word = "certified"
    records_counts = True  # the counts sidecar (msds recertify)

    def _merge_counts(self, files, size) -> None:
        """Merge the counts sidecar; warn when it does not cover every result row (an output begun before
        the sidecar existed: ``msds recertify`` then re-decides only the images it has counts of)."""
        target = counts_path(self.output)
        merge_counts_files(files, target, size)
        missing = len(set(scan_result_files([self.output], size).rows) - set(scan_counts_files([target], size).rows))
        if missing:
            rank_zero_warn(f"{target} has no counts for {missing} image(s) certified before counts were recorded")

    def _scan(self, paths, size):
        return scan_result_files(paths, size)

    def _row_writer(self, path, extra_columns):
        return ResultWriter(path, extra_columns=extra_columns)

    def _merge(self, shards, expected, size) -> int:
        return merge_result_files(shards, self.output, expected=expected, size=size)

    def _summary(self, indices) -> str:
        """The summary table of the run's index set (all rows when it is unknown)."""
        results, note = read_results(self.output), ""
        if indices is not None:
            current = results.subset(indices)
            if len(current) < len(results):
                note = (f"\n({len(results) - len(current)} row(s) of {self.output} lie outside this run's "
                        f"index set (other skip/max) and are not in this table)\n")  # fmt: skip
            results = current
        table = format_markdown([summarize(results, self.radii)]) + note
        if is_shift_run(results):  # per corruption and severity, and their mean (mCA)
            table += "\n" + format_shift(summarize_shift(results, self.radii))
        return table

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()  # Lightning's teardown then reinstates its saved handlers; `msds certify` closes again

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "predict":
            self.close()


def _precision_note(precision: str) -> str:
    """Under the summary of a reduced-precision run: what its rows hold for."""
    if precision in ("32", "32-true", "64", "64-true"):
        return ""
    return (f"\n(precision {precision}: the base classifier ran in reduced precision; these results hold for "
            "that classifier, not for its fp32 version)\n")  # fmt: skip


class PredictionWriter(CertificationWriter):
    """:class:`CertificationWriter` for ``msds predict`` rows (:mod:`msds_lightning.results.prediction`):
    the same shards, locks, fingerprint, resume, merge and stop signals; the summary gives accuracy and
    abstention. :param radii: unused (kept so the two writers take the same arguments)."""

    done_word = "predicted"
    records_counts = False

    def __init__(
        self, output: str = "outputs/predict.tsv", radii: Sequence[float] = CIFAR10_RADII,
        progress_interval: float = 300.0, overwrite: bool = False,
    ):  # fmt: skip
        super().__init__(output, radii, progress_interval, overwrite)

    def _scan(self, paths, size):
        return scan_prediction_files(paths, size)

    def _row_writer(self, path, extra_columns):
        return PredictionRowWriter(path, extra_columns=extra_columns)

    def _merge(self, shards, expected, size) -> int:
        return merge_prediction_files(shards, self.output, expected=expected, size=size)

    def _summary(self, indices) -> str:
        rows = scan_prediction_files([self.output]).dicts(cast=str)
        if indices is not None:
            wanted = set(indices)
            rows = [r for r in rows if int(r["idx"]) in wanted]
        return prediction_summary(rows, self.output.name) + "\n"


def _dataset_size(trainer) -> int | None:
    """Size of the full predict split (idx must lie below it), when the data module says."""
    data = getattr(trainer, "datamodule", None)
    predict_dataset = getattr(data, "predict_dataset", None)
    if predict_dataset is None:
        return None
    dataset = getattr(predict_dataset(), "dataset", None)
    return len(dataset) if dataset is not None else None
