"""The reduced demo (same code path as `make demo`, few steps and images) produces every artefact."""

from __future__ import annotations

import csv
import json

import pytest

from msds_lightning.demo import CERTIFY_RUNS, OUT, STAGES, STORY, level_breakdown, run_demo
from msds_lightning.results import read_results


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    text = run_demo(STAGES, workdir=workdir, quick=True)  # every stage (make demo-all), reduced
    return workdir, text


def test_every_report_artefact(demo):
    workdir, text = demo
    out = workdir / OUT
    for stem, *_ in CERTIFY_RUNS:
        res = read_results(out / "certify" / f"{stem}.tsv")
        assert res.idx.tolist() == list(range(24))  # data.max = 24 in quick mode
    report = (out / "report" / "report.md").read_text()
    assert report == text and "| cascade {0.125, 0.25}, MSDS fine-tuned denoiser |" in report
    assert "| DiffSmooth, σ = 0.25 (local σ' = 0.125, m = 5) |" in report
    assert "## Empirical robustness" in report and "| TRADES, real + generated (1 : 1 per batch) |" in report
    assert (out / "generated_digits.npz").is_file() and len(list((out / "attack").glob("trades_*.tsv"))) == 2
    assert "Base classifier, clean test accuracy" in report and "quick mode" in report
    assert "## The claim, with paired 95% intervals" in report and "| ACR vs the pretrained cascade" in report
    assert "## Where the cascades answer" in report and "## Settings, and where they come from" in report
    assert "samples/image" in report
    # shift: the fine-tuned cascade per corruption and severity (quick: 2 digits x 5 corruptions x severities 1, 2)
    assert "## Under distribution shift" in report and "| gaussian_blur | 2 | 2 |" in report
    assert "| mean of 5 | 1 | 10 |" in report and "| mean of 5 | all | 20 |" in report
    # IDC: trained, attacked with PGD and EOT-PGD, its row carries its cost (4 U-Net evaluations)
    assert "| IDC: 4-step Brownian bridge to label images (stochastic sampler) |" in report
    idc_row = next(line for line in report.splitlines() if line.startswith("| IDC"))
    cells = [c.strip() for c in idc_row.strip("|").split("|")]
    assert cells[5] == "4" and float(cells[6]) > 0 and cells[7] == "24"  # NFE, ms / image, images
    assert all(0.0 <= float(c) <= 1.0 for c in cells[1:5])  # clean, PGD, EOT-PGD, worst case
    trades_row = next(line for line in report.splitlines() if line.startswith("| TRADES, real digits"))
    assert [c.strip() for c in trades_row.strip("|").split("|")][3] == "—"  # no EOT for a deterministic CNN
    assert (out / "idc" / "idc_config.json").is_file() and (out / "attack" / "idc.cost.json").is_file()
    png = (out / "report" / "certified_accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for path in (
        "denoiser/unet",
        "denoiser_msds/unet",
        "classifier.safetensors",
        "classifier_noise0.125.safetensors",
    ):
        assert (out / path).exists()


