"""Certified accuracy, average certified radius (ACR) and abstention rate from result files.

Definitions (those of Cohen et al.'s ``analyze.py``, computed from the radius *as written* in the file):

* certified accuracy at r = fraction of rows with ``correct == 1`` and ``radius >= r`` (inclusive);
  the denominator is every row, abstentions included;
* ACR = mean over rows of ``radius * correct``;
* abstention rate = fraction of rows with ``predict < 0``;
* certify-or-fallback accuracy (only for files with the official MSDS ``corr_uc`` column, ``msds certify
  --model.official_columns true``) = mean of ``corr_uc``: the certified class where the image is
  certified, the clean classifier's class elsewhere. A hybrid number: no guarantee on the fallback part;
* high-probability accuracy at r (optional, :func:`high_probability_accuracy`) = a lower confidence bound
  on the certified accuracy that accounts for each certificate's Monte-Carlo failure probability;
* intervals over the test set (optional, :func:`accuracy_intervals`, :func:`acr_interval`): what the
  evaluated images say about the distribution they were drawn from.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .certification import Results, read_results

CIFAR10_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
IMAGENET_RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def certified_accuracy(radius: np.ndarray, correct: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """Fraction of rows correct and certified at each radius r (``radius >= r``, inclusive), over all rows
    (abstentions: radius 0, incorrect); NaN for no rows. The project's one definition: the table, the
    torchmetrics metric and the W&B curve all call it. Radii in [0, 1] pixel units."""
    radius, correct = np.asarray(radius, dtype=float), np.asarray(correct).astype(bool)
    if radius.size == 0:
        return np.full(len(radii), np.nan)
    return np.array([np.mean(correct & (radius >= r)) for r in radii])


def check_high_prob_levels(alpha: float, rho: float) -> tuple[float, float]:
    """``(alpha, rho)`` as floats if both lie strictly inside (0, 1); a ValueError naming the bad one if not."""
    for name, value in (("alpha", alpha), ("rho", rho)):
        if not 0.0 < float(value) < 1.0:  # also rejects NaN
            raise ValueError(f"high-probability accuracy: {name} must be in (0, 1), got {value!r}")
    return float(alpha), float(rho)


def high_probability_accuracy(
    radius: np.ndarray,
    correct: np.ndarray,
    radii: Sequence[float],
    alpha: float = 0.001,
    rho: float = 0.001,
) -> np.ndarray:
    """Cohen et al.'s high-probability certified accuracy at each radius r (radii in [0, 1] pixel units).

    Each row's certificate is a Monte-Carlo one that is wrong with probability at most ``alpha`` (the
    ``alpha`` of ``certify``), independently across images. The certified accuracy from the file,
    :func:`certified_accuracy`, may therefore count rows whose certificate is wrong. This returns

        certified_accuracy(r) - alpha - sqrt(alpha (1 - alpha) ln(1/rho) / n) - ln(1/rho) / (3 n),

    n = number of rows (abstentions included): a lower bound on the fraction of the test set that is
    correctly classified and truly robust at r, holding with probability at least 1 - ``rho`` over the
    Monte-Carlo noise (a Bernstein-type bound on the number of wrong certificates, whose variance is at
    most alpha (1 - alpha) for alpha <= 1/2).

    It is the formula of ``HighProbAccuracy.at_radius`` in locuslab/smoothing ``code/analyze.py``, with its
    constants kept so the numbers match (``tests/test_high_prob.py`` checks all of Cohen et al.'s files
    to 1e-12). The textbook one-sided Bernstein bound has ``2 alpha (1 - alpha)`` under the square root
    and ``2 ln(1/rho) / (3 n)`` as its last term, a larger margin (0.0155 instead of 0.0093 for n = 500,
    alpha = rho = 0.001). The value is not clipped at 0: a negative one is a vacuous bound. NaN for no
    rows; alpha and rho outside (0, 1) raise ValueError.
    """
    alpha, rho = check_high_prob_levels(alpha, rho)
    accuracy = certified_accuracy(radius, correct, radii)
    n = np.asarray(radius).size
    if n == 0:
        return accuracy  # all NaN, as certified_accuracy gives for no rows
    log_term = math.log(1.0 / rho)
    margin = alpha + math.sqrt(alpha * (1.0 - alpha) * log_term / n) + log_term / (3.0 * n)
    return accuracy - margin


def average_certified_radius(radius: np.ndarray, correct: np.ndarray) -> float:
    """ACR: the mean of ``radius · correct`` over all rows (NaN for no rows)."""
    radius, correct = np.asarray(radius, dtype=float), np.asarray(correct, dtype=float)
    return float(np.mean(radius * correct)) if radius.size else float("nan")


def check_ci_level(level: float) -> float:
    """A confidence level strictly inside (0, 1), e.g. 0.95."""
    if not 0.0 < float(level) < 1.0:  # also rejects NaN
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    return float(level)


def accuracy_intervals(
    radius: np.ndarray, correct: np.ndarray, radii: Sequence[float], level: float = 0.95
) -> np.ndarray:
    """Clopper–Pearson intervals [2, len(radii)] (low row, high row) for the certified accuracy at each
    radius, over the evaluated images: what the table's accuracy says about the whole test distribution the
    images were drawn from, at confidence ``level`` (statsmodels ``proportion_confint``, ``method="beta"``)."""
    from statsmodels.stats.proportion import proportion_confint

    level = check_ci_level(level)
    radius, correct = np.asarray(radius, dtype=float), np.asarray(correct).astype(bool)
    n = radius.size
    if n == 0:
        return np.full((2, len(radii)), np.nan)
    hits = [int(np.sum(correct & (radius >= r))) for r in radii]
    low, high = proportion_confint(hits, n, alpha=1.0 - level, method="beta")
    return np.vstack([np.asarray(low, dtype=float), np.asarray(high, dtype=float)])


def acr_interval(
    radius: np.ndarray, correct: np.ndarray, level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """A seeded BCa bootstrap interval (scipy ``bootstrap``, ``resamples`` resamples of the images) for the
    ACR at confidence ``level``; ``(ACR, ACR)`` when every image has the same ``radius · correct``."""
    from scipy.stats import bootstrap

    level = check_ci_level(level)
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100 for a bootstrap interval, got {resamples}")
    values = np.asarray(radius, dtype=float) * np.asarray(correct, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    if np.all(values == values[0]):  # no spread: BCa is undefined, and the interval is the point
        return float(values[0]), float(values[0])
    res = bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=level, method="BCa",
                    random_state=np.random.default_rng(seed))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


WIDE_INTERVAL = 0.02  # a note under the table when an accuracy interval reaches further than ±2 points


@dataclass
class LevelStats:
    """How one noise level of a multi-scale cascade answered: images it certified and their accuracy."""

    level: int
    sigma: float
    answered: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else float("nan")


@dataclass(frozen=True)
class TestSetIntervals:
    """Intervals over the evaluated images at confidence ``level``: Clopper–Pearson for the certified
    accuracy at each radius (``accuracy``: low row, high row), a seeded BCa bootstrap for the ACR."""

    level: float
    accuracy: np.ndarray
    acr: tuple[float, float]
    resamples: int
    seed: int

    def wide(self, accuracy: np.ndarray) -> bool:
        """Whether some accuracy interval reaches further than ±WIDE_INTERVAL from the estimate."""
        return bool(np.any(np.maximum(accuracy - self.accuracy[0], self.accuracy[1] - accuracy) > WIDE_INTERVAL))


@dataclass
class Summary:
    name: str
    count: int
    radii: tuple[float, ...]
    accuracy: np.ndarray
    acr: float
    abstain: float
    levels: list[LevelStats] = field(default_factory=list)
    samples: float = float("nan")  # mean forward passes per image (the ``samples`` column), nan if absent
    high_prob: np.ndarray | None = None  # high-probability accuracy at each radius, if asked for
    high_prob_levels: tuple[float, float] | None = None  # its (alpha, rho)
    fallback: float = float("nan")  # certify-or-fallback accuracy (mean of ``corr_uc``), nan if absent
    ci: TestSetIntervals | None = None  # intervals over the test set, if asked for


def _with_fallback(summaries: Sequence[Summary]) -> bool:
    """Whether the tables get a certify-or-fallback accuracy column (some file has ``corr_uc``)."""
    return any(np.isfinite(s.fallback) for s in summaries)


def _fallback_cell(s: Summary) -> str:
    return f"{s.fallback:.3f}" if np.isfinite(s.fallback) else "-"


def _with_samples(summaries: Sequence[Summary]) -> bool:
    """Whether the tables get a samples-per-image column (some file records the samples it used)."""
    return any(np.isfinite(s.samples) for s in summaries)


def _samples_cell(s: Summary) -> str:
    return f"{s.samples:,.0f}" if np.isfinite(s.samples) else "-"


def summarize(
    results: Results,
    radii: Sequence[float] = CIFAR10_RADII,
    high_prob: tuple[float, float] | None = None,
    ci: float | None = None,
    resamples: int = 10_000,
    seed: int = 0,
) -> Summary:
    """The table row of one result file; ``high_prob=(alpha, rho)`` adds :func:`high_probability_accuracy`,
    ``ci=LEVEL`` the intervals over the test set (:func:`accuracy_intervals`, :func:`acr_interval` with
    ``resamples`` and ``seed``)."""
    radii = tuple(float(r) for r in radii)
    intervals = None
    if ci is not None:
        intervals = TestSetIntervals(
            check_ci_level(ci), accuracy_intervals(results.radius, results.correct, radii, ci),
            acr_interval(results.radius, results.correct, ci, resamples, seed), int(resamples), int(seed),
        )  # fmt: skip
    if high_prob is not None:
        high_prob = check_high_prob_levels(*high_prob)
    levels = []
    if "level" in results.columns:
        level = results.column("level", int)
        sigma = results.column("sigma", float) if "sigma" in results.columns else np.full(len(level), np.nan)
        answered = results.predict >= 0
        for lv in sorted(set(level[answered].tolist())):
            rows = answered & (level == lv)
            levels.append(
                LevelStats(lv, float(sigma[rows][0]), int(rows.sum()), int(results.correct[rows].sum()))
            )
    return Summary(
        name=results.name,
        count=len(results),
        radii=radii,
        accuracy=certified_accuracy(results.radius, results.correct, radii),
        acr=average_certified_radius(results.radius, results.correct),
        abstain=float(np.mean(results.predict < 0)) if len(results) else float("nan"),
        levels=levels,
        samples=float(np.mean(results.column("samples")))
        if "samples" in results.columns and len(results)
        else float("nan"),
        high_prob=None
        if high_prob is None
        else high_probability_accuracy(results.radius, results.correct, radii, *high_prob),
        high_prob_levels=high_prob,
        fallback=float(np.mean(results.column("corr_uc", int)))
        if "corr_uc" in results.columns and len(results)
        else float("nan"),
        ci=intervals,
    )


def summarize_files(
    paths: Sequence[str],
    radii: Sequence[float] = CIFAR10_RADII,
    high_prob: tuple[float, float] | None = None,
) -> list[Summary]:
    return [summarize(read_results(p), radii, high_prob) for p in paths]


def _high_prob_label(s: Summary, latex: bool = False) -> str:
    """The row label of a file's high-probability accuracy, e.g. ``high-prob (alpha=0.001, rho=0.001)``."""
    a, r = s.high_prob_levels
    if latex:
        return f"high-prob ($\\alpha={a:g}$, $\\rho={r:g}$)"
    return f"high-prob (alpha={a:g}, rho={r:g})"


