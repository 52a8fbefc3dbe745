"""Paired comparison of two certification results over the same images (``msds compare A.tsv B.tsv``).

Rows are paired by ``idx``. Two runs certified on the same images (and, with the same ``seed``, on the
same noise streams) give per-image outcomes that are strongly correlated, so the paired difference is
much tighter than two separate intervals would suggest. For every radius r and the ACR:

* **certified accuracy at r** (an image counts when ``correct == 1`` and ``radius >= r``, as in
  :mod:`~msds_lightning.results.analysis`): the difference ``acc_A - acc_B = (n10 - n01) / n`` where ``n10``
  counts the images only A certifies and ``n01`` those only B certifies. The p-value is the **exact
  McNemar test**: the two-sided binomial test of ``n10`` among the ``n10 + n01`` discordant images at
  1/2. The interval is Tango's score interval of the paired difference (Tango 1998; the one Fagerland,
  Lydersen & Laake 2013 recommend for paired proportions). The exact interval conditional on the
  discordant count (Clopper–Pearson on ``n10`` of ``m``, scaled by ``m / n``) is not used: it ignores the
  randomness of ``m``: in a simulation it covered a true difference of 0.02 only 56% of the time at
  n = 200 when B never wins, where Tango's interval covers it 94% of the time (tests/test_compare.py
  checks the coverage).
* **ACR** (mean of ``radius * correct``): a paired bootstrap of the per-image difference (images
  resampled with replacement, BCa interval, ``resamples`` resamples from ``numpy.random.default_rng(seed)``,
  so the same command prints the same interval).

Files over different images are refused: another idx set, another label at some idx, or (when both have a
run fingerprint, ``<stem>.fingerprint.json``) another data set or split.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .analysis import average_certified_radius, certified_accuracy
from .certification import Results, read_results

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """One paired comparison: the metric of A and of B, their difference A - B and its interval."""

    metric: str  # "r=0.25" (certified accuracy at that radius) or "ACR"
    a: float
    b: float
    low: float
    high: float
    p_value: float | None  # exact McNemar for certified accuracy; None for the bootstrap (ACR)
    a_only: int | None = None  # images only A certifies at this radius (n10)
    b_only: int | None = None  # images only B certifies (n01)

    @property
    def difference(self) -> float:
        return self.a - self.b

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Comparison:
    name_a: str
    name_b: str
    count: int
    confidence: float
    resamples: int
    seed: int
    rows: tuple[PairedDifference, ...]
    notes: tuple[str, ...] = ()


def _stored_fingerprint(path: str | Path) -> dict | None:
    """The run fingerprint stored beside a result file (``<stem>.fingerprint.json``), or None."""
    from ..runs import fingerprint_path

    stored = fingerprint_path(path)
    try:
        return json.loads(stored.read_text()) if stored.is_file() else None
    except (OSError, ValueError):
        return None


def pair(a: Results, b: Results) -> tuple[Results, Results]:
    """A and B with their rows in the same (sorted idx) order; ``ValueError`` when they are not over the
    same images: repeated idx, different idx sets, or a different label at some idx."""
    for r in (a, b):
        if len(r) == 0:
            raise ValueError(f"{r.name} has no result rows: nothing to compare")
        if len(np.unique(r.idx)) != len(r.idx):
            raise ValueError(f"{r.name} has repeated idx rows; merge or clean it first")
    only_a, only_b = np.setdiff1d(a.idx, b.idx), np.setdiff1d(b.idx, a.idx)
    if only_a.size or only_b.size:
        raise ValueError(
            f"{a.name} and {b.name} are not over the same images: {only_a.size} idx only in the first "
            f"(e.g. {only_a[:3].tolist()}), {only_b.size} only in the second (e.g. {only_b[:3].tolist()}); "
            "a paired comparison needs the same images (certify the missing ones, or select the same "
            "--data.init_args.skip/max)"
        )
    order_a, order_b = np.argsort(a.idx), np.argsort(b.idx)
    a, b = _take(a, order_a), _take(b, order_b)
    differ = np.flatnonzero(a.label != b.label)
    if differ.size:
        i = differ[0]
        raise ValueError(f"{a.name} and {b.name} disagree on the label of idx {a.idx[i]} ({a.label[i]} vs "
                         f"{b.label[i]}; {differ.size} image(s) in all): they are not over the same data")  # fmt: skip
    return a, b


def _take(r: Results, order: np.ndarray) -> Results:
    return Results(
        r.name, r.idx[order], r.label[order], r.predict[order], r.radius[order], r.correct[order],
        {c: [v[k] for k in order] for c, v in r.columns.items()},
    )  # fmt: skip


def _tango_score(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic for the paired difference ``delta = P(A only) - P(B only)``, with ``b`` images
    only A gets right and ``c`` only B: ``(b - c - n delta) / sqrt(n (2 q + delta (1 - delta)))``, where q
    is the maximum-likelihood P(B only) under that delta (the root of a quadratic; Tango 1998)."""
    qa = 2 * n
    qb = -b - c + (2 * n - b + c) * delta
    qc = -c * delta * (1 - delta)
    q = (np.sqrt(max(qb * qb - 4 * qa * qc, 0.0)) - qb) / (2 * qa)
    variance = n * (2 * q + delta * (1 - delta))
    numerator = b - c - n * delta
    if variance <= 0:
        return 0.0 if numerator == 0 else np.copysign(np.inf, numerator)
    return numerator / np.sqrt(variance)