def test_wandb_offline_runs_hold_the_curves_and_samples(demo):
    workdir, _ = demo
    runs = list((workdir / OUT / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 + len(CERTIFY_RUNS)  # fine-tuning + one per certification
    tables = [json.loads(p.read_text()) for p in (workdir / OUT / "logs" / "wandb").rglob("*.table.json")]
    curves = [t for t in tables if t["columns"] == ["radius", "certified_accuracy", "run"]]
    assert {row[2] for t in curves for row in t["data"]} == {stem for stem, *_ in CERTIFY_RUNS}
    for t in curves:
        radius = [row[0] for row in t["data"]]
        accuracy = [row[1] for row in t["data"]]
        assert radius[0] == 0.0 and accuracy == sorted(accuracy, reverse=True)  # a curve: non-increasing
    images = list((workdir / OUT / "logs" / "wandb").rglob("media/images/**/*.png"))
    assert any("denoised" in str(p) for p in images)


def test_csv_logs_hold_the_same_numbers_as_the_report(demo):
    workdir, _ = demo
    from msds_lightning.results.analysis import summarize

    for stem in ("dds_sigma0.125", "msds_finetuned"):
        metrics = next((workdir / OUT / "logs").glob("certify_*/version_*/metrics.csv"), None)
        assert metrics is not None
        rows = [r for p in (workdir / OUT / "logs").glob("certify_*/version_*/metrics.csv")
                for r in csv.DictReader(p.open())]  # fmt: skip
        logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith(f"certify/{stem}/") and v}
        summary = summarize(read_results(workdir / OUT / "certify" / f"{stem}.tsv"), [0.0, 0.5])
        # the metric sees unrounded radii, the file 3 significant digits: equal away from grid ties
        assert logged[f"certify/{stem}/acc@0"] == pytest.approx(summary.accuracy[0])
        assert logged[f"certify/{stem}/acr"] == pytest.approx(summary.acr, abs=2e-3)


def test_stages_reuse_existing_models(demo, capsys):
    workdir, _ = demo
    run_demo(["report"], workdir=workdir, quick=True)
    out = capsys.readouterr().out
    assert "[demo] stage 1/1: report" in out and "[demo] pretrain done" not in out


def test_the_story_is_the_default_and_needs_are_resolved(tmp_path, monkeypatch):
    from msds_lightning.cli.demo import main
    from msds_lightning.demo import _with_needs

    monkeypatch.chdir(tmp_path)  # no outputs/demo here: every needed stage is missing

    assert STORY == ("pretrain", "classifier", "finetune", "certify", "report")
    assert _with_needs(["certify"], force=False) == ["pretrain", "classifier", "finetune", "certify"]
    assert _with_needs(["diffsmooth"], force=False) == ["pretrain", "noisy_classifier", "diffsmooth"]
    assert _with_needs(["adversarial"], force=False) == ["generator", "generate", "adversarial"]
    with pytest.raises(SystemExit):
        main(["--all", "--stages", "report"])


def test_level_breakdown_counts_each_outcome():
    import numpy as np

    from msds_lightning.results import Results

    # four images; levels σ 0.5 then 0.25 (highest first). 0: answered right at 0.5; 1: straddle at 0.5
    # (stops); 2: falls through 0.5, answered wrongly at 0.25; 3: falls through both
    columns = {
        "N@0.5": ["1000"] * 4, "pL@0.5": ["0.8", "0.4", "0.1", "0.1"], "pU@0.5": ["0.9", "0.6", "0.3", "0.2"],
        "c@0.5": ["1", "2", "3", "4"],
        "N@0.25": ["", "", "1000", "1000"], "pL@0.25": ["", "", "0.7", "0.2"], "pU@0.25": ["", "", "0.8", "0.4"],
        "c@0.25": ["", "", "5", "4"],
    }  # fmt: skip
    label = np.array([1, 2, 3, 4])
    results = Results("r", np.arange(4), label, np.array([1, -1, 5, -1]), np.zeros(4), np.array([1, 0, 0, 0]),
                      columns)  # fmt: skip
    assert level_breakdown(results, sigmas=(0.25, 0.5)) == [
        dict(sigma=0.5, reached=4, correct=1, wrong=0, straddle=1, fell_through=2),
        dict(sigma=0.25, reached=2, correct=0, wrong=1, straddle=0, fell_through=1),
    ]


def test_demo_configs_share_the_base_classifier():
    from msds_lightning.demo import CONFIGS

    for config in ("finetune_msds.yaml", "certify_msds.yaml", "certify_dds.yaml"):
        assert "  classifier: classifier.yaml" in (CONFIGS / config).read_text()


def test_plan_on_the_digits_configs(demo, monkeypatch, capsys):
    """`msds plan` on the demo's own configs (their trained models): the radius limits in closed form, the
    57 test digits of the protocol, and the adaptive estimate replayed on the demo's single-σ rows."""
    from msds_lightning.cli import main
    from msds_lightning.cli.plan import level_alphas, max_radius
    from msds_lightning.demo import CONFIGS
    from msds_lightning.smoothing.adaptive import AdaptiveSampling

    workdir, _ = demo
    monkeypatch.chdir(workdir)
    runs = sorted((workdir / OUT / "logs" / "wandb").glob("offline-run-*"))
    replay = [str(OUT / "certify" / f"dds_sigma{s}.tsv") for s in ("0.25", "0.125")]  # highest σ first
    assert (
        main(["plan", "-c", str(CONFIGS / "certify_msds.yaml"), "--replay", *replay, "--budget", "1h"]) == 0
    )
    out = capsys.readouterr().out
    alphas = level_alphas(0.001, 2, True, AdaptiveSampling(), 10_000)
    for sigma, a in zip((0.25, 0.125), alphas):
        assert f"| {sigma:g} | {a:.3g} | {max_radius(sigma, 10_000, a):.4f} |" in out
    # the demo's grid goes to r = 1.0, which N = 10,000 cannot reach (its r = 1.0 column is all zeros)
    limit = max_radius(0.25, 10_000, alphas[0])
    assert (
        f"warning: radius 1 of results.radii exceeds what N = 10,000 can certify at any level ({limit:.4f})"
        in out
    )
    assert "warning: radius 0.75" not in out
    assert "57 image(s) to certify" in out and "estimated wall time: at most" in out
    assert (
        "adaptive sampling, replayed on 24 image(s) (σ = 0.25: " in out
        and "budget 60 min: fits expected (replay)" in out
    )
    assert main(["plan", "-c", str(CONFIGS / "certify_dds.yaml"), "--model.sigma=0.5", "--model.n=200"]) == 0
    out = capsys.readouterr().out
    assert f"| 0.5 | {level_alphas(0.001, 1, False, AdaptiveSampling(), 200)[0]:.3g} |" in out
    assert "warning: radius 1 of results.radii exceeds what N = 200 can certify" in out
    assert sorted((workdir / OUT / "logs" / "wandb").glob("offline-run-*")) == runs  # planning logs no run
