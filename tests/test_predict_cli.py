"""End to end: `msds predict` with the real CIFAR-10 and tiny configs, tiny models and a fake CIFAR-10 root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.data import CIFAR10DataModule
from msds_lightning.results.prediction import PREDICTION_COLUMNS, scan_prediction_files
from msds_lightning.smoothing import Engine

from .conftest import REPO
from .tiny_models import tiny_assets_base_classifier

CONFIG = REPO / "configs" / "cifar10" / "predict_msds.yaml"
N_IMAGES = 7


def overrides(assets: Path, output: Path, *extra: str, config: Path = CONFIG) -> list[str]:
    return [
        "-c", str(config),
        f"--model.denoiser.init_args.path={assets / 'denoiser'}",
        "--model.classifier.init_args.model_name=test_vit",
        f"--model.classifier.init_args.checkpoint={assets / 'classifier.safetensors'}",
        "--model.classifier.init_args.input_size=null",
        "--model.classifier.init_args.model_kwargs={img_size: 32}",
        "--model.n0=16", "--model.n=300", "--model.batch_size=100",
        f"--data.init_args.root={assets / 'cifar10'}", f"--data.init_args.max={N_IMAGES}",
        "--data.init_args.batch_size=3", "--data.init_args.num_workers=0",
        f"--results.output={output}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip


def rows(path: Path) -> list[dict]:
    return scan_prediction_files([path]).dicts(cast=str)


def without_time(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in table]


def engine_predictions(assets: Path, sigma, n0: int, n: int):
    base = tiny_assets_base_classifier(assets)
    engine = Engine(base, 10, sigma, cascade=isinstance(sigma, list), batch_size=64)
    dataset = CIFAR10DataModule(root=assets / "cifar10", max=N_IMAGES).predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(N_IMAGES)])
    labels = [dataset[k][1] for k in range(N_IMAGES)]
    return engine.predict_with_levels(images, list(range(N_IMAGES)), n, 0.001, n0), labels


@pytest.fixture(scope="module")
def cascade_run(tiny_assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("predict") / "msds_predict.tsv"
    assert main(["predict", *overrides(tiny_assets, output)]) == 0
    return output


def test_cascade_rows_equal_the_engine(tiny_assets, cascade_run):
    head = cascade_run.read_text().splitlines()[0].split("\t")
    assert head == [*PREDICTION_COLUMNS, "level", "sigma", "stage", "n0", "n", "p0", "nA", "nB", "samples"]
    table = rows(cascade_run)
    predictions, labels = engine_predictions(tiny_assets, [0.25, 0.5, 1.0], 16, 300)
    assert [int(r["idx"]) for r in table] == list(range(N_IMAGES))
    assert [int(r["label"]) for r in table] == labels
    assert [int(r["predict"]) for r in table] == [p.prediction for p in predictions]
    assert [int(r["level"]) for r in table] == [p.level for p in predictions]
    assert [int(r["nA"]) for r in table] == [max(p.counts) for p in predictions]
    assert [int(r["samples"]) for r in table] == [p.samples for p in predictions]
    assert [int(r["correct"]) for r in table] == [int(p.prediction == y) for p, y in zip(predictions, labels)]
    summary = cascade_run.with_suffix(".md").read_text()
    assert summary.startswith("| file | images | accuracy | abstain | wrong |")
    assert f"| msds_predict.tsv | {N_IMAGES} |" in summary
    # the default mode leaves the fingerprint as it was before the modes existed: older outputs resume
    fingerprint = cascade_run.with_suffix(".fingerprint.json").read_text()
    assert "model.mode" not in fingerprint and "model.unif_w" not in fingerprint


def test_one_sigma_is_cohens_predict(tiny_assets, tmp_path):
    output = tmp_path / "dds_predict.tsv"
    assert main(["predict", *overrides(tiny_assets, output, "--model.sigma=0.25")]) == 0
    assert output.read_text().splitlines()[0].split("\t") == [*PREDICTION_COLUMNS, "sigma", "n", "nA", "nB", "samples"]
    predictions, _ = engine_predictions(tiny_assets, 0.25, 16, 300)
    table = rows(output)
    assert [int(r["predict"]) for r in table] == [p.prediction for p in predictions]
    assert {int(r["samples"]) for r in table} == {300}  # Cohen's PREDICT draws no selection samples


def test_resume_and_refusal_of_other_settings(tiny_assets, cascade_run, tmp_path, capsys):
    output = tmp_path / "resumed.tsv"
    assert main(["predict", *overrides(tiny_assets, output, "--data.init_args.max=3")]) == 0
    assert len(rows(output)) == 3
    assert main(["predict", *overrides(tiny_assets, output)]) == 0  # fills in the other 4
    assert without_time(rows(output)) == without_time(rows(cascade_run))
    capsys.readouterr()
    assert main(["predict", *overrides(tiny_assets, output, "--model.alpha=0.01")]) == 2
    assert "alpha" in capsys.readouterr().err


def test_p0_below_one_half_is_refused(tiny_assets, tmp_path, capsys):
    assert main(["predict", *overrides(tiny_assets, tmp_path / "x.tsv", "--model.p0=0.4")]) != 0
    assert "cascade PREDICT needs 1/2 <= p0 < 1" in capsys.readouterr().err


def test_tiny_config_runs_end_to_end(tiny_assets, tmp_path):
    output = tmp_path / "tiny_predict.tsv"
    argv = [
        "-c", str(REPO / "configs" / "tiny" / "predict_msds.yaml"),
        f"--model.denoiser.init_args.path={tiny_assets / 'denoiser'}",
        f"--model.classifier.init_args.checkpoint={tiny_assets / 'classifier.safetensors'}",
        f"--data.init_args.root={tiny_assets / 'cifar10'}", "--data.init_args.max=4",
        f"--results.output={output}", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    assert main(["predict", *argv]) == 0
    assert [int(r["idx"]) for r in rows(output)] == [0, 1, 2, 3]


def test_official_empirical_mode_rows_equal_the_engine(tiny_assets, tmp_path):
    """``mode: official_empirical`` (configs/cifar10/predict_msds_empirical.yaml; no guarantee): the rows
    equal Engine.predict_empirical fed with the classifier's logits on the un-noised images."""
    output = tmp_path / "empirical.tsv"
    config = REPO / "configs" / "cifar10" / "predict_msds_empirical.yaml"
    assert main(["predict", *overrides(tiny_assets, output, "--model.n=40", config=config)]) == 0
    head = output.read_text().splitlines()[0].split("\t")
    assert head == [*PREDICTION_COLUMNS, "level", "sigma", "stage", "n0", "n", "p0", "nA", "nB", "samples",
                    "pred0", "clean", "c_max"]  # fmt: skip
    table = rows(output)

    base = tiny_assets_base_classifier(tiny_assets)
    engine = Engine(base, 10, [0.25, 0.5, 1.0], batch_size=64)
    dataset = CIFAR10DataModule(root=tiny_assets / "cifar10", max=N_IMAGES).predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(N_IMAGES)])
    with torch.no_grad():
        logits = base.classifier(images)  # the clean classifier: no noise, no denoiser
    expected = engine.predict_empirical(images, list(range(N_IMAGES)), 40, logits, 0.1)
    assert {p.level for p in expected} == {-1, 0, 1, 2}  # each level fires for some image, none for one
    assert [int(r["predict"]) for r in table] == [p.prediction for p in expected]
    assert [int(r["pred0"]) for r in table] == [p.fired for p in expected]
    assert [int(r["level"]) for r in table] == [p.level for p in expected]
    assert [int(r["stage"]) for r in table] == [p.stage for p in expected]
    assert [int(r["clean"]) for r in table] == logits.argmax(1).tolist()
    assert [float(r["c_max"]) for r in table] == pytest.approx([p.confidence for p in expected], rel=1e-5)
    assert [int(r["samples"]) for r in table] == [40 * (p.stage + 1) for p in expected]
    assert {r["n0"] for r in table} == {"0"} and min(int(r["predict"]) for r in table) >= 0  # never abstains
    summary = output.with_suffix(".md").read_text()
    assert summary.startswith("| file | images | accuracy | abstain | wrong |") and "| 0.000 |" in summary
    fingerprint = output.with_suffix(".fingerprint.json").read_text()
    assert '"model.mode": "official_empirical"' in fingerprint and '"model.unif_w": 0.1' in fingerprint
