"""End to end: `msds certify` with the real CIFAR-10 config, tiny models and a fake CIFAR-10 root."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from msds_lightning.cli import main
from msds_lightning.data import CIFAR10DataModule
from msds_lightning.modules import CertifyModule
from msds_lightning.results import COHEN_COLUMNS, format_radius, read_results
from msds_lightning.smoothing import Engine

from .conftest import REPO
from .lock_holder import held_by_another_process
from .tiny_models import tiny_assets_base_classifier, tiny_classifier, tiny_denoiser

CONFIG = REPO / "configs" / "cifar10" / "certify_dds.yaml"
N_IMAGES = 7  # not divisible by 2 processes


@pytest.fixture(scope="module")
def assets(tiny_assets):
    return tiny_assets


def overrides(assets: Path, output: Path, *extra: str) -> list[str]:
    return [
        "-c", str(CONFIG),
        f"--model.denoiser.init_args.path={assets / 'denoiser'}",
        "--model.classifier.init_args.model_name=test_vit",
        f"--model.classifier.init_args.checkpoint={assets / 'classifier.safetensors'}",
        "--model.classifier.init_args.input_size=null",
        "--model.classifier.init_args.model_kwargs={img_size: 32}",
        "--model.n0=16", "--model.n=64", "--model.batch_size=50",
        f"--data.init_args.root={assets / 'cifar10'}", f"--data.init_args.max={N_IMAGES}",
        "--data.init_args.batch_size=3", "--data.init_args.num_workers=0",
        f"--results.output={output}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        *extra,
    ]  # fmt: skip


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    time_col = lines[0].split("\t").index("time")
    return [[c for k, c in enumerate(line.split("\t")) if k != time_col] for line in lines]


@pytest.fixture(scope="module")
def single_run(assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "dds.tsv"
    assert main(["certify", *overrides(assets, output)]) == 0
    return output


def test_certify_writes_cohen_tsv_equal_to_engine(assets, single_run):
    lines = single_run.read_text().splitlines()
    assert lines[0].split("\t")[:6] == list(COHEN_COLUMNS)
    res = read_results(single_run)
    assert res.idx.tolist() == list(range(N_IMAGES))
    assert (single_run.with_suffix(".md")).read_text().startswith("| file | r=0 |")
    assert (single_run.with_suffix(".config.yaml")).is_file()

    # the same computation, directly through the engine
    base = tiny_assets_base_classifier(assets)
    engine = Engine(base, 10, 0.25, seed=0, batch_size=50)  # one σ: Cohen's rule
    data = CIFAR10DataModule(root=assets / "cifar10", max=N_IMAGES)
    data.setup("predict")
    dataset = data.predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(N_IMAGES)])
    labels = [dataset[k][1] for k in range(N_IMAGES)]
    certs = engine.certify(images, list(range(N_IMAGES)), 16, 64, 0.001)
    assert res.label.tolist() == labels
    assert res.predict.tolist() == [c.prediction for c in certs]
    assert res.columns["radius"] == [format_radius(c.radius) for c in certs]
    assert res.column("nA", int).tolist() == [c.n_a for c in certs]
    assert res.correct.tolist() == [int(c.prediction == y) for c, y in zip(certs, labels)]


def test_resume_fills_in_only_missing_rows(assets, single_run, tmp_path):
    output = tmp_path / "dds.tsv"
    full = single_run.read_text().splitlines()
    kept = [full[0], full[1], full[3], full[6]]  # rows of idx 0, 2, 5 survive a "crash"
    output.write_text("\n".join(kept) + "\n" + full[2][:7])  # plus a half-written row
    fingerprint = single_run.with_suffix(".fingerprint.json")  # the crashed run's: same settings
    output.with_suffix(".fingerprint.json").write_text(fingerprint.read_text())
    assert main(["certify", *overrides(assets, output)]) == 0
    assert rows_without_time(output) == rows_without_time(single_run)
    resumed = output.read_text().splitlines()
    assert [resumed[1], resumed[3], resumed[6]] == kept[1:]  # untouched, time included
    assert not output.with_name(output.name + ".shards").exists()


def test_ddp_two_processes_match_single_process(assets, single_run, tmp_path):
    output = tmp_path / "ddp.tsv"
    cmd = [sys.executable, "-m", "msds_lightning.cli", "certify",
           *overrides(assets, output, "--trainer.devices=2", "--trainer.strategy=ddp")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rows_without_time(output) == rows_without_time(single_run)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--model.sigma=-0.5", "sigma"),
        ("--model.alpha=1.5", "alpha"),
        ("--model.n=0", "n"),
        ("--data.init_args.skip=0", "skip"),
        ("--model.sigma=1e6", "sigma"),  # beyond what the diffusion schedule reaches
    ],
)
def test_invalid_config_values_are_rejected(assets, tmp_path, capsys, override, message):
    assert main(["certify", *overrides(assets, tmp_path / "x.tsv", override)]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists()


def test_unloadable_checkpoints_name_the_file(assets, tmp_path, capsys):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not a checkpoint")
    code = main(
        ["certify", *overrides(assets, tmp_path / "x.tsv", f"--model.classifier.init_args.checkpoint={bad}")]
    )
    assert code != 0 and str(bad) in capsys.readouterr().err
    missing = tmp_path / "no_denoiser"
    code = main(
        ["certify", *overrides(assets, tmp_path / "y.tsv", f"--model.denoiser.init_args.path={missing}")]
    )
    assert code != 0 and str(missing) in capsys.readouterr().err


def test_wrong_image_size_for_denoiser_is_rejected():
    module = CertifyModule(
        tiny_classifier(), tiny_denoiser(), num_classes=10, sigma=0.25, n0=4, n=8, batch_size=8
    )
    odd = torch.rand(2, 3, 31, 31)  # the tiny UNet downsamples by 2: 31 px cannot round-trip
    with pytest.raises(ValueError, match="31"):
        module.predict_step((odd, torch.tensor([0, 1]), torch.tensor([0, 1])), 0)


def test_partial_debug_run_then_full_run(assets, single_run, tmp_path):
    output = tmp_path / "partial.tsv"
    assert main(["certify", *overrides(assets, output, "--trainer.limit_predict_batches=1")]) == 0
    assert len(read_results(output)) == 3  # one step of 3 images, merged without complaining about the rest
    assert main(["certify", *overrides(assets, output)]) == 0
    assert rows_without_time(output) == rows_without_time(single_run)


def test_multiscale_cascade_from_cli_matches_engine(assets, tmp_path, capsys):
    from msds_lightning.smoothing import MultiScaleEngine

    output = tmp_path / "msds.tsv"
    cascade = "--model.sigma=[0.25, 0.5, 1.0]"
    assert main(["certify", *overrides(assets, output, cascade, "--model.n=200")]) == 0
    res = read_results(output)
    head = output.read_text().splitlines()[0].split("\t")
    assert head[:6] == list(COHEN_COLUMNS) and head[6:9] == ["level", "sigma", "stage"]
    assert {"nA@1", "nA@0.5", "nA@0.25", "pL@1", "pU@0.25"} <= set(head)

    base = tiny_assets_base_classifier(assets)
    engine = MultiScaleEngine(base, 10, [1.0, 0.5, 0.25], batch_size=50)
    data = CIFAR10DataModule(root=assets / "cifar10", max=N_IMAGES)
    dataset = data.predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(N_IMAGES)])
    certs = engine.certify(images, list(range(N_IMAGES)), 16, 200, 0.001)
    assert res.predict.tolist() == [c.prediction for c in certs]
    assert res.columns["radius"] == [format_radius(c.radius) for c in certs]
    assert res.column("level", int).tolist() == [c.level for c in certs]
    assert res.column("stage", int).tolist() == [c.stage for c in certs]
    for k, c in enumerate(certs):  # per-level counts of every visited level are recorded
        for r in c.levels:
            assert int(res.columns[f"nA@{r.sigma:g}"][k]) == r.n_a
    # the official columns are opt-in: by default neither they nor the option are in the header or fingerprint
    assert not {"r_neg", "clean", "pred_uc", "corr_uc"} & set(head)
    assert "official_columns" not in output.with_suffix(".fingerprint.json").read_text()


def test_official_columns_of_the_cascade_equal_a_recomputation(assets, tmp_path, capsys):
    """``--model.official_columns true``: r_neg, clean, pred_uc, corr_uc after the other columns; clean is
    the classifier alone on the un-noised image, r_neg the official max of the higher levels' off-class
    radii (recomputed from the recorded counts; [0,1] pixel units; -100 if none); the option is in the
    fingerprint, and ``msds analyze`` reports the certify-or-fallback accuracy."""
    from scipy.stats import norm

    from msds_lightning.smoothing import MultiScaleEngine, off_class_upper_bound

    output = tmp_path / "official.tsv"
    # p0 = 0.3: with these random tiny models, some images are certified at the top level, some abstain
    cascade = ("--model.sigma=[0.25, 0.5, 1.0]", "--model.p0=0.3", "--data.init_args.max=4")
    assert main(["certify", *overrides(assets, output, *cascade, "--model.official_columns=true")]) == 0
    head = output.read_text().splitlines()[0].split("\t")
    assert head[-4:] == ["r_neg", "clean", "pred_uc", "corr_uc"] and head[-5] == "pU@0.25"
    res = read_results(output)

    base = tiny_assets_base_classifier(assets)
    engine = MultiScaleEngine(base, 10, [1.0, 0.5, 0.25], 0.3, batch_size=50)
    dataset = CIFAR10DataModule(root=assets / "cifar10", max=4).predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(4)])
    certs = engine.certify(images, list(range(4)), 16, 64, 0.001)
    assert {c.prediction >= 0 for c in certs} == {True, False}  # both the certified and the fallback case
    with torch.no_grad():
        clean = base.classifier(images).argmax(1).tolist()  # no noise, no denoiser
    assert res.column("clean", int).tolist() == clean
    pred_uc = [c.prediction if c.prediction >= 0 else k for c, k in zip(certs, clean)]
    assert res.column("pred_uc", int).tolist() == pred_uc
    assert res.column("corr_uc", int).tolist() == [int(p == y) for p, y in zip(pred_uc, res.label)]
    for k, c in enumerate(certs):
        final, higher = c.levels[-1], c.levels[:-1]
        r_neg = -100.0
        if final.p_lower >= 0.3 and higher:  # a level reached p0 after passing higher ones
            alpha_s = 0.001 / len(c.levels)
            r_neg = max(h.sigma * (norm.ppf(off_class_upper_bound(np.array(h.counts), final.selected, alpha_s))
                                   - norm.ppf(0.3)) for h in higher)  # fmt: skip
        assert float(res.columns["r_neg"][k]) == pytest.approx(r_neg, rel=1e-12)

    assert main(["analyze", str(output), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(table[0]["fallback_acc"]) == pytest.approx(np.mean(res.column("corr_uc")))
    # part of the fingerprint: the same output without the option is refused, not mixed
    assert main(["certify", *overrides(assets, output, *cascade)]) == 2
    assert "model.official_columns: true -> (absent)" in capsys.readouterr().err


class TagSigma(torch.nn.Module):
    """A stand-in denoiser: writes u = Φ(δ/σ) of pixel (0, 0, 0) into channel 0 and σ into channel 1."""

    def forward(self, x_noisy, sigma):
        out = torch.zeros_like(x_noisy)
        out[:, 0] = torch.special.ndtr((x_noisy[:, 0] - 0.5) / sigma)
        out[:, 1] = sigma
        return out


class ClassByLevel(torch.nn.Module):
    """After :class:`TagSigma`: class k with probability probs[σ][k]; on any other image (the clean one)
    the logits ``clean``."""

    def __init__(self, probs, clean):
        super().__init__()
        self.cdf = {s: torch.tensor(np.cumsum(p) / np.sum(p)) for s, p in probs.items()}
        self.clean = torch.tensor(clean, dtype=torch.float32)

    def forward(self, x):
        logits = self.clean.repeat(x.shape[0], 1)
        for sigma, cdf in self.cdf.items():
            rows = x[:, 1, 0, 0] == sigma
            labels = torch.searchsorted(cdf, x[rows, 0, 0, 0].double()).clamp(max=len(cdf) - 1)
            logits[rows] = torch.nn.functional.one_hot(labels, len(cdf)).float()
        return logits


def test_official_r_neg_of_a_level_that_fires_below_a_passed_one():
    """A cascade whose top level is proven below p0 and whose next level fires: the module's r_neg is the
    official max of the higher level's off-class radius (here the cap of the radius, so r_neg = -radius),
    recomputed from the recorded counts with statsmodels; clean is the classifier on the clean image."""
    from .test_multiscale import expected_off_class_radii

    probs = {1.0: [0.3, 0.25, 0.2, 0.15, 0.1], 0.5: [0.05, 0.02, 0.9, 0.02, 0.01], 0.25: [0, 0, 1, 0, 0]}
    module = CertifyModule(ClassByLevel(probs, [0, 0, 0, 0, 1.0]), TagSigma(), num_classes=5, sigma=[0.25, 0.5, 1.0],
                           n0=100, n=5000, batch_size=10000, official_columns=True)  # fmt: skip
    assert module.extra_columns[-4:] == ("r_neg", "clean", "pred_uc", "corr_uc")
    images = torch.full((3, 2, 1, 1), 0.5)
    images[:, 1] = 0.9  # no σ in channel 1: the clean image gets the logits ``clean`` (class 4)
    rows = module.predict_step((images, torch.tensor([2, 4, 0]), torch.tensor([0, 1, 2])), 0)
    certs = module.engine.certify(images, [0, 1, 2], 100, 5000, 0.001)
    for row, cert in zip(rows, certs):
        assert (row["predict"], row["level"], len(cert.levels)) == (2, 1, 2)
        assert row["r_neg"] == pytest.approx(max(expected_off_class_radii(cert, 0.001)), rel=1e-12)
        assert row["r_neg"] == pytest.approx(-row["radius"], rel=1e-12) and row["r_neg"] < 0
        assert (row["clean"], row["pred_uc"]) == (4, 2)
    assert [r["corr_uc"] for r in rows] == [1, 0, 0]


def test_adaptive_sampling_from_cli_matches_engine_and_records_samples(assets, tmp_path, capsys):
    """``--model.sampling adaptive``: the grid comes from ``results.radii``; rows equal the engine's, and
    ``samples`` / ``N@σ`` record what each image actually used; ``msds analyze`` reports the mean."""
    from msds_lightning.results.analysis import CIFAR10_RADII
    from msds_lightning.smoothing import MultiScaleEngine
    from msds_lightning.smoothing.adaptive import AdaptiveSampling

    output = tmp_path / "adaptive.tsv"
    extra = (
        "--model.sigma=[0.25, 0.5]",
        "--model.n=400",
        "--model.sampling=adaptive",
        "--model.first_checkpoint=50",
    )
    assert main(["certify", *overrides(assets, output, *extra)]) == 0
    res = read_results(output)

    base = tiny_assets_base_classifier(assets)
    sampling = AdaptiveSampling(first=50, radii=CIFAR10_RADII)
    engine = MultiScaleEngine(
        base, 10, [0.5, 0.25], batch_size=50, sampling=sampling
    )
    dataset = CIFAR10DataModule(root=assets / "cifar10", max=N_IMAGES).predict_dataset()
    images = torch.stack([dataset[k][0] for k in range(N_IMAGES)])
    certs = engine.certify(images, list(range(N_IMAGES)), 16, 400, 0.001)
    assert res.predict.tolist() == [c.prediction for c in certs]
    assert res.columns["radius"] == [format_radius(c.radius) for c in certs]
    assert res.column("samples", int).tolist() == [c.samples(16) for c in certs]
    for k, c in enumerate(certs):
        for r in c.levels:
            assert int(res.columns[f"N@{r.sigma:g}"][k]) == r.n <= 400
    assert main(["analyze", str(output)]) == 0
    table = capsys.readouterr().out
    assert "samples/image" in table.splitlines()[0]
    assert f"{res.column('samples').mean():,.0f}" in table


# --- results that cannot lie: settings-checked resume, validated rows, one writer, up-front checks ---------


def _copy_run(run: Path, output: Path) -> None:
    """``run``'s TSV, fingerprint and config under the name ``output`` (a finished run moved elsewhere)."""
    for suffix in (".tsv", ".fingerprint.json", ".config.yaml", ".counts"):
        output.with_suffix(suffix).write_bytes(run.with_suffix(suffix).read_bytes())


