import csv
import re

import pytest

from msds_lightning.cli import main
from msds_lightning.results import ResultWriter, format_radius, merge_result_files, read_results
from msds_lightning.results.analysis import certified_accuracy, summarize


def readme_tables(readme: str) -> list[list[str]]:
    """The markdown tables of the fixture README, as lists of lines."""
    tables, current = [], []
    for line in readme.splitlines():
        if line.startswith("| file | r="):
            current = [line]
        elif current and line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_analyze_reproduces_published_cohen_tables_exactly(shared_fixtures, capsys):
    root = shared_fixtures / "cohen2019"
    cifar, imagenet = readme_tables((root / "README.md").read_text())
    assert main(["analyze", *(str(root / f"cifar_{s}") for s in ("0.12", "0.25", "0.50", "1.00"))]) == 0
    assert capsys.readouterr().out.splitlines() == cifar
    radii = ["0", "0.5", "1", "1.5", "2", "2.5", "3"]
    assert (
        main(["analyze", *(str(root / f"imagenet_{s}") for s in ("0.25", "0.50", "1.00")), "--radii", *radii])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == imagenet


def test_paper_values_cifar_sigma_025(shared_fixtures):
    s = summarize(read_results(shared_fixtures / "cohen2019" / "cifar_0.25"), [0.25, 0.5, 0.75])
    assert [round(a, 2) for a in s.accuracy] == [0.60, 0.43, 0.27]


def test_formats_and_plot(shared_fixtures, tmp_path, capsys):
    files = [str(shared_fixtures / "cohen2019" / f) for f in ("cifar_0.25", "cifar_0.50")]
    out, png = tmp_path / "t.csv", tmp_path / "plot.png"
    assert main(["analyze", *files, "--format", "csv", "-o", str(out), "--plot", str(png)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == ["cifar_0.25", "cifar_0.50"]
    assert float(rows[0]["r=0.25"]) == 0.6 and float(rows[1]["acr"]) == pytest.approx(0.5375, abs=5e-5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    capsys.readouterr()
    assert main(["analyze", *files, "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "\\begin{tabular}" in latex and "\\textbf{0.600}" in latex


def test_inclusive_radius_and_abstentions_in_denominator():
    acc = certified_accuracy([0.25, 0.0, 0.5, 0.3], [1, 0, 1, 0], [0.0, 0.25, 0.26, 0.5, 0.51])
    assert acc.tolist() == [0.5, 0.5, 0.25, 0.25, 0.0]


def test_writer_format_read_back_and_analysis(tmp_path):
    path = tmp_path / "r.tsv"
    with ResultWriter(path, extra_columns=("sigma", "nA")) as w:
        w.write(0, 3, 3, 0.94123, 2.5, sigma=0.25, nA=99000)
        w.write(1, 2, -1, 0.0, 0.1, sigma=0.25, nA=12)
        w.write(2, 5, 4, 5.6078e-06, 1.0, sigma=0.25, nA=50490)
    lines = path.read_text().splitlines()
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsigma\tnA"
    assert lines[1] == "0\t3\t3\t0.941\t1\t0:00:02.500000\t0.25\t99000"
    assert lines[2].split("\t")[:5] == ["1", "2", "-1", "0.0", "0"]
    assert lines[3].split("\t")[3:5] == ["5.61e-06", "0"]
    res = read_results(path)
    assert res.radius.tolist() == [0.941, 0.0, 5.61e-06] and res.column("nA", int).tolist() == [
        99000,
        12,
        50490,
    ]
    # appending to a file with another header is refused (no silent mixing of runs)
    with pytest.raises(ValueError, match="header"):
        ResultWriter(path, extra_columns=("sigma",))
    with ResultWriter(path, extra_columns=("sigma", "nA")) as w:  # same header: appends
        w.write(3, 1, 1, 0.5, 0.0, sigma=0.25, nA=1)
    assert len(read_results(path)) == 4


def test_cumulative_correct_column_is_rejected(tmp_path):
    path = tmp_path / "cumulative.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0\n1\t2\t2\t0.5\t2\t0\n")
    with pytest.raises(ValueError, match="0/1"):
        read_results(path)


def test_merge_sorts_deduplicates_and_detects_conflicts(tmp_path):
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    (tmp_path / "a").write_text(head + "4\t1\t1\t0.5\t1\t0:00:01\n0\t2\t2\t0.25\t1\t0:00:01\n")
    (tmp_path / "b").write_text(head + "1\t3\t-1\t0.0\t0\t0:00:01\n4\t1\t1\t0.5\t1\t0:00:09\n")
    n = merge_result_files([tmp_path / "a", tmp_path / "b"], tmp_path / "m.tsv", expected=[0, 1, 4])
    assert n == 3
    assert [line.split("\t")[0] for line in (tmp_path / "m.tsv").read_text().splitlines()[1:]] == [
        "0",
        "1",
        "4",
    ]
    with pytest.raises(ValueError, match="miss"):
        merge_result_files([tmp_path / "a"], tmp_path / "m2.tsv", expected=[0, 1, 4])
    (tmp_path / "c").write_text(head + "4\t1\t1\t0.75\t1\t0:00:01\n")
    with pytest.raises(ValueError, match="conflicting"):
        merge_result_files([tmp_path / "a", tmp_path / "c"], tmp_path / "m3.tsv")


def test_cli_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.tsv"
    assert main(["analyze", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["analyze", str(missing), "--radii", "-1"]) == 2


def test_radius_format_matches_reference():
    assert [format_radius(r) for r in (0.0, 0.94123, 5.607812736243578e-06, 1.0, 0.24996)] == [
        "0.0", "0.941", "5.61e-06", "1.0", "0.25"]  # fmt: skip
    assert re.fullmatch(r"\d\.\d+", format_radius(2.0))


def test_per_level_statistics_of_a_cascade(tmp_path, capsys):
    path = tmp_path / "cascade.tsv"
    with ResultWriter(path, extra_columns=("level", "sigma", "stage")) as w:
        w.write(0, 1, 1, 1.2, 0.0, level=0, sigma=1.0, stage=0)  # highest level, correct
        w.write(1, 2, 3, 0.9, 0.0, level=0, sigma=1.0, stage=0)  # highest level, wrong
        w.write(2, 4, 4, 0.3, 0.0, level=2, sigma=0.25, stage=2)  # lowest level, correct
        w.write(3, 5, -1, 0.0, 0.0, level=-1, sigma=0.0, stage=0)  # undecided at the top
        w.write(4, 6, 6, 0.5, 0.0, level=1, sigma=0.5, stage=1)
    s = summarize(read_results(path), [0.0, 0.5, 1.0])
    assert [(lv.level, lv.sigma, lv.answered, lv.correct) for lv in s.levels] == [
        (0, 1.0, 2, 1), (1, 0.5, 1, 1), (2, 0.25, 1, 1)]  # fmt: skip
    assert s.accuracy.tolist() == [0.6, 0.4, 0.2] and s.abstain == 0.2
    assert main(["analyze", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| cascade.tsv | 0 | 1 | 2 | 0.500 |" in out and "| cascade.tsv | 2 | 0.25 | 1 | 1.000 |" in out


def test_certify_or_fallback_accuracy_only_for_files_with_corr_uc(tmp_path, capsys):
    """``corr_uc`` (msds certify --model.official_columns true): the fallback accuracy is its mean, here
    3 of 5 by hand (two certified and correct, one abstention whose clean prediction is correct; the
    certified accuracy at r = 0 is 2 of 5); a file
    without the column gets no such column, or "-" beside one that has it."""
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tr_neg\tclean\tpred_uc\tcorr_uc\n"
    cells = [
        "0\t1\t1\t0.7\t1\t0:00:01\t-100.0\t1\t1\t1",  # certified, correct
        "1\t2\t3\t0.2\t0\t0:00:01\t-100.0\t2\t3\t0",  # certified, wrong (the clean class is not used)
        "2\t4\t-1\t0.0\t0\t0:00:01\t-100.0\t4\t4\t1",  # abstained: the clean prediction is correct
        "3\t5\t-1\t0.0\t0\t0:00:01\t0.12\t0\t0\t0",  # abstained (r_neg > 0): the clean one is wrong
        "4\t6\t6\t0.4\t1\t0:00:01\t-0.4\t6\t6\t1",  # certified, correct
    ]
    official = tmp_path / "official.tsv"
    official.write_text(head + "\n".join(cells) + "\n")
    plain = tmp_path / "plain.tsv"
    plain.write_text("".join("\t".join(line.split("\t")[:6]) + "\n" for line in [head, *cells]))
    assert summarize(read_results(official)).fallback == 0.6

    assert main(["analyze", str(plain)]) == 0
    assert "fallback" not in capsys.readouterr().out
    assert main(["analyze", str(plain), "--format", "csv"]) == 0
    assert "fallback" not in capsys.readouterr().out

    assert main(["analyze", str(official), str(plain), "--radii", "0", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| file | r=0 | 0.5 | ACR | abstain | fallback acc |"
    assert lines[2] == "| official.tsv | 0.400 | 0.200 | 0.2200 | 0.400 | 0.600 |"
    assert lines[3] == "| plain.tsv | 0.400 | 0.200 | 0.2200 | 0.400 | - |"
    assert main(["analyze", str(official), str(plain), "--radii", "0", "0.5", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert (rows[0]["fallback_acc"], rows[1]["fallback_acc"]) == ("0.6", "")
    assert main(["analyze", str(official), "--radii", "0", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert "abstain & fallback acc" in latex and "& 0.400 & 0.600 \\\\" in latex
