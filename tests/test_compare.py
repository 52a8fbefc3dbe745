"""`msds compare`: paired differences of certified accuracy (exact McNemar, Tango interval) and ACR
(paired bootstrap), against references and by simulation."""

import csv
import io
import json

import numpy as np
import pytest

from msds_lightning.cli import main
from msds_lightning.results import Results, read_results
from msds_lightning.results.analysis import average_certified_radius, certified_accuracy
from msds_lightning.results.compare import (
    bootstrap_mean_difference,
    compare,
    compare_files,
    mcnemar_difference,
    paired_proportion_interval,
)


def results(name, idx, label, predict, radius) -> Results:
    idx, label, predict = (np.asarray(v, dtype=np.int64) for v in (idx, label, predict))
    radius = np.asarray(radius, dtype=float)
    correct = (predict == label).astype(np.int64)
    columns = {"idx": [str(i) for i in idx]}
    return Results(name, idx, label, predict, radius, correct, columns)


def write_tsv(path, rows, fingerprint=None):
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                    + "".join(f"{i}\t{y}\t{p}\t{r}\t{int(p == y)}\t0:00:00.1\n" for i, y, p, r in rows))  # fmt: skip
    if fingerprint is not None:
        path.with_suffix(".fingerprint.json").write_text(json.dumps(fingerprint))
    return path


def test_mcnemar_p_value_is_statsmodels_exact_mcnemar():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.random(60) < 0.7, rng.random(60) < 0.6
        _, _, _, p, n10, n01 = mcnemar_difference(a, b)
        table = [[np.sum(a & b), n10], [n01, np.sum(~a & ~b)]]
        assert p == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_tango_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2013), Table of the Bentur et al. (2009) airway data: n11=1, n12=1,
    # n21=7, n22=12; Tango's asymptotic score interval of the difference -0.286 is (-0.517, -0.026).
    low, high = paired_proportion_interval(1, 7, 21)
    assert (round(low, 3), round(high, 3)) == (-0.517, -0.026)
    assert paired_proportion_interval(7, 1, 21) == pytest.approx((-high, -low))  # symmetric in A and B


