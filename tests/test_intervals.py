"""Intervals over the test set: Clopper–Pearson for certified accuracy, a seeded BCa bootstrap for the ACR,
in every table format, with a note when the subset is too small to resolve a point or two."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy.stats import beta, bootstrap

from msds_lightning.cli import main
from msds_lightning.results import read_results
from msds_lightning.results.analysis import (
    accuracy_intervals,
    acr_interval,
    format_csv,
    format_latex,
    format_markdown,
    summarize,
)

RADII = (0.0, 0.25, 0.5, 0.75)


def test_accuracy_intervals_are_clopper_pearson_by_hand():
    radius = np.array([0.0, 0.1, 0.3, 0.6, 0.9, 0.0, 0.2, 0.8])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 1])
    low, high = accuracy_intervals(radius, correct, RADII, 0.9)
    for k, r in enumerate(RADII):
        hits, n = int(np.sum(correct.astype(bool) & (radius >= r))), len(radius)
        expected_low = beta.ppf(0.05, hits, n - hits + 1) if hits else 0.0
        expected_high = beta.ppf(0.95, hits + 1, n - hits) if hits < n else 1.0
        assert low[k] == pytest.approx(expected_low, abs=1e-12)
        assert high[k] == pytest.approx(expected_high, abs=1e-12)


def test_acr_interval_is_the_seeded_bca_bootstrap():
    rng = np.random.default_rng(3)
    radius, correct = rng.uniform(0, 1, 200), rng.integers(0, 2, 200)
    values = radius * correct
    expected = bootstrap((values,), np.mean, n_resamples=2000, confidence_level=0.95, method="BCa",
                         random_state=np.random.default_rng(7)).confidence_interval  # fmt: skip
    assert acr_interval(radius, correct, 0.95, 2000, seed=7) == (expected.low, expected.high)
    assert acr_interval(radius, correct, 0.95, 2000, seed=7) == acr_interval(
        radius, correct, 0.95, 2000, seed=7
    )
    low, high = acr_interval(radius, correct, 0.95, 2000, seed=7)
    assert low < values.mean() < high
    assert acr_interval(np.zeros(5), np.ones(5)) == (0.0, 0.0)  # no spread: the point itself
    with pytest.raises(ValueError, match="confidence level must be in"):
        acr_interval(radius, correct, 1.5)


def test_every_format_carries_the_intervals_and_a_small_subset_gets_the_note(shared_fixtures):
    small = summarize(
        read_results(shared_fixtures / "cohen2019" / "cifar_0.25"), RADII, ci=0.95, resamples=1000
    )
    markdown = format_markdown([small])
    assert "| cifar_0.25 95% CI | [" in markdown
    assert "Note: cifar_0.25 has 500 images; its accuracy intervals reach up to ±" in markdown
    assert "BCa bootstrap (1,000 resamples, seed 0)" in markdown
    assert "cifar\\_0.25 95\\% CI & [" in format_latex([small])
    row = next(csv.DictReader(io.StringIO(format_csv([small]))))
    assert float(row["ci_low_r=0"]) == small.ci.accuracy[0][0] and row["ci_resamples"] == "1000"
    assert float(row["ci_low_r=0"]) < float(row["r=0"]) < float(row["ci_high_r=0"])
    without = format_markdown([summarize(read_results(shared_fixtures / "cohen2019" / "cifar_0.25"), RADII)])
    assert "CI" not in without and "Note:" not in without


def test_a_large_subset_gets_no_note(tmp_path):
    n = 10_000  # Clopper-Pearson half-width at p = 1/2: about 1 point
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, n)
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t0\t{0 if c else 1}\t{0.5 if c else 0.0}\t{c}\t0:00:01" for i, c in enumerate(correct)]
    path = tmp_path / "large.tsv"
    path.write_text("\n".join(lines) + "\n")
    text = format_markdown([summarize(read_results(path), (0.0, 0.25), ci=0.95, resamples=200)])
    assert "95% CI" in text and "Note:" not in text


def test_cli_ci_flag(shared_fixtures, capsys):
    path = str(shared_fixtures / "cohen2019" / "cifar_0.50")
    assert main(["analyze", path, "--radii", "0", "0.5", "--ci", "--resamples", "500"]) == 0
    assert "| cifar_0.50 95% CI | [" in capsys.readouterr().out
    assert main(["analyze", path, "--ci", "0.9", "--resamples", "500", "--format", "csv"]) == 0
    assert ",0.9,500,0" in capsys.readouterr().out
    assert main(["analyze", path, "--ci", "1.2"]) == 2
    assert "confidence level must be in (0, 1)" in capsys.readouterr().err
    assert main(["analyze", path, "--ci", "--resamples", "10"]) == 2


def test_coverage_on_simulated_test_sets():
    """Over simulated test sets drawn from a known distribution, the intervals cover the truth at least
    at the nominal level, within Monte-Carlo error (Clopper-Pearson is conservative; the bootstrap is not
    exact, so it gets the same 3-sd allowance)."""
    rng = np.random.default_rng(1)
    sets, n, level = 400, 200, 0.95
    allowance = 3 * np.sqrt(level * (1 - level) / sets)  # 0.033
    # P(correct) = 0.8 and radius ~ U(0, 1) on correct images: accuracy at r = 0.25 is 0.6, the ACR 0.4
    true_accuracy, true_acr = 0.8 * 0.75, 0.8 * 0.5
    covered_accuracy = covered_acr = 0
    for k in range(sets):
        correct = rng.random(n) < 0.8
        radius = np.where(correct, rng.random(n), 0.0)
        (low,), (high,) = accuracy_intervals(radius, correct, [0.25], level)
        covered_accuracy += low <= true_accuracy <= high
        lo, hi = acr_interval(radius, correct, level, resamples=400, seed=k)
        covered_acr += lo <= true_acr <= hi
    assert covered_accuracy / sets >= level - allowance
    assert covered_acr / sets >= level - allowance
