"""Re-decide certification runs from their recorded counts (``msds recertify``), without a forward pass.

A run of ``msds certify`` leaves ``<output>.tsv``, its settings (``<output stem>.fingerprint.json``) and every
image's counts (``<output stem>.counts``, :mod:`.counts`). :func:`recertify` replays the counts through the
engine's own decision code (:class:`~msds_lightning.smoothing.records.ReplayEngine`) under new settings —
α, p0, the off-class bound, the adaptive stopping grid, a subset of the cascade's σ — or assembles a cascade
from single-σ runs made with the same seed, n0, n, noise block, sampling, models and data (their noise
streams do not depend on the level, so their counts are the cascade's). With a run's own settings it gives
the run's rows back exactly (the ``time`` cell is copied from the source; for an assembled cascade it is the
sum of the single runs' times at the levels the image visited).

It writes nothing when an image would need draws no input recorded (e.g. a lower σ that the original
cascade never visited for it): the error names how many images, one example, and how to get the counts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runs import differences, fingerprint_path, write_fingerprint
from ..smoothing.adaptive import AdaptiveSampling
from ..smoothing.checks import check_alpha, check_sigmas
from ..smoothing.records import CountRecord, CountRecorder, MissingCounts, ReplayEngine
from .certification import (
    COHEN_COLUMNS,
    ResultWriter,
    certificate_row,
    certification_columns,
    parse_time,
    scan_result_files,
)
from .counts import CountsWriter, counts_path, read_count_records

# settings that may differ between the runs a cascade is assembled from (the rest must agree)
_PER_RUN = {"model.sigma", "model.p0", "model.official_columns"}


@dataclass
class SourceRun:
    """One input run: its result rows (idx -> {column: text}), settings and count records."""

    path: Path
    rows: dict[int, dict[str, str]]
    settings: dict[str, object]
    records: dict[int, CountRecord]
    data_columns: tuple[str, ...] = ()
    """Columns the data module adds after Cohen's (a shift run's ``corruption``, ``severity``): copied."""

    @property
    def sigmas(self) -> tuple[float, ...]:
        sigma = self.settings["model.sigma"]
        return tuple(float(s) for s in (sigma if isinstance(sigma, list) else [sigma]))

    @property
    def cascade(self) -> bool:
        return isinstance(self.settings["model.sigma"], list)


def load_run(path: str | Path) -> SourceRun:
    """Read a certification run's TSV, fingerprint and counts sidecar (``ValueError`` / ``FileNotFoundError``
    naming the missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result file not found: {path}")
    stored = fingerprint_path(path)
    if not stored.is_file():
        raise FileNotFoundError(f"{path} has no run fingerprint ({stored}): its settings are unknown, so it cannot be "
                                f"re-decided")  # fmt: skip
    try:
        settings = json.loads(stored.read_text())["settings"]
        num_classes = int(settings.get("model.num_classes", 10))
        settings["model.sigma"], settings["model.n0"], settings["model.n"]  # noqa: B018 (required keys)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{stored} is not a certification run's fingerprint ({type(err).__name__}: {err})"
        ) from None
    scan = scan_result_files([path])
    if scan.problems:
        raise ValueError(f"{path}: malformed row(s), e.g. {scan.problems[0]}")
    head = (scan.header or "").split("\t")
    rows = {idx: dict(zip(head, line.split("\t"))) for idx, (line, _) in scan.rows.items()}
    sidecar = counts_path(path)
    if not sidecar.is_file():
        raise FileNotFoundError(f"{path} has no counts sidecar ({sidecar}); runs certified before msds recertify "
                                f"existed did not record counts")  # fmt: skip
    run = SourceRun(path, rows, settings, read_count_records(sidecar, num_classes))
    own = set(certification_columns(run.sigmas, run.cascade, "clean" in head))
    run.data_columns = tuple(c for c in head[len(COHEN_COLUMNS) :] if c not in own)
    return run


def _sampling(settings: dict, radii: Sequence[float] | None) -> AdaptiveSampling | None:
    if settings.get("model.sampling", "fixed") != "adaptive":
        return None
    grid = settings.get("model.radii") if radii is None else list(radii)
    return AdaptiveSampling(
        int(settings["model.first_checkpoint"]), float(settings["model.checkpoint_ratio"]),
        float(settings["model.final_share"]), float(settings["model.tolerance"]), tuple(grid or ()),
    )  # fmt: skip