@pytest.mark.parametrize(("n", "p10", "p01"), [(200, 0.02, 0.0), (100, 0.08, 0.02), (60, 0.1, 0.1)])
def test_interval_covers_the_true_paired_difference(n, p10, p01):
    """Simulated pairs with known P(only A) and P(only B): the 95% interval covers p10 - p01 in about 95%
    of 1,000 trials (the conditional exact interval covered (200, 0.02, 0) 56% of the time)."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(1000):
        u = rng.random(n)
        a = u < 0.6 + p10
        b = (u < 0.6) | ((u >= 0.6 + p10) & (u < 0.6 + p10 + p01))
        _, low, high, _, _, _ = mcnemar_difference(a, b)
        covered += low <= p10 - p01 <= high
    assert 0.925 <= covered / 1000 <= 0.975


def test_identical_runs_and_a_dominating_run():
    r = results("a", range(10), [1] * 10, [1] * 8 + [-1] * 2, [0.5] * 10)
    same = compare(r, r, [0.0, 0.25])
    for row in same.rows:
        assert row.difference == 0 and row.low <= 0 <= row.high and not row.excludes_zero
    assert same.rows[0].p_value == 1.0 and same.rows[-1].low == same.rows[-1].high == 0
    good = results("good", range(40), [0] * 40, [0] * 40, [1.0] * 40)
    bad = results("bad", range(40), [0] * 40, [-1] * 40, [0.0] * 40)
    row = compare(good, bad, [0.0]).rows[0]
    assert (row.a, row.b, row.a_only, row.b_only) == (1.0, 0.0, 40, 0)
    assert row.p_value == pytest.approx(2 * 0.5**40) and row.excludes_zero and row.low > 0.8


def test_rows_are_paired_by_idx_not_by_order():
    rng = np.random.default_rng(3)
    n = 50
    label = rng.integers(0, 3, n)
    a = results("a", range(n), label, np.where(rng.random(n) < 0.8, label, -1), rng.random(n))
    b = results("b", range(n), label, np.where(rng.random(n) < 0.6, label, -1), rng.random(n))
    order = rng.permutation(n)
    shuffled = Results("b", b.idx[order], b.label[order], b.predict[order], b.radius[order], b.correct[order],
                       {"idx": [b.columns["idx"][k] for k in order]})  # fmt: skip
    assert compare(a, b, [0, 0.5]).rows == compare(a, shuffled, [0, 0.5]).rows


def test_files_over_other_images_are_refused():
    a = results("a", range(5), [0] * 5, [0] * 5, [0.1] * 5)
    with pytest.raises(ValueError, match="not over the same images: 1 idx only in the first"):
        compare(a, results("b", range(4), [0] * 4, [0] * 4, [0.1] * 4), [0])
    with pytest.raises(ValueError, match="label of idx 2"):
        compare(a, results("b", range(5), [0, 0, 1, 0, 0], [0] * 5, [0.1] * 5), [0])
    with pytest.raises(ValueError, match="repeated idx"):
        compare(a, results("b", [0, 1, 2, 3, 3], [0] * 5, [0] * 5, [0.1] * 5), [0])


def test_bootstrap_is_seeded_and_close_to_the_normal_interval():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, 400), rng.normal(0.8, 1.0, 400)
    first, second = (
        bootstrap_mean_difference(x, y, 2000, seed=5),
        bootstrap_mean_difference(x, y, 2000, seed=5),
    )
    assert first == second
    mean, low, high = first
    half = 1.96 * np.std(x - y, ddof=1) / np.sqrt(400)
    assert mean == pytest.approx(np.mean(x - y))
    assert low == pytest.approx(mean - half, abs=0.2 * half) and high == pytest.approx(
        mean + half, abs=0.2 * half
    )
    assert bootstrap_mean_difference(x, y, 2000, seed=6) != first


def test_cohen_sigma_025_against_050(shared_fixtures):
    """The published CIFAR-10 result files (500 images, same images): values equal `msds analyze`'s, the
    discordant counts equal a direct count, and the ACR difference equals the difference of the ACRs."""
    root = shared_fixtures / "cohen2019"
    c = compare_files(root / "cifar_0.25", root / "cifar_0.50", [0.0, 0.5], resamples=2000)
    a, b = read_results(root / "cifar_0.25"), read_results(root / "cifar_0.50")
    assert c.count == 500
    for row, r in zip(c.rows, [0.0, 0.5]):
        a_ok, b_ok = (a.correct == 1) & (a.radius >= r), (b.correct == 1) & (b.radius >= r)
        assert row.a == certified_accuracy(a.radius, a.correct, [r])[0]
        assert (row.a_only, row.b_only) == (np.sum(a_ok & ~b_ok), np.sum(~a_ok & b_ok))
        assert row.low < row.difference < row.high
    acr = c.rows[-1]
    assert acr.difference == pytest.approx(average_certified_radius(a.radius, a.correct)
                                           - average_certified_radius(b.radius, b.correct))  # fmt: skip
    assert c.rows[0].difference > 0 and c.rows[0].excludes_zero  # σ = 0.25 is more accurate at r = 0


def test_compare_cli_formats_and_refusals(tmp_path, capsys):
    a = write_tsv(tmp_path / "a.tsv", [(i, i % 3, i % 3, 0.5) for i in range(30)],
                  {"data.class_path": "Digits", "data.init_args.split": "test", "model.seed": 0})  # fmt: skip
    b = write_tsv(tmp_path / "b.tsv", [(i, i % 3, (i % 3) if i % 4 else -1, 0.25) for i in range(30)],
                  {"data.class_path": "Digits", "data.init_args.split": "test", "model.seed": 0})  # fmt: skip
    assert main(["compare", str(a), str(b), "--radii", "0", "0.5", "--resamples", "500",
                 "--output", str(tmp_path / "c.md")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out == (tmp_path / "c.md").read_text()
    assert "30 paired images" in out and "| r=0 | 1.000 | 0.733 | +0.267 |" in out and "500 resamples" in out
    assert main(["compare", str(a), str(b), "--radii", "0", "--format", "csv", "--resamples", "500"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["metric"] for r in rows] == ["r=0", "ACR"] and int(rows[0]["a_only"]) == 8
    assert main(["compare", str(a), str(b), "--format", "latex", "--resamples", "500"]) == 0
    assert "\\begin{tabular}" in capsys.readouterr().out

    other = write_tsv(tmp_path / "other.tsv", [(i, i % 3, i % 3, 0.5) for i in range(30)],
                      {"data.class_path": "Digits", "data.init_args.split": "train", "model.seed": 0})  # fmt: skip
    assert main(["compare", str(a), str(other)]) == 2
    assert 'data.init_args.split: "test" -> "train"' in capsys.readouterr().err
    fewer = write_tsv(tmp_path / "fewer.tsv", [(i, i % 3, i % 3, 0.5) for i in range(20)])
    assert main(["compare", str(a), str(fewer)]) == 2
    assert "10 idx only in the first" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--confidence", "1.5"]) == 2
    assert "confidence must be in (0, 1)" in capsys.readouterr().err
