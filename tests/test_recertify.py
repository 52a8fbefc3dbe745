"""``msds recertify``: the counts sidecar of every certification run, and re-deciding runs from it without a
forward pass — byte-exact with the run's own settings, equal to a real run under other settings, and a
cascade assembled from single-σ runs equal to the cascade run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msds_lightning.cli import main
from msds_lightning.results.counts import counts_path, keep_rows, read_count_records
from msds_lightning.smoothing import ESTIMATION, SELECTION
from msds_lightning.smoothing.records import CountRecord, CountRecorder, MissingCounts, ReplayEngine

from .test_certify_cli import N_IMAGES, overrides, rows_without_time

SIGMAS = "[0.25, 0.5, 1.0]"


@pytest.fixture(scope="module")
def runs(tiny_assets, tmp_path_factory):
    """A cascade run over three σ and the three single-σ runs, all with seed 0, n0 = 16, n = 100."""
    folder = tmp_path_factory.mktemp("recertify")
    made = {"cascade": folder / "cascade.tsv"}
    assert (
        main(
            ["certify", *overrides(tiny_assets, made["cascade"], f"--model.sigma={SIGMAS}", "--model.n=100")]
        )
        == 0
    )
    for sigma in (0.25, 0.5, 1.0):
        made[sigma] = folder / f"dds_{sigma}.tsv"
        assert (
            main(["certify", *overrides(tiny_assets, made[sigma], f"--model.sigma={sigma}", "--model.n=100")])
            == 0
        )
    return made


def test_every_run_writes_a_counts_row_per_image(runs):
    for output in runs.values():
        records = read_count_records(counts_path(output), 10)
        assert sorted(records) == list(range(N_IMAGES))
        for record in records.values():  # n0 selection and n estimation draws at each visited level
            for sigma in record.sigmas():
                assert record.counts(sigma, SELECTION, 0, 16).sum() == 16
                assert record.counts(sigma, ESTIMATION, 0, 100).sum() == 100


def test_round_trip_with_the_run_own_settings_is_byte_exact(runs, tmp_path, capsys):
    for name, output in runs.items():
        again = tmp_path / f"{name}.tsv"
        assert main(["recertify", str(output), "--output", str(again)]) == 0
        assert again.read_bytes() == output.read_bytes(), name
        assert counts_path(again).read_bytes() == counts_path(output).read_bytes(), name
        assert "images re-decided" in capsys.readouterr().out


def test_single_sigma_runs_hold_exactly_the_counts_the_cascade_draws(runs):
    cascade = read_count_records(counts_path(runs["cascade"]), 10)
    visited = 0
    for idx, record in cascade.items():
        for sigma in record.sigmas():
            single = read_count_records(counts_path(runs[sigma]), 10)[idx]
            for phase, num in ((SELECTION, 16), (ESTIMATION, 100)):
                assert np.array_equal(
                    record.counts(sigma, phase, 0, num), single.counts(sigma, phase, 0, num)
                )
            visited += 1
    assert visited > N_IMAGES  # some images went below the top level


def test_cascade_assembled_from_single_runs_equals_the_cascade_run(runs, tmp_path):
    assembled = tmp_path / "assembled.tsv"
    singles = [str(runs[s]) for s in (0.25, 0.5, 1.0)]
    assert main(["recertify", *singles, "--output", str(assembled)]) == 0
    assert rows_without_time(assembled) == rows_without_time(runs["cascade"])
    settings = json.loads(assembled.with_suffix(".fingerprint.json").read_text())["settings"]
    assert settings["model.sigma"] == [1.0, 0.5, 0.25] and len(settings["recertified_from"]) == 3


def test_another_alpha_equals_a_real_run_at_that_alpha(runs, tiny_assets, tmp_path):
    real = tmp_path / "real.tsv"
    assert (
        main(
            [
                "certify",
                *overrides(tiny_assets, real, "--model.sigma=0.5", "--model.n=100", "--model.alpha=0.05"),
            ]
        )
        == 0
    )
    redone = tmp_path / "redone.tsv"
    assert main(["recertify", str(runs[0.5]), "--output", str(redone), "--alpha", "0.05"]) == 0
    assert rows_without_time(redone) == rows_without_time(real)
    assert rows_without_time(redone) != rows_without_time(runs[0.5])  # the bounds did change


def test_inputs_that_cannot_be_re_decided_are_refused_and_nothing_is_written(runs, tmp_path, capsys):
    out = tmp_path / "x.tsv"
    assert main(["recertify", str(runs[1.0]), "--output", str(out), "--sigmas", "0.5"]) == 2
    assert "sigma [0.5] was not certified by any input" in capsys.readouterr().err and not out.exists()
    assert main(["recertify", str(runs[1.0]), "--output", str(runs[1.0])]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    counts_path(runs[1.0]).rename(tmp_path / "moved")
    try:
        assert main(["recertify", str(runs[1.0]), "--output", str(out)]) == 2
        assert "no counts sidecar" in capsys.readouterr().err and not out.exists()
    finally:
        (tmp_path / "moved").rename(counts_path(runs[1.0]))


def test_a_lower_level_that_was_never_drawn_is_named():
    """Level σ = 1 is proven below p0, so the cascade needs σ = 0.5, which this record lacks."""
    record = CountRecord(3)
    record.add(1.0, SELECTION, 0, 100, np.array([40, 30, 30]))
    record.add(1.0, ESTIMATION, 0, 1000, np.array([300, 350, 350]))
    engine = ReplayEngine({7: record}, 3, [1.0, 0.5], cascade=True)
    with pytest.raises(MissingCounts, match=r"image 7 needs the selection draws 0..100 at sigma 0.5"):
        engine.certify(None, [7], 100, 1000, 0.001)
    record.add(0.5, SELECTION, 0, 100, np.array([100, 0, 0]))
    record.add(0.5, ESTIMATION, 0, 1000, np.array([1000, 0, 0]))
    (cert,) = engine.certify(None, [7], 100, 1000, 0.001)
    assert cert.prediction == 0 and cert.level == 1 and cert.radius > 0


def test_count_records_round_trip_and_refuse_what_they_are_not():
    recorder = CountRecorder(4)
    recorder.add([3, 9], 0.25, ESTIMATION, 0, 10, np.array([[10, 0, 0, 0], [1, 2, 3, 4]]))
    recorder.add([3, 9], 0.25, ESTIMATION, 10, 20, np.array([[19, 1, 0, 0], [5, 5, 5, 5]]))
    text = recorder.records[9].to_json()
    assert json.loads(text) == {"0.25": {"estimation": {"10": {"0": 1, "1": 2, "2": 3, "3": 4},
                                                        "30": {"0": 6, "1": 7, "2": 8, "3": 9}}}}  # fmt: skip
    back = CountRecord.from_json(text, 4)
    assert back.counts(0.25, ESTIMATION, 10, 20).tolist() == [5, 5, 5, 5]
    with pytest.raises(MissingCounts):
        back.counts(0.25, ESTIMATION, 0, 20)
    for bad in ('{"0.25": {"estimation": {"10": {"0": 9}}}}', '{"0.25": {"noise": {}}}', "[1]", "not json"):
        with pytest.raises(ValueError, match="not a count record"):
            CountRecord.from_json(bad, 4)
    other = CountRecord.from_json(text.replace('"3":9', '"3":8').replace('"2":8', '"2":9'), 4)
    with pytest.raises(ValueError, match="different counts"):
        back.merge(other, 9)


def test_resume_drops_counts_rows_whose_result_row_was_never_written(tmp_path):
    path = tmp_path / "rank0.counts"
    path.write_text("idx\tcounts\n0\t{}\n1\t{}\n2\t{}\n")
    assert keep_rows(path, {0, 2}) == 1
    assert path.read_text() == "idx\tcounts\n0\t{}\n2\t{}\n"


def test_interrupted_then_resumed_run_round_trips(tiny_assets, tmp_path):
    output = tmp_path / "resumed.tsv"
    args = overrides(tiny_assets, output, "--model.sigma=[0.5, 1.0]", "--model.n=100")
    assert main(["certify", *args, "--trainer.limit_predict_batches=1"]) == 0
    assert main(["certify", *args]) == 0
    assert sorted(read_count_records(counts_path(output), 10)) == list(range(N_IMAGES))
    again = tmp_path / "again.tsv"
    assert main(["recertify", str(output), "--output", str(again)]) == 0
    assert again.read_bytes() == output.read_bytes()
