"""Cohen et al.'s high-probability certified accuracy (``msds analyze --high-prob ALPHA RHO``)."""

import csv
import io
import math

import numpy as np
import pytest

from msds_lightning.cli import main
from msds_lightning.results import read_results
from msds_lightning.results.analysis import certified_accuracy, high_probability_accuracy, summarize

FILES = (
    "cifar_0.12",
    "cifar_0.25",
    "cifar_0.50",
    "cifar_1.00",
    "imagenet_0.25",
    "imagenet_0.50",
    "imagenet_1.00",
)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)

# Produced once by running the reference algorithm itself, HighProbAccuracy(path, alpha=0.001, rho=0.001)
# .at_radius of locuslab/smoothing code/analyze.py (commit 78a4d94), transcribed into a throwaway script
# that reads each fixture file with pandas.read_csv(path, delimiter="\t") as the reference does; values
# printed with repr at RADII. Independent of this package's reader and of its implementation.
REFERENCE = {
    "cifar_0.12": (0.8046797665511042, 0.5766797665511042, -0.009320233448895779, -0.009320233448895779,
                   -0.009320233448895779, -0.009320233448895779, -0.009320233448895779,
                   -0.009320233448895779),
    "cifar_0.25": (0.7386797665511042, 0.5906797665511042, 0.41867976655110417, 0.2566797665511042,
                   -0.009320233448895779, -0.009320233448895779, -0.009320233448895779,
                   -0.009320233448895779),
    "cifar_0.50": (0.6426797665511043, 0.5366797665511043, 0.40467976655110416, 0.3106797665511042,
                   0.22467976655110425, 0.08467976655110422, -0.009320233448895779, -0.009320233448895779),
    "cifar_1.00": (0.46267976655110415, 0.3826797665511042, 0.3306797665511042, 0.2686797665511042,
                   0.20667976655110423, 0.13067976655110425, 0.09067976655110423, 0.010679766551104222),
    "imagenet_0.25": (0.6570347319413573, 0.5703836780771887, 0.48373262421302005, 0.3642946851029498,
                      -0.010412574850211808, -0.010412574850211808, -0.010412574850211808,
                      -0.010412574850211808),
    "imagenet_0.50": (0.5626797665511042, 0.5086797665511043, 0.4486797665511042, 0.41467976655110417,
                      0.3626797665511042, 0.27667976655110416, -0.009320233448895779, -0.009320233448895779),
    "imagenet_1.00": (0.4266797665511042, 0.3966797665511042, 0.3686797665511042, 0.34467976655110416,
                      0.3166797665511042, 0.2506797665511042, 0.18467976655110424, 0.11267976655110422),
}  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_matches_reference_on_cohen_files(shared_fixtures, name):
    res = read_results(shared_fixtures / "cohen2019" / name)
    got = high_probability_accuracy(res.radius, res.correct, RADII, alpha=0.001, rho=0.001)
    np.testing.assert_allclose(got, REFERENCE[name], rtol=0, atol=1e-12)
    # summarize carries the same numbers for the tables
    s = summarize(res, RADII, high_prob=(0.001, 0.001))
    np.testing.assert_allclose(s.high_prob, REFERENCE[name], rtol=0, atol=1e-12)
    assert s.high_prob_levels == (0.001, 0.001)


def test_hand_computed_small_case():
    # 16 rows: 12 correct (8 of them with radius >= 1), 4 wrong or abstained.
    radius = [1.2] * 8 + [0.4] * 4 + [0.9, 0.0, 0.0, 2.0]
    correct = [1] * 12 + [0, 0, 0, 0]
    # alpha = 0.1, ln(1/rho) = 4, n = 16: margin = 0.1 + sqrt(0.1 * 0.9 * 4 / 16) + 4 / 48
    #                                          = 0.1 + 0.15 + 1/12 = 1/3
    got = high_probability_accuracy(radius, correct, [0.0, 0.5, 1.0, 1.5], alpha=0.1, rho=math.exp(-4))
    assert got == pytest.approx([12 / 16 - 1 / 3, 8 / 16 - 1 / 3, 8 / 16 - 1 / 3, -1 / 3], abs=1e-15)