def test_finished_output_rerun_with_other_settings_is_refused(assets, single_run, tmp_path, capsys):
    output = tmp_path / "done.tsv"
    _copy_run(single_run, output)
    before = {s: output.with_suffix(s).read_bytes() for s in (".tsv", ".config.yaml", ".fingerprint.json")}

    assert main(["certify", *overrides(assets, output, "--model.sigma=0.5")]) == 2
    err = capsys.readouterr().err
    assert "model.sigma: 0.25 -> 0.5" in err and "--results.overwrite true" in err and "Traceback" not in err
    other = tmp_path / "other.safetensors"  # same path argument style, other weights
    from safetensors.torch import save_file

    save_file(tiny_classifier(seed=2).model.state_dict(), other)
    assert main(["certify", *overrides(assets, output, f"--model.classifier.init_args.checkpoint={other}")]) == 2
    assert "model.classifier.init_args.checkpoint: \"sha256:" in capsys.readouterr().err
    # nothing was touched, the recorded config included
    assert {s: output.with_suffix(s).read_bytes() for s in before} == before

    # the same settings with the checkpoint at another path: the same fingerprint, resumed (nothing to do)
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes((assets / "classifier.safetensors").read_bytes())
    assert main(["certify", *overrides(assets, output, f"--model.classifier.init_args.checkpoint={moved}")]) == 0
    assert rows_without_time(output) == rows_without_time(single_run)

    # an explicit overwrite starts afresh with the new settings
    assert main(["certify", *overrides(assets, output, "--model.sigma=0.5", "--results.overwrite=true")]) == 0
    assert set(read_results(output).columns["sigma"]) == {"0.5"}
    assert "sigma: 0.5" in output.with_suffix(".config.yaml").read_text()