def _radius_label(r: float, first: bool) -> str:
    text = "0" if r == 0 else str(float(r))
    return f"r={text}" if first else text


def _interval_notes(summaries: Sequence[Summary]) -> list[str]:
    """Lines under a markdown table with intervals: how they were made, and which files are too small to
    resolve differences of a point or two."""
    with_ci = [s for s in summaries if s.ci is not None]
    if not with_ci:
        return []
    ci = with_ci[0].ci
    lines = ["", f"{ci.level:.0%} intervals over the evaluated images: Clopper–Pearson for the certified accuracy, "
             f"a BCa bootstrap ({ci.resamples:,} resamples, seed {ci.seed}) for the ACR."]  # fmt: skip
    for s in with_ci:
        if s.ci.wide(s.accuracy):
            reach = np.max(np.maximum(s.accuracy - s.ci.accuracy[0], s.ci.accuracy[1] - s.accuracy))
            lines.append(f"Note: {s.name} has {s.count} images; its accuracy intervals reach up to ±{100 * reach:.1f} "
                         f"points (wider than ±{100 * WIDE_INTERVAL:.0f}), so differences of a point or two are "
                         "not resolved: certify more images.")  # fmt: skip
    return lines


def format_markdown(summaries: Sequence[Summary]) -> str:
    """Markdown table: one row per file, certified accuracy at each radius (3 decimals), ACR (4), abstain,
    and "fallback acc" (certify-or-fallback accuracy) when a file has ``corr_uc``; a file summarized with
    ``high_prob`` gets a second row, its high-probability accuracy."""
    radii = summaries[0].radii
    with_samples, with_fallback = _with_samples(summaries), _with_fallback(summaries)
    cols = ["file", *(_radius_label(r, i == 0) for i, r in enumerate(radii)), "ACR", "abstain"]
    cols += ["fallback acc"] if with_fallback else []
    cols += ["samples/image"] if with_samples else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summaries:
        cells = [s.name, *(f"{a:.3f}" for a in s.accuracy), f"{s.acr:.4f}", f"{s.abstain:.3f}"]
        cells += [_fallback_cell(s)] if with_fallback else []
        cells += [_samples_cell(s)] if with_samples else []
        lines.append("| " + " | ".join(cells) + " |")
        if s.high_prob is not None:
            cells = [f"{s.name} {_high_prob_label(s)}", *(f"{a:.3f}" for a in s.high_prob)]
            cells += ["-"] * (2 + with_fallback + with_samples)  # no ACR, abstention, ... for this row
            lines.append("| " + " | ".join(cells) + " |")
        if s.ci is not None:
            cells = [f"{s.name} {s.ci.level:.0%} CI", *(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in s.ci.accuracy.T)]
            cells += [f"[{s.ci.acr[0]:.4f}, {s.ci.acr[1]:.4f}]"] + ["-"] * (1 + with_fallback + with_samples)
            lines.append("| " + " | ".join(cells) + " |")
    lines += _interval_notes(summaries)
    levels = [(s, lv) for s in summaries for lv in s.levels]
    if levels:
        lines += ["", "| file | level | sigma | answered | accuracy |", "|---|---|---|---|---|"]
        for s, lv in levels:
            lines.append(f"| {s.name} | {lv.level} | {lv.sigma:g} | {lv.answered} | {lv.accuracy:.3f} |")
    return "\n".join(lines) + "\n"