def recertify(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    alpha: float | None = None,
    p0: float | None = None,
    sigmas: Sequence[float] | None = None,
    cascade: bool | None = None,
    off_class: str = "goodman",
    radii: Sequence[float] | None = None,
    overwrite: bool = False,
    chunk: int = 512,
) -> int:
    """Re-decide the runs ``inputs`` into ``output`` (a result TSV, with its fingerprint and counts sidecar);
    returns the number of rows. ``None`` keeps the run's value; ``sigmas`` defaults to every σ of the inputs;
    ``cascade`` to the run's rule (several σ: the cascade; one: Cohen's rule unless the input was a
    one-level cascade); ``radii`` is the adaptive stopping grid (adaptive runs only)."""
    runs = [load_run(p) for p in inputs]
    output = Path(output)
    if any(output.resolve() == r.path.resolve() for r in runs):
        raise ValueError(f"--output {output} is one of the inputs; give a new file")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists; give another --output or --overwrite")
    first = runs[0]
    for other in runs[1:]:
        changed = [d for d in differences(first.settings, other.settings) if d.split(":")[0] not in _PER_RUN]
        if changed:
            raise ValueError(f"{first.path} and {other.path} were made with other settings, so their counts do not "
                             f"come from the same noise: " + "; ".join(changed))  # fmt: skip
        if set(other.rows) != set(first.rows):
            raise ValueError(f"{first.path} and {other.path} cover different images ({len(first.rows)} and "
                             f"{len(other.rows)} rows); certify the same data selection")  # fmt: skip
    settings = dict(first.settings)
    available = sorted({s for r in runs for s in r.sigmas}, reverse=True)
    sigmas = check_sigmas(sigmas if sigmas is not None else available)
    unknown = [s for s in sigmas if s not in available]
    if unknown:
        raise ValueError(f"sigma {unknown} was not certified by any input (they have {available})")
    if cascade is None:
        cascade = len(sigmas) > 1 or (len(runs) == 1 and first.cascade)
    alpha = check_alpha(settings["model.alpha"] if alpha is None else alpha)
    p0 = float(settings.get("model.p0", 0.5) if p0 is None else p0)
    n0, n, num_classes = (
        int(settings["model.n0"]),
        int(settings["model.n"]),
        int(settings.get("model.num_classes", 10)),
    )
    sampling = _sampling(settings, radii)

    records: dict[int, CountRecord] = {}
    for run in runs:
        for idx, record in run.records.items():
            records.setdefault(idx, CountRecord(num_classes)).merge(record, idx)
    engine = ReplayEngine(records, num_classes, list(sigmas), p0, cascade=cascade, sampling=sampling,
                          off_class=off_class)  # fmt: skip
    engine.recorder = used = CountRecorder(num_classes)
    indices = sorted(first.rows)
    certificates, missing = {}, []
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        try:
            certificates.update(zip(part, engine.certify(None, part, n0, n, alpha)))
        except MissingCounts:  # find every image that cannot be decided, then say so once
            for idx in part:
                try:
                    certificates[idx] = engine.certify(None, [idx], n0, n, alpha)[0]
                except MissingCounts as err:
                    missing.append(err)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(indices)} image(s) need draws the input run(s) did not record, e.g. "
            f"{missing[0]}. Certify each σ of the cascade on its own (same seed, n0, n, fixed sampling) and pass "
            f"those result files too; nothing was written"
        )

    official = all("clean" in run.rows[indices[0]] for run in runs) if indices else False
    columns = (*first.data_columns, *certification_columns(sigmas, cascade, official))
    new = dict(settings, **{"model.sigma": list(sigmas) if cascade else sigmas[0], "model.alpha": alpha,
                            "model.p0": p0, "model.official_columns": official})  # fmt: skip
    if off_class != "goodman":
        new["model.off_class"] = off_class
    if sampling is not None:
        new["model.radii"] = list(sampling.radii)
    new["recertified_from"] = [str(r.path) for r in runs]
    if not official:
        new.pop("model.official_columns")
    for path in (output, counts_path(output)):
        path.unlink(missing_ok=True)
    with (
        ResultWriter(output, columns, fsync=False) as rows,
        CountsWriter(counts_path(output), fsync=False) as sidecar,
    ):
        for idx in indices:
            cert, source = certificates[idx], first.rows[idx]
            visited = {r.sigma for r in getattr(cert, "levels", ())} or {sigmas[0]}
            seconds = sum(parse_time(r.rows[idx]["time"]) for r in runs if visited & set(r.sigmas))
            clean = int(source["clean"]) if official else None
            row = certificate_row(cert, idx, int(source["label"]), seconds, sigmas=sigmas, cascade=cascade, n0=n0,
                                  n=n, p0=p0, clean=clean)  # fmt: skip
            row.update({c: source[c] for c in first.data_columns})
            sidecar.write(idx, used.records[idx].to_json())
            rows.write(**row)
    write_fingerprint(fingerprint_path(output), new)
    return len(indices)