def test_is_certified_accuracy_minus_a_margin_and_tightens_with_n():
    rng = np.random.default_rng(0)
    radius, correct = rng.uniform(0, 1, 1000), rng.integers(0, 2, 1000)
    radii = np.linspace(0, 1, 11)
    gap = certified_accuracy(radius, correct, radii) - high_probability_accuracy(radius, correct, radii)
    assert np.allclose(gap, gap[0]) and gap[0] > 0.001  # one margin, above alpha, at every radius
    small = certified_accuracy(radius[:100], correct[:100], radii)
    small -= high_probability_accuracy(radius[:100], correct[:100], radii)
    assert small[0] > gap[0]  # fewer images: a wider margin
    assert np.isnan(high_probability_accuracy([], [], [0.0, 0.5])).all()  # no rows: NaN, like the accuracy


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_and_rho_outside_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        high_probability_accuracy([0.5], [1], [0.0], alpha=bad, rho=0.001)
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\)"):
        high_probability_accuracy([0.5], [1], [0.0], alpha=0.001, rho=bad)


def test_cli_markdown_adds_a_high_prob_row_per_file(shared_fixtures, capsys):
    root = shared_fixtures / "cohen2019"
    files = [str(root / "cifar_0.25"), str(root / "imagenet_1.00")]
    radii = ["0", "0.5", "1", "2"]
    assert main(["analyze", *files, "--radii", *radii]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main(["analyze", *files, "--radii", *radii, "--high-prob", "0.001", "0.001"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the certified-accuracy rows are unchanged; each file's high-prob row follows it
    assert lines[:3] == plain[:3] and lines[4] == plain[3] and len(lines) == len(plain) + 2
    for line, name in ((lines[3], "cifar_0.25"), (lines[5], "imagenet_1.00")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == f"{name} high-prob (alpha=0.001, rho=0.001)"
        expected = [REFERENCE[name][RADII.index(float(r))] for r in radii]
        assert cells[1:] == [f"{v:.3f}" for v in expected] + ["-", "-"]
    assert lines[3].startswith("| cifar_0.25 high-prob (alpha=0.001, rho=0.001) | 0.739 | 0.419 | -0.009 |")


def test_cli_csv_adds_full_precision_high_prob_columns(shared_fixtures, tmp_path, capsys):
    files = [str(shared_fixtures / "cohen2019" / name) for name in FILES]
    out = tmp_path / "hp.csv"
    args = ["analyze", *files, "--radii", *map(str, RADII), "--format", "csv", "-o", str(out)]
    assert main([*args, "--high-prob", "0.001", "0.001"]) == 0
    assert capsys.readouterr().out == out.read_text()
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["file"] for r in rows] == list(FILES)
    worst = 0.0
    for row in rows:
        got = [float(row[f"high_prob_r={r:g}"]) for r in RADII]
        worst = max(worst, float(np.max(np.abs(np.subtract(got, REFERENCE[row["file"]])))))
        assert float(row["high_prob_alpha"]) == 0.001 and float(row["high_prob_rho"]) == 0.001
        assert float(row["r=0.5"]) - float(row["high_prob_r=0.5"]) > 0.001  # below the certified accuracy
    assert worst <= 1e-12
    assert main(args) == 0  # without the flag: no high-prob columns
    assert "high_prob" not in capsys.readouterr().out


def test_cli_latex_row_and_bad_levels(shared_fixtures, capsys):
    path = str(shared_fixtures / "cohen2019" / "cifar_0.25")
    assert (
        main(["analyze", path, "--radii", "0", "0.5", "--format", "latex", "--high-prob", "0.001", "0.001"])
        == 0
    )
    latex = capsys.readouterr().out
    assert "cifar\\_0.25 high-prob ($\\alpha=0.001$, $\\rho=0.001$) & 0.739 & 0.419 & -- & -- \\\\" in latex
    for bad, name in ((["0", "0.001"], "alpha"), (["0.001", "1"], "rho"), (["-1", "0.5"], "alpha")):
        assert main(["analyze", path, "--high-prob", *bad]) == 2
        assert f"{name} must be in (0, 1)" in capsys.readouterr().err
