"""Writes certification rows from every rank and merges them into one result TSV.

Each rank appends its rows to ``<output>.shards/rank<k>.tsv`` (flushed per row). At the end rank 0 merges
the previous merged file and all shards into ``<output>``, sorted by idx, with exactly one row per
dataset index of the run (a missing or conflicting index raises), then prints the summary table and
writes it next to the output as ``<output stem>.md``.

Resuming: at start every rank reads the indices already present in ``<output>`` and the shards, and the
module skips them. A killed run therefore loses at most the images in flight, and a restarted run —
with any number of processes — fills in exactly the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from ..analysis import CIFAR10_RADII, format_markdown, summarize
from ..results import ResultWriter, done_indices, merge_result_files, read_results


class CertificationWriter(BasePredictionWriter):
    """:param output: merged result TSV path
    :param radii: radii of the summary table ([0,1] pixel units)
    :param progress_interval: seconds between per-rank progress lines on stderr (0: never); the progress
        bar shows rank 0 only, and on a cluster every rank's pace matters"""

    def __init__(
        self, output: str = "outputs/certify.tsv", radii: Sequence[float] = CIFAR10_RADII,
        progress_interval: float = 300.0,
    ):  # fmt: skip
        super().__init__(write_interval="batch")
        self.progress_interval = float(progress_interval)
        self._started = self._last_report = 0.0
        self.output = Path(output)
        self.shard_dir = self.output.with_name(self.output.name + ".shards")
        self.radii = [float(r) for r in radii]
        self._writer: ResultWriter | None = None

    def _existing(self) -> list[Path]:
        return [self.output, *sorted(self.shard_dir.glob("rank*.tsv"))]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        done = done_indices(self._existing())
        trainer.strategy.barrier()  # everyone has read the old shards before anyone appends to them
        pl_module.skip_indices = done
        if done:
            rank_zero_info(f"resuming: {len(done)} image(s) already certified in {self.output}")
        columns = getattr(pl_module, "extra_columns", ())
        self._writer = ResultWriter(self.shard_dir / f"rank{trainer.global_rank}.tsv", extra_columns=columns)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        for row in prediction:
            self._writer.write(**row)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        trainer.strategy.barrier()  # every shard is complete
        if trainer.is_global_zero:
            # a complete run must hold every index of the data set; a debug run (limit_predict_batches,
            # fast_dev_run) merges what it did and a later full run fills in the rest
            limit = trainer.limit_predict_batches  # int 1 means one batch, float 1.0 means all of them
            complete = (
                limit is None or (isinstance(limit, float) and limit == 1.0)
            ) and not trainer.fast_dev_run
            expected = getattr(trainer.predict_dataloaders.dataset, "indices", None) if complete else None
            shards = self._existing()
            count = merge_result_files([p for p in shards if p.is_file()], self.output, expected=expected)
            for shard in shards[1:]:
                shard.unlink()
            self.shard_dir.rmdir()
            table = format_markdown([summarize(read_results(self.output), self.radii)])
            self.output.with_suffix(".md").write_text(table)
            rank_zero_info(f"\n{count} images certified -> {self.output}\n\n{table}")
        trainer.strategy.barrier()