def paired_proportion_interval(b: int, c: int, n: int, confidence: float = DEFAULT_CONFIDENCE):
    """Tango's score interval of the paired difference of two proportions (``b``: images only A gets right,
    ``c``: only B, ``n``: all images): the differences delta in [-1, 1] whose score statistic is within the
    normal quantile. Recommended for paired proportions by Fagerland, Lydersen & Laake (2013); unlike an
    interval conditional on the discordant count, it keeps its coverage when one side has no images."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    estimate = (b - c) / n

    def outside(delta: float) -> float:
        return abs(_tango_score(b, c, n, delta)) - z

    low = -1.0 if outside(-1.0) <= 0 else brentq(outside, -1.0, estimate, xtol=1e-12)
    high = 1.0 if outside(1.0) <= 0 else brentq(outside, estimate, 1.0, xtol=1e-12)
    return float(low), float(high)


def mcnemar_difference(a_ok: np.ndarray, b_ok: np.ndarray, confidence: float = DEFAULT_CONFIDENCE):
    """Paired difference of two 0/1 outcomes per image: ``(difference, low, high, p_value, n10, n01)``;
    the exact McNemar p-value and Tango's score interval (see the module docstring)."""
    from scipy.stats import binomtest

    a_ok, b_ok = np.asarray(a_ok, dtype=bool), np.asarray(b_ok, dtype=bool)
    n = a_ok.size
    n10, n01 = int(np.sum(a_ok & ~b_ok)), int(np.sum(~a_ok & b_ok))
    p_value = 1.0 if n10 + n01 == 0 else float(binomtest(n10, n10 + n01, 0.5).pvalue)
    low, high = paired_proportion_interval(n10, n01, n, confidence)
    return (n10 - n01) / n, low, high, p_value, n10, n01