def format_latex(summaries: Sequence[Summary]) -> str:
    """A booktabs LaTeX table; the best certified accuracy per radius is bold. A file summarized with
    ``high_prob`` gets a second row, its high-probability accuracy (never bold)."""
    radii = summaries[0].radii
    best = np.max(np.stack([s.accuracy for s in summaries]), axis=0)
    with_samples, with_fallback = _with_samples(summaries), _with_fallback(summaries)
    spec = "l" + "c" * (len(radii) + 2 + with_fallback + with_samples)
    head = [
        "",
        *(f"$r={r:g}$" for r in radii),
        "ACR",
        "abstain",
        *(["fallback acc"] if with_fallback else []),
        *(["samples/image"] if with_samples else []),
    ]
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for s in summaries:
        cells = [f"\\textbf{{{a:.3f}}}" if a == b else f"{a:.3f}" for a, b in zip(s.accuracy, best)]
        name = s.name.replace("_", "\\_")
        extra = [_fallback_cell(s)] if with_fallback else []
        extra += [_samples_cell(s).replace(",", "{,}")] if with_samples else []
        out.append(" & ".join([name, *cells, f"{s.acr:.4f}", f"{s.abstain:.3f}", *extra]) + " \\\\")
        if s.high_prob is not None:
            label = f"{name} {_high_prob_label(s, latex=True)}"
            cells = [f"{a:.3f}" for a in s.high_prob] + ["--"] * (2 + with_fallback + with_samples)
            out.append(" & ".join([label, *cells]) + " \\\\")
        if s.ci is not None:
            cells = [f"[{lo:.3f}, {hi:.3f}]" for lo, hi in s.ci.accuracy.T]
            cells += [f"[{s.ci.acr[0]:.4f}, {s.ci.acr[1]:.4f}]"] + ["--"] * (1 + with_fallback + with_samples)
            out.append(" & ".join([f"{name} {s.ci.level:.0%}".replace("%", "\\%") + " CI", *cells]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def format_csv(summaries: Sequence[Summary]) -> str:
    """One row per file, full precision (``fallback_acc`` when a file has ``corr_uc``, empty for the
    others). With ``high_prob``: columns ``high_prob_r=<r>`` per radius and
    ``high_prob_alpha``, ``high_prob_rho`` at the end (empty for a file summarized without it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_samples, with_fallback = _with_samples(summaries), _with_fallback(summaries)
    with_high_prob = any(s.high_prob is not None for s in summaries)
    radii = summaries[0].radii
    header = ["file", "count", *(f"r={r:g}" for r in radii), "acr", "abstain"]
    header += ["fallback_acc"] if with_fallback else []
    header += ["samples_per_image"] if with_samples else []
    if with_high_prob:
        header += [*(f"high_prob_r={r:g}" for r in radii), "high_prob_alpha", "high_prob_rho"]
    with_ci = any(s.ci is not None for s in summaries)
    if with_ci:
        header += [*(f"ci_low_r={r:g}" for r in radii), *(f"ci_high_r={r:g}" for r in radii), "acr_ci_low",
                   "acr_ci_high", "ci_level", "ci_resamples", "ci_seed"]  # fmt: skip
    writer.writerow(header)
    for s in summaries:
        row = [s.name, s.count, *(repr(float(a)) for a in s.accuracy), repr(s.acr), repr(s.abstain)]
        row += [repr(s.fallback) if np.isfinite(s.fallback) else ""] if with_fallback else []
        row += [repr(s.samples)] if with_samples else []
        if s.high_prob is not None:
            row += [*(repr(float(a)) for a in s.high_prob), *(repr(v) for v in s.high_prob_levels)]
        elif with_high_prob:
            row += [""] * (len(radii) + 2)
        if s.ci is not None:
            row += [*(repr(float(v)) for v in s.ci.accuracy[0]), *(repr(float(v)) for v in s.ci.accuracy[1])]
            row += [repr(s.ci.acr[0]), repr(s.ci.acr[1]), repr(s.ci.level), s.ci.resamples, s.ci.seed]
        elif with_ci:
            row += [""] * (2 * len(radii) + 5)
        writer.writerow(row)
    return buffer.getvalue()


FORMATTERS = {"markdown": format_markdown, "latex": format_latex, "csv": format_csv}


def plot_certified_accuracy(
    results: Sequence[Results], path: str, title: str | None = None, step: float = 0.01
):
    """Certified accuracy vs radius, one step curve per result file, saved as an image (PNG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: certification machines have no display
    import matplotlib.pyplot as plt

    top = max((float(r.radius.max()) for r in results if len(r)), default=0.0)
    grid = np.arange(0.0, top + step, step)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        ax.step(grid, certified_accuracy(r.radius, r.correct, grid), where="post", label=r.name)
    ax.set_xlabel("radius (l2, [0,1] pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- distribution shift: rows grouped by corruption and severity -------------------------------------------
SHIFT_COLUMNS = ("corruption", "severity")


def is_shift_run(results: Results) -> bool:
    """Whether a result file comes from a shift data set (it has ``corruption`` and ``severity`` columns)."""
    return all(c in results.columns for c in SHIFT_COLUMNS)


@dataclass
class ShiftCell:
    """One row of a shift table: ``corruption`` at ``severity`` (``corruption`` None: the mean over the
    corruptions, ``severity`` None: over every severity), over ``count`` images (the mean rows: in total)."""

    corruption: str | None
    severity: int | None
    count: int
    accuracy: np.ndarray
    acr: float
    corruptions: int = 1  # how many corruptions a mean row averages


@dataclass
class ShiftSummary:
    """A shift run's table: one :class:`ShiftCell` per corruption and severity (corruptions in index order,
    i.e. the data set's), then the mean over corruptions per severity (mCA) and over every cell."""

    name: str
    radii: tuple[float, ...]
    cells: list[ShiftCell]
    means: list[ShiftCell]


def summarize_shift(results: Results, radii: Sequence[float] = CIFAR10_RADII) -> ShiftSummary:
    """Certified accuracy at ``radii`` and ACR per corruption and severity, and their unweighted means over
    the corruptions at each severity (the mean corrupted certified accuracy, mCA; every corruption counts the
    same, as in Hendrycks & Dietterich's mCE) and over all cells."""
    if not is_shift_run(results):
        raise ValueError(f"{results.name} has no {' / '.join(SHIFT_COLUMNS)} columns: not a shift run")
    radii = tuple(float(r) for r in radii)
    corruption = np.asarray(results.columns["corruption"], dtype=object)
    severity = results.column("severity", int)
    first = {}
    for c, i in zip(corruption, results.idx):
        first[c] = min(first.get(c, i), i)
    cells = []
    for c in sorted(first, key=first.get):  # the index code's order: the data set's corruption order
        for s in sorted(set(severity[corruption == c].tolist())):
            rows = (corruption == c) & (severity == s)
            r, k = results.radius[rows], results.correct[rows]
            cells.append(
                ShiftCell(
                    c, s, int(rows.sum()), certified_accuracy(r, k, radii), average_certified_radius(r, k)
                )
            )

    def mean(group: list[ShiftCell], s: int | None) -> ShiftCell:
        return ShiftCell(None, s, sum(x.count for x in group), np.mean([x.accuracy for x in group], axis=0),
                         float(np.mean([x.acr for x in group])), len({x.corruption for x in group}))  # fmt: skip

    means = [mean([x for x in cells if x.severity == s], s) for s in sorted({x.severity for x in cells})]
    if len(means) > 1:
        means.append(mean(cells, None))
    return ShiftSummary(results.name, radii, cells, means)


def _shift_label(cell: ShiftCell) -> tuple[str, str]:
    if cell.corruption is not None:
        return cell.corruption, str(cell.severity)
    return f"mean of {cell.corruptions}", "all" if cell.severity is None else str(cell.severity)


def format_shift(summary: ShiftSummary, fmt: str = "markdown") -> str:
    """The shift table of one run in ``"markdown"``, ``"latex"`` or ``"csv"``: a row per corruption and
    severity, then the mean over corruptions per severity (mCA: ``mean of K``) and over every cell (``all``)."""
    radii = summary.radii
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["file", "corruption", "severity", "count", *(f"r={r:g}" for r in radii), "acr", "corruptions"]
        )
        for cell in [*summary.cells, *summary.means]:
            writer.writerow([summary.name, cell.corruption if cell.corruption is not None else "mean",
                             cell.severity if cell.severity is not None else "all", cell.count,
                             *(repr(float(a)) for a in cell.accuracy), repr(cell.acr), cell.corruptions])  # fmt: skip
        return buffer.getvalue()
    head = [
        "corruption",
        "severity",
        "images",
        *(_radius_label(r, i == 0) for i, r in enumerate(radii)),
        "ACR",
    ]
    body = [[*_shift_label(c), str(c.count), *(f"{a:.3f}" for a in c.accuracy), f"{c.acr:.4f}"]
            for c in [*summary.cells, *summary.means]]  # fmt: skip
    if fmt == "latex":
        out = [f"% {summary.name}", f"\\begin{{tabular}}{{ll{'c' * (len(radii) + 2)}}}", "\\toprule",
               " & ".join([*head[:3], *(f"$r={r:g}$" for r in radii), "ACR"]) + " \\\\", "\\midrule"]  # fmt: skip
        for k, row in enumerate(body):
            if k == len(summary.cells):
                out.append("\\midrule")
            out.append(" & ".join(cell.replace("_", "\\_") for cell in row) + " \\\\")
        return "\n".join([*out, "\\bottomrule", "\\end{tabular}"]) + "\n"
    if fmt != "markdown":
        raise ValueError(f"format must be markdown, latex or csv, got {fmt!r}")
    lines = [f"Certified accuracy under distribution shift: {summary.name}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", "mean of K: the unweighted mean over the K corruptions at that severity (mCA), or over every "
              "corruption and severity (all); images: their total."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_shift(summaries: Sequence[ShiftSummary], path: str) -> None:
    """Certified accuracy vs severity, one panel per run: the mean over corruptions (mCA) at each severity,
    one line per radius of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(5 * len(summaries), 4), dpi=120, squeeze=False)
    for ax, summary in zip(axes[0], summaries):
        per_severity = [m for m in summary.means if m.severity is not None]
        x = [m.severity for m in per_severity]
        for k, r in enumerate(summary.radii):
            ax.plot(x, [m.accuracy[k] for m in per_severity], marker="o", label=f"r = {r:g}")
        ax.set_xticks(x)
        ax.set_xlabel("severity")
        ax.set_ylabel(f"certified accuracy, mean of {max(m.corruptions for m in per_severity)} corruptions")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(summary.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