def test_foreign_file_as_output_is_refused(assets, tmp_path, capsys):
    output = tmp_path / "notes.tsv"
    output.write_text("name\tvalue\nx\t1\n")
    assert main(["certify", *overrides(assets, output)]) == 2
    assert "holds rows but no run fingerprint" in capsys.readouterr().err
    assert output.read_text() == "name\tvalue\nx\t1\n"


def test_malformed_shard_row_is_dropped_and_redone(assets, single_run, tmp_path, capsys):
    output = tmp_path / "crashed.tsv"
    output.with_suffix(".fingerprint.json").write_bytes(single_run.with_suffix(".fingerprint.json").read_bytes())
    full = single_run.read_text().splitlines()
    shard = output.with_name(output.name + ".shards") / "rank0.tsv"
    shard.parent.mkdir()
    # rows of idx 0 and 1, then a row of idx 2 that lost its fields, then idx 3 with a contradictory 'correct'
    bad_correct = full[4].split("\t")
    bad_correct[4] = str(1 - int(bad_correct[4]))
    shard.write_text("\n".join([full[0], full[1], full[2], "2\t5\t", "\t".join(bad_correct)]) + "\n")
    # the report is a Python warning (rank_zero_warn): printed to stderr by default, recorded under pytest
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["certify", *overrides(assets, output)]) == 0
    said = capsys.readouterr().err + "\n".join(str(w.message) for w in caught)
    assert f"{shard}:4" in said and f"{shard}:5" in said and "malformed" in said
    assert rows_without_time(output) == rows_without_time(single_run)
    assert not shard.parent.exists()