def bootstrap_mean_difference(
    x: np.ndarray, y: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float, float]:  # fmt: skip
    """``(mean(x - y), low, high)``: a paired BCa bootstrap interval of the mean per-image difference."""
    from scipy.stats import bootstrap

    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    mean = float(np.mean(d))
    if np.all(d == d[0]):  # no spread: every resample gives the same mean (BCa is undefined)
        return mean, mean, mean
    res = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=confidence, method="BCa",
                    rng=np.random.default_rng(seed))  # fmt: skip
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(
    a: Results, b: Results, radii: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE, notes: Sequence[str] = (),
) -> Comparison:  # fmt: skip
    """Paired differences A - B of certified accuracy at each radius and of the ACR."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a bootstrap interval, got {resamples}")
    if any(r < 0 for r in radii):
        raise ValueError(f"radii must be >= 0, got {list(radii)}")
    for r in (a, b):
        if not np.all(np.isfinite(r.radius) | (r.correct == 0)):
            raise ValueError(f"{r.name} has non-finite radii on correct rows; the ACR is undefined")
    a, b = pair(a, b)
    rows = []
    for r in radii:
        a_ok = a.correct.astype(bool) & (a.radius >= r)
        b_ok = b.correct.astype(bool) & (b.radius >= r)
        _, low, high, p, n10, n01 = mcnemar_difference(a_ok, b_ok, confidence)
        rows.append(PairedDifference(f"r={r:g}", float(certified_accuracy(a.radius, a.correct, [r])[0]),
                                     float(certified_accuracy(b.radius, b.correct, [r])[0]), low, high, p,
                                     n10, n01))  # fmt: skip
    x, y = a.radius * a.correct, b.radius * b.correct
    _, low, high = bootstrap_mean_difference(x, y, resamples, seed, confidence)
    rows.append(PairedDifference("ACR", average_certified_radius(a.radius, a.correct),
                                 average_certified_radius(b.radius, b.correct), low, high, None))  # fmt: skip
    return Comparison(a.name, b.name, len(a), confidence, resamples, seed, tuple(rows), tuple(notes))


def compare_files(
    path_a: str | Path, path_b: str | Path, radii: Sequence[float], resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0, confidence: float = DEFAULT_CONFIDENCE, names: Sequence[str] | None = None,
) -> Comparison:  # fmt: skip
    """:func:`compare` of two result TSVs; refuses files whose run fingerprints name other data."""
    from ..runs import differences

    stored_a, stored_b = _stored_fingerprint(path_a), _stored_fingerprint(path_b)
    notes = []
    if stored_a is not None and stored_b is not None:
        data_a, data_b = ({k: v for k, v in f.items() if k.startswith("data.")} for f in (stored_a, stored_b))
        changed = differences(data_a, data_b)
        if changed:
            raise ValueError(f"{path_a} and {path_b} were certified on different data: " + "; ".join(changed))
        seeds = stored_a.get("model.seed"), stored_b.get("model.seed")
        if seeds[0] != seeds[1]:
            notes.append(f"the runs used different seeds ({seeds[0]} vs {seeds[1]}): the noise is not shared, "
                         "so the intervals are valid but wider than with one seed")  # fmt: skip
    else:
        notes.append("the files do not both have a run fingerprint: paired on idx and label only")
    name_a, name_b = names or (Path(path_a).name, Path(path_b).name)
    return compare(read_results(path_a, name_a), read_results(path_b, name_b), radii, resamples, seed,
                   confidence, notes)  # fmt: skip


def _interval(row: PairedDifference, digits: int) -> str:
    return f"[{row.low:+.{digits}f}, {row.high:+.{digits}f}]"


def format_markdown(c: Comparison) -> str:
    """Markdown: one line per metric with A, B, A - B, its interval, the discordant counts and p-value."""
    level = f"{100 * c.confidence:g}%"
    lines = [
        f"A = {c.name_a}, B = {c.name_b}: {c.count} paired images. Certified accuracy: exact McNemar "
        f"p-value and Tango score {level} interval; ACR: paired BCa bootstrap, {c.resamples:,} "
        f"resamples, seed {c.seed}.",
        "",
        f"| metric | A | B | A − B | {level} interval | only A | only B | p (McNemar) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in c.rows:
        digits = 4 if row.metric == "ACR" else 3
        counts = (
            ["-", "-", "-"]
            if row.p_value is None
            else [str(row.a_only), str(row.b_only), f"{row.p_value:.3g}"]
        )
        lines.append(f"| {row.metric} | {row.a:.{digits}f} | {row.b:.{digits}f} | {row.difference:+.{digits}f} | "
                     f"{_interval(row, digits)}{' *' if row.excludes_zero else ''} | " + " | ".join(counts) + " |")  # fmt: skip
    lines += ["", "\\* the interval excludes 0."] + [f"Note: {n}." for n in c.notes]
    return "\n".join(lines) + "\n"


def format_csv(c: Comparison) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["a", "b", "count", "metric", "value_a", "value_b", "difference", "low", "high",
                     "confidence", "a_only", "b_only", "p_value", "method"])  # fmt: skip
    for row in c.rows:
        method = "mcnemar_exact" if row.p_value is not None else f"bootstrap_bca_{c.resamples}_seed{c.seed}"
        writer.writerow([c.name_a, c.name_b, c.count, row.metric, repr(row.a), repr(row.b), repr(row.difference),
                         repr(row.low), repr(row.high), c.confidence, "" if row.a_only is None else row.a_only,
                         "" if row.b_only is None else row.b_only, "" if row.p_value is None else repr(row.p_value),
                         method])  # fmt: skip
    return buffer.getvalue()


def format_latex(c: Comparison) -> str:
    level = f"{100 * c.confidence:g}\\%"
    out = ["\\begin{tabular}{lcccc}", "\\toprule",
           f" & A & B & $A-B$ & {level} interval \\\\", "\\midrule"]  # fmt: skip
    for row in c.rows:
        digits = 4 if row.metric == "ACR" else 3
        metric = "ACR" if row.metric == "ACR" else f"$r={row.metric[2:]}$"
        interval = _interval(row, digits)
        interval = f"\\textbf{{{interval}}}" if row.excludes_zero else interval
        out.append(f"{metric} & {row.a:.{digits}f} & {row.b:.{digits}f} & {row.difference:+.{digits}f} & "
                   f"{interval} \\\\")  # fmt: skip
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


FORMATTERS = {"markdown": format_markdown, "csv": format_csv, "latex": format_latex}
