"""Certified accuracy, average certified radius (ACR) and abstention rate from result files.

Definitions (those of Cohen et al.'s ``analyze.py``, computed from the radius *as written* in the file):

* certified accuracy at r = fraction of rows with ``correct == 1`` and ``radius >= r`` (inclusive);
  the denominator is every row, abstentions included;
* ACR = mean over rows of ``radius * correct``;
* abstention rate = fraction of rows with ``predict < 0``.
"""

from __future__ import annotations

import csv
import io
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


def average_certified_radius(radius: np.ndarray, correct: np.ndarray) -> float:
    """ACR: the mean of ``radius · correct`` over all rows (NaN for no rows)."""
    radius, correct = np.asarray(radius, dtype=float), np.asarray(correct, dtype=float)
    return float(np.mean(radius * correct)) if radius.size else float("nan")


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


def _with_samples(summaries: Sequence[Summary]) -> bool:
    """Whether the tables get a samples-per-image column (some file records the samples it used)."""
    return any(np.isfinite(s.samples) for s in summaries)


def _samples_cell(s: Summary) -> str:
    return f"{s.samples:,.0f}" if np.isfinite(s.samples) else "-"


def summarize(results: Results, radii: Sequence[float] = CIFAR10_RADII) -> Summary:
    radii = tuple(float(r) for r in radii)
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
    )


def summarize_files(paths: Sequence[str], radii: Sequence[float] = CIFAR10_RADII) -> list[Summary]:
    return [summarize(read_results(p), radii) for p in paths]


def _radius_label(r: float, first: bool) -> str:
    text = "0" if r == 0 else str(float(r))
    return f"r={text}" if first else text


def format_markdown(summaries: Sequence[Summary]) -> str:
    """Markdown table: one row per file, certified accuracy at each radius (3 decimals), ACR (4), abstain."""
    radii = summaries[0].radii
    with_samples = _with_samples(summaries)
    cols = ["file", *(_radius_label(r, i == 0) for i, r in enumerate(radii)), "ACR", "abstain"]
    cols += ["samples/image"] if with_samples else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summaries:
        cells = [s.name, *(f"{a:.3f}" for a in s.accuracy), f"{s.acr:.4f}", f"{s.abstain:.3f}"]
        cells += [_samples_cell(s)] if with_samples else []
        lines.append("| " + " | ".join(cells) + " |")
    levels = [(s, lv) for s in summaries for lv in s.levels]
    if levels:
        lines += ["", "| file | level | sigma | answered | accuracy |", "|---|---|---|---|---|"]
        for s, lv in levels:
            lines.append(f"| {s.name} | {lv.level} | {lv.sigma:g} | {lv.answered} | {lv.accuracy:.3f} |")
    return "\n".join(lines) + "\n"


def format_latex(summaries: Sequence[Summary]) -> str:
    """A booktabs LaTeX table; the best certified accuracy per radius is bold."""
    radii = summaries[0].radii
    best = np.max(np.stack([s.accuracy for s in summaries]), axis=0)
    with_samples = _with_samples(summaries)
    spec = "l" + "c" * (len(radii) + 2 + with_samples)
    head = [
        "",
        *(f"$r={r:g}$" for r in radii),
        "ACR",
        "abstain",
        *(["samples/image"] if with_samples else []),
    ]
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(head) + " \\\\", "\\midrule"]
    for s in summaries:
        cells = [f"\\textbf{{{a:.3f}}}" if a == b else f"{a:.3f}" for a, b in zip(s.accuracy, best)]
        name = s.name.replace("_", "\\_")
        extra = [_samples_cell(s).replace(",", "{,}")] if with_samples else []
        out.append(" & ".join([name, *cells, f"{s.acr:.4f}", f"{s.abstain:.3f}", *extra]) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def format_csv(summaries: Sequence[Summary]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_samples = _with_samples(summaries)
    header = ["file", "count", *(f"r={r:g}" for r in summaries[0].radii), "acr", "abstain"]
    writer.writerow(header + (["samples_per_image"] if with_samples else []))
    for s in summaries:
        row = [s.name, s.count, *(repr(float(a)) for a in s.accuracy), repr(s.acr), repr(s.abstain)]
        writer.writerow(row + ([repr(s.samples)] if with_samples else []))
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
