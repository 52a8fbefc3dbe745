"""Published certification results, held as data with their sources (``published.yaml`` beside this file),
and the side-by-side table of ``msds analyze RESULTS --compare NAME``."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

from .analysis import average_certified_radius, certified_accuracy
from .certification import Results


@dataclass(frozen=True)
class PublishedResult:
    """One published row: certified accuracy at each published radius ([0,1] pixel units), ACR if given."""

    name: str
    paper: str
    source: str
    data: str
    sigma: object
    radii: dict[float, float]
    acr: float | None = None


def published_results() -> dict[str, PublishedResult]:
    """Every entry of the registry, by name."""
    import yaml

    text = resources.files("msds_lightning.results").joinpath("published.yaml").read_text()
    entries = {}
    for name, entry in yaml.safe_load(text).items():
        radii = {float(r): float(a) for r, a in entry["radii"].items()}
        entries[name] = PublishedResult(name, entry["paper"], entry["source"], entry["data"], entry["sigma"],
                                        radii, entry.get("acr"))  # fmt: skip
    return entries


def published_result(name: str) -> PublishedResult:
    entries = published_results()
    if name not in entries:
        raise ValueError(f"no published result {name!r}; known: {', '.join(sorted(entries))}")
    return entries[name]


def format_comparison(entry: PublishedResult, results: list[Results]) -> str:
    """Markdown: the published row, then for each result file its row and its difference at the published
    radii (and ACR when the entry has one); the source under the table."""
    radii = sorted(entry.radii)
    with_acr = entry.acr is not None
    head = ["", *(f"r={r:g}" for r in radii), *(["ACR"] if with_acr else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    published = [entry.radii[r] for r in radii] + ([entry.acr] if with_acr else [])
    digits = [3] * len(radii) + ([4] if with_acr else [])
    lines.append("| " + " | ".join([f"{entry.name} (published)", *map(_cell, published, digits)]) + " |")
    for res in results:
        ours = list(certified_accuracy(res.radius, res.correct, radii))
        ours += [average_certified_radius(res.radius, res.correct)] if with_acr else []
        lines.append("| " + " | ".join([res.name, *map(_cell, ours, digits)]) + " |")
        diff = [f"{round(o - p, d) + 0.0:+.{d}f}" for o, p, d in zip(ours, published, digits)]  # no "-0.000"
        lines.append("| " + " | ".join([f"{res.name} − published", *diff]) + " |")
    lines += ["", f"Published: {entry.paper}; {entry.data}; σ = {entry.sigma}. Source: {entry.source}."]
    return "\n".join(lines) + "\n"


def _cell(value: float, digits: int) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"
