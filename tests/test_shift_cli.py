"""End to end: `msds certify -c configs/cifar10/shift/certify_msds_cifar10c.yaml` on a synthetic CIFAR-10-C in
the published format with tiny models; rows equal the engine's, resume (also with corruptions added), the
shift table and plot of `msds analyze`, and `msds predict` with the same data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.data import CIFAR10CDataModule
from msds_lightning.data.shift import CORRUPTIONS
from msds_lightning.results import COHEN_COLUMNS, format_radius, read_results
from msds_lightning.results.analysis import certified_accuracy
from msds_lightning.smoothing import MultiScaleEngine

from .conftest import REPO
from .tiny_models import tiny_assets_base_classifier, write_fake_cifar10c

CONFIG = REPO / "configs" / "cifar10" / "shift" / "certify_msds_cifar10c.yaml"
PREDICT_CONFIG = REPO / "configs" / "cifar10" / "shift" / "predict_msds_cifar10c.yaml"
CORRUPTED = ("gaussian_noise", "fog", "saturate")


@pytest.fixture(scope="module")
def cifar10c(tiny_assets):
    folder = tiny_assets / "CIFAR-10-C"
    write_fake_cifar10c(folder, CORRUPTED, filled=2)
    return folder


def overrides(assets: Path, folder: Path, output: Path, *extra: str, config: Path = CONFIG) -> list[str]:
    return [
        "-c", str(config),
        f"--model.denoiser.init_args.path={assets / 'denoiser'}",
        "--model.classifier.init_args.model_name=test_vit",
        f"--model.classifier.init_args.checkpoint={assets / 'classifier.safetensors'}",
        "--model.classifier.init_args.input_size=null",
        "--model.classifier.init_args.model_kwargs={img_size: 32}",
        "--model.n0=16", "--model.n=64", "--model.batch_size=50",
        f"--data.init_args.root={folder}", "--data.init_args.corruptions=[gaussian_noise, fog]",
        "--data.init_args.severities=[1, 2]", "--data.init_args.skip=1", "--data.init_args.max=2",
        "--data.init_args.batch_size=3", "--data.init_args.num_workers=0",
        f"--results.output={output}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    time_col = lines[0].split("\t").index("time")
    return [[c for k, c in enumerate(line.split("\t")) if k != time_col] for line in lines]


def expected_indices(corruptions=("gaussian_noise", "fog")) -> list[int]:
    return sorted(
        CORRUPTIONS.index(c) * 50_000 + (s - 1) * 10_000 + i
        for c in corruptions
        for s in (1, 2)
        for i in (0, 1)
    )


@pytest.fixture(scope="module")
def run(tiny_assets, cifar10c, tmp_path_factory):
    output = tmp_path_factory.mktemp("shift") / "msds_c10c.tsv"
    assert main(["certify", *overrides(tiny_assets, cifar10c, output)]) == 0
    return output


def test_rows_carry_corruption_and_severity_and_equal_the_engine(tiny_assets, cifar10c, run):
    head = run.read_text().splitlines()[0].split("\t")
    assert head[:8] == [*COHEN_COLUMNS, "corruption", "severity"] and head[8:10] == ["level", "sigma"]
    res = read_results(run)
    assert res.idx.tolist() == expected_indices()
    for idx, c, s in zip(res.idx, res.columns["corruption"], res.columns["severity"]):
        assert (CORRUPTIONS[idx // 50_000], (idx % 50_000) // 10_000 + 1) == (c, int(s))
    # the same computation through the engine, keyed by the encoded index
    data = CIFAR10CDataModule(cifar10c, corruptions=["gaussian_noise", "fog"], severities=[1, 2], max=2)
    dataset = data.predict_dataset()
    images = torch.stack([item[0] for item in dataset])
    order = [item[2] for item in dataset]
    engine = MultiScaleEngine(tiny_assets_base_classifier(tiny_assets), 10, [1.0, 0.5, 0.25], batch_size=50)
    certs = dict(zip(order, engine.certify(images, order, 16, 64, 0.001)))
    assert res.predict.tolist() == [certs[i].prediction for i in res.idx]
    assert res.columns["radius"] == [format_radius(certs[i].radius) for i in res.idx]
    assert res.label.tolist() == [dict(zip(order, (item[1] for item in dataset)))[i] for i in res.idx]
    summary = run.with_suffix(".md").read_text()
    assert (
        "| gaussian_noise | 1 | 2 |" in summary and "| mean of 2 | all | 8 |" in summary
    )  # 2 corruptions, 8 images


def test_recertify_round_trip_of_a_shift_run_keeps_corruption_and_severity(run, tmp_path):
    again = tmp_path / "again.tsv"
    assert main(["recertify", str(run), "--output", str(again)]) == 0
    assert again.read_bytes() == run.read_bytes()


@pytest.mark.slow  # two more certification runs (the resume logic itself is covered by test_certify_cli)
def test_resume_and_adding_a_corruption_keep_every_row(tiny_assets, cifar10c, run, tmp_path):
    output = tmp_path / "resumed.tsv"
    full = run.read_text().splitlines()
    kept = [full[0], full[1], full[4], full[7]]
    output.write_text("\n".join(kept) + "\n" + full[2][:9])  # a crash: 3 rows and half a row
    output.with_suffix(".fingerprint.json").write_text(run.with_suffix(".fingerprint.json").read_text())
    assert main(["certify", *overrides(tiny_assets, cifar10c, output)]) == 0
    assert rows_without_time(output) == rows_without_time(run)
    resumed = output.read_text().splitlines()
    assert [resumed[1], resumed[4], resumed[7]] == kept[1:]  # untouched, time included
    # the same run with a third corruption: the fingerprint allows it, only the new images are certified
    more = "--data.init_args.corruptions=[gaussian_noise, fog, saturate]"
    assert main(["certify", *overrides(tiny_assets, cifar10c, output, more)]) == 0
    res = read_results(output)
    assert res.idx.tolist() == expected_indices(CORRUPTED)
    old = {line.split("\t")[0]: line for line in resumed[1:]}
    assert all(
        old[line.split("\t")[0]] == line
        for line in output.read_text().splitlines()[1:]
        if line.split("\t")[0] in old
    )


def test_analyze_gives_the_shift_table_and_plot(run, tmp_path, capsys):
    plot = tmp_path / "severity.png"
    radii = ["0", "0.25"]
    assert main(["analyze", str(run), "--radii", *radii, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    res = read_results(run)
    corruption, severity = np.array(res.columns["corruption"]), res.column("severity", int)
    lines = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in out.splitlines()
             if line.startswith("| ")}  # fmt: skip
    cells = {}
    for c in ("gaussian_noise", "fog"):
        for s in (1, 2):
            rows = (corruption == c) & (severity == s)
            cells[c, s] = certified_accuracy(res.radius[rows], res.correct[rows], [0.0, 0.25])
            assert f"| {cells[c, s][0]:.3f} | {cells[c, s][1]:.3f} |" in lines[c, str(s)]
    # the rows come in the data set's corruption order (gaussian_noise before fog), then the means
    assert out.index("| gaussian_noise | 1 |") < out.index("| fog | 1 |") < out.index("| mean of 2 | 1 |")
    for s in (1, 2):
        mca = (cells["gaussian_noise", s] + cells["fog", s]) / 2
        assert lines["mean of 2", str(s)].split("|")[3].strip() == "4"
        assert f"| {mca[0]:.3f} | {mca[1]:.3f} |" in lines["mean of 2", str(s)]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["analyze", str(run), "--format", "csv"]) == 0
    assert "file,corruption,severity,count" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_on_cifar10c_rows_carry_corruption_and_severity(tiny_assets, cifar10c, tmp_path):
    output = tmp_path / "predict.tsv"
    args = overrides(tiny_assets, cifar10c, output, "--data.init_args.max=1", config=PREDICT_CONFIG)
    assert main(["predict", *args]) == 0
    lines = output.read_text().splitlines()
    assert lines[0].split("\t")[:7] == [
        "idx",
        "label",
        "predict",
        "correct",
        "time",
        "corruption",
        "severity",
    ]
    assert [line.split("\t")[5:7] for line in lines[1:]] == [["gaussian_noise", "1"], ["gaussian_noise", "2"],
                                                              ["fog", "1"], ["fog", "2"]]  # fmt: skip


def test_shift_table_of_a_hand_made_file(tmp_path, capsys):
    """Certified accuracy, ACR and the means over corruptions on rows whose answers are known: 2 corruptions,
    severities 1 and 2, 4 images each (radius 0.0 = abstain)."""
    from msds_lightning.results import ResultWriter

    path = tmp_path / "hand.tsv"
    radii = {  # (corruption, severity): radii of the 4 images; the first `correct` of them are correct
        ("shot_noise", 1): ([0.6, 0.3, 0.1, 0.0], 3),
        ("shot_noise", 2): ([0.2, 0.0, 0.0, 0.0], 1),
        ("contrast", 1): ([0.9, 0.8, 0.0, 0.0], 2),
        ("contrast", 2): ([0.4, 0.7, 0.0, 0.0], 1),  # image 1 certified but wrong
    }
    with ResultWriter(path, extra_columns=("corruption", "severity")) as writer:
        for (c, s), (rs, correct) in radii.items():
            for i, r in enumerate(rs):
                idx = CORRUPTIONS.index(c) * 50_000 + (s - 1) * 10_000 + i
                predict = (3 if i < correct else 4) if r > 0 else -1
                writer.write(idx, 3, predict, r, 1.0, corruption=c, severity=s)
    assert main(["analyze", str(path), "--radii", "0", "0.5"]) == 0
    out = capsys.readouterr().out
    # shot_noise (code 1) before contrast (code 11): the data set's order, whatever the file's
    assert "| shot_noise | 1 | 4 | 0.750 | 0.250 | 0.2500 |" in out  # (0.6 + 0.3 + 0.1) / 4
    assert "| shot_noise | 2 | 4 | 0.250 | 0.000 | 0.0500 |" in out
    assert "| contrast | 1 | 4 | 0.500 | 0.500 | 0.4250 |" in out
    assert "| contrast | 2 | 4 | 0.250 | 0.000 | 0.1000 |" in out
    assert "| mean of 2 | 1 | 8 | 0.625 | 0.375 | 0.3375 |" in out
    assert "| mean of 2 | 2 | 8 | 0.250 | 0.000 | 0.0750 |" in out
    assert "| mean of 2 | all | 16 | 0.438 | 0.188 | 0.206" in out  # ACR 0.20625
    assert out.index("| shot_noise | 1 |") < out.index("| contrast | 1 |")