def test_summary_covers_only_the_current_index_set(assets, single_run, tmp_path, capsys):
    output = tmp_path / "subset.tsv"
    _copy_run(single_run, output)
    assert main(["certify", *overrides(assets, output, "--data.init_args.max=3")]) == 0  # all done already
    summary = output.with_suffix(".md").read_text()
    assert "4 row(s)" in summary and "not in this table" in summary
    assert len(read_results(output)) == N_IMAGES  # the finished rows stay in the TSV


def test_second_writer_is_refused_while_the_first_holds_the_output(assets, tmp_path, capsys):
    """Two real processes: a holder of the output's lock (as a running `msds certify` holds it), then a
    second certification on the same output; a kill -9 of the holder frees the lock."""
    from msds_lightning.runs import OutputLock

    output = tmp_path / "shared.tsv"
    with held_by_another_process(output) as holder:
        assert main(["certify", *overrides(assets, output)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "being written by another run" in err
        assert not output.exists() and not output.with_suffix(".config.yaml").exists()
    with OutputLock(output):  # the OS released it
        pass


@pytest.mark.parametrize(
    "case,override,message",
    [
        ("folder", None, "is a folder"),
        ("fixed size", "--model.classifier.init_args.model_name=vit_tiny_patch16_224", "input_size"),
        ("text checkpoint", "TEXT", "neither a safetensors file nor a torch.save checkpoint"),
        ("union dump", "--model.denoiser.init_args.path=/nonexistent/denoiser", "Denoiser folder not found"),
    ],
)
def test_bad_inputs_fail_up_front_in_one_line(assets, tmp_path, capsys, case, override, message):
    output = tmp_path / "run.tsv"
    args = overrides(assets, output)
    if case == "folder":
        output.mkdir()
    elif case == "text checkpoint":
        text = tmp_path / "weights.pt"
        text.write_text("hello\n")
        args.append(f"--model.classifier.init_args.checkpoint={text}")
    elif case == "fixed size":  # an untrained timm ViT-Tiny at 224 px, fed the 32 px images
        dropped = ("--model.classifier.init_args.model_kwargs", "--model.classifier.init_args.checkpoint")
        args = [a for a in args if not a.startswith(dropped)] + [override, dropped[1] + "=null"]
    else:
        args.append(override)
    assert main(["certify", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("msds certify: error: ") and message in err[0], err
    assert "Traceback" not in "\n".join(err)
    assert not any(p.suffix in (".yaml", ".json") for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_batch_size_auto_from_the_config_gives_the_same_rows(assets, single_run, tmp_path):
    output = tmp_path / "auto.tsv"
    assert main(["certify", *overrides(assets, output, "--model.batch_size=auto")]) == 0
    assert rows_without_time(output) == rows_without_time(single_run)


def test_bf16_run_is_labelled_as_certifying_the_bf16_classifier(assets, single_run, tmp_path):
    assert "reduced precision" not in single_run.with_suffix(".md").read_text()
    output = tmp_path / "bf16.tsv"
    assert main(["certify", *overrides(assets, output, "--trainer.precision=bf16-mixed")]) == 0
    summary = output.with_suffix(".md").read_text()
    assert "precision bf16-mixed: the base classifier ran in reduced precision" in summary
    fingerprint = json.loads(next(tmp_path.glob("*fingerprint*")).read_text())
    assert "bf16-mixed" in json.dumps(fingerprint)
