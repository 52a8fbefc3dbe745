"""Scale-out: kill and resume, multi-node launch, SLURM templates and guards (CPU, gloo)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msds_lightning.cli import main
from msds_lightning.loggers import wandb_logger

from .conftest import REPO
from .test_certify_cli import N_IMAGES, overrides, rows_without_time

SLOW = ["--model.n=1200", "--model.batch_size=600", "--data.init_args.batch_size=1"]  # ~0.4 s per image


def env(**extra) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "NODE_RANK"))}
    return {**clean, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def certify_cmd(assets, output, *extra) -> list[str]:
    return [sys.executable, "-m", "msds_lightning.cli", "certify", *overrides(assets, output, *extra)]


@pytest.fixture(scope="module")
def reference(tiny_assets, tmp_path_factory):
    """An uninterrupted single-process run with the slow settings."""
    output = tmp_path_factory.mktemp("reference") / "ref.tsv"
    assert main(["certify", *overrides(tiny_assets, output, *SLOW)]) == 0
    return output


def test_sigkill_mid_run_then_rerun_gives_identical_results(tiny_assets, reference, tmp_path):
    output = tmp_path / "killed.tsv"
    shard = output.with_name(output.name + ".shards") / "rank0.tsv"
    proc = subprocess.Popen(certify_cmd(tiny_assets, output, *SLOW), env=env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shard.is_file() and len(shard.read_text().splitlines()) >= 3:  # header + 2 images
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(shard.read_text().splitlines()) - 1
    assert 2 <= done < N_IMAGES and not output.exists()
    assert main(["certify", *overrides(tiny_assets, output, *SLOW)]) == 0
    assert rows_without_time(output) == rows_without_time(reference)


def test_sigterm_stops_after_the_batch_then_resume_checks_settings(tiny_assets, reference, tmp_path):
    """`kill`/`timeout`/SLURM's SIGTERM: the run stops after the rows in flight are written, exits 143 and
    says how to resume; resuming the shards with another σ is refused; the same command completes them."""
    output = tmp_path / "stopped.tsv"
    shard = output.with_name(output.name + ".shards") / "rank0.tsv"
    proc = subprocess.Popen(certify_cmd(tiny_assets, output, *SLOW), env=env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shard.is_file() and len(shard.read_text().splitlines()) >= 2:  # header + 1 image
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err
    done = len(shard.read_text().splitlines()) - 1
    assert 1 <= done < N_IMAGES and not output.exists()

    assert main(["certify", *overrides(tiny_assets, output, *SLOW, "--model.sigma=0.5")]) == 2
    assert main(["certify", *overrides(tiny_assets, output, *SLOW)]) == 0
    assert rows_without_time(output) == rows_without_time(reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~50 s; rank-count independence stays in the default suite (test_certify_cli DDP test)
def test_simulated_two_node_launch_matches_single_process(tiny_assets, reference, tmp_path):
    """Two 'nodes' of one process each on localhost, ranks from the environment as torchrun/SLURM set them."""
    output = tmp_path / "two_nodes.tsv"
    port = str(free_port())
    cmd = certify_cmd(tiny_assets, output, *SLOW, "--trainer.num_nodes=2", "--trainer.devices=1",
                      "--trainer.strategy=ddp")  # fmt: skip
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env(
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), LOCAL_RANK="0", WORLD_SIZE="2"
            ),
        )  # fmt: skip
        for node in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    assert rows_without_time(output) == rows_without_time(reference)


def fake_slurm_bin(folder: Path) -> Path:
    """`srun` that runs its command once (flags dropped), `scontrol` that records its arguments."""
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (folder / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {folder}/scontrol.log\n')
    for f in ("srun", "scontrol"):
        (folder / f).chmod(0o755)
    return folder


@pytest.mark.slow  # ~60 s; the signal -> stop after the batch -> resume path stays in the default suite (sigterm test)
def test_certify_sbatch_template_requeues_on_signal_and_completes(tiny_assets, reference, tmp_path):
    bin_dir = fake_slurm_bin(tmp_path / "bin")
    output = tmp_path / "sbatch.tsv"
    args = [
        a
        for a in overrides(tiny_assets, output, *SLOW)
        if a not in ("-c", str(REPO / "configs/cifar10/certify_dds.yaml"))
    ]
    args += ["--trainer.strategy=auto"]  # the overlay's DDPStrategy is for GPUs; one CPU process here
    script = REPO / "experiments/slurm/certify.sbatch"
    e = env(PATH=f"{bin_dir}:{os.environ['PATH']}", MSDS=str(REPO / ".venv/bin/msds"), SLURM_JOB_ID="4242",
            SLURM_NNODES="1", SLURM_NTASKS_PER_NODE="1", SLURM_SUBMIT_DIR=str(REPO))  # fmt: skip
    proc = subprocess.Popen(["bash", str(script), str(REPO / "configs/cifar10/certify_dds.yaml"), *args], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    shard = output.with_name(output.name + ".shards") / "rank0.tsv"
    deadline = time.time() + 240
    while time.time() < deadline and not (shard.is_file() and len(shard.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@300` delivers before the time limit
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert rows_without_time(output) == rows_without_time(reference)


def test_certify_refuses_training_hpc_checkpoint_under_slurm(tiny_assets, tmp_path, monkeypatch, capsys):
    root = tmp_path / "train_root"
    root.mkdir()
    (root / "hpc_ckpt_3.ckpt").write_bytes(b"not for certification")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "certify")
    code = main(
        ["certify", *overrides(tiny_assets, tmp_path / "x.tsv", f"--trainer.default_root_dir={root}")]
    )
    assert code != 0 and "hpc_ckpt_3.ckpt" in capsys.readouterr().err


def test_wandb_run_id_is_stable_across_requeues(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    first = wandb_logger(name="finetune", save_dir=str(tmp_path))
    second = wandb_logger(name="finetune", save_dir=str(tmp_path))
    assert first.version == second.version == "finetune-777"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert wandb_logger(name="x", save_dir=str(tmp_path)).version is None


def test_sbatch_templates_parse():
    for name in ("certify.sbatch", "finetune.sbatch"):
        assert subprocess.run(["bash", "-n", str(REPO / "experiments/slurm" / name)]).returncode == 0


def test_finetune_killed_and_resumed_continues_from_saved_step(tiny_assets, tmp_path):
    """SIGKILL a fine-tuning run after it saved a checkpoint; `--ckpt_path last` resumes from that step
    with the optimizer state (AdamW's step counter continues instead of restarting)."""
    import torch

    ckpt_dir = tmp_path / "ckpt"
    args = [
        "-c", str(REPO / "configs/cifar10/finetune_msds.yaml"),
        f"--model.denoiser.init_args.path={tiny_assets / 'denoiser'}",
        f"--model.classifier.init_args.checkpoint={tiny_assets / 'classifier.safetensors'}",
        "--model.classifier.init_args.model_name=test_vit", "--model.classifier.init_args.input_size=null",
        "--model.classifier.init_args.model_kwargs={img_size: 32}", "--model.num_noise_samples=2",
        f"--model.export_dir={tmp_path / 'exported'}", f"--data.init_args.root={tiny_assets / 'cifar10'}",
        "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--trainer.accelerator=cpu",
        "--trainer.devices=1", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={ckpt_dir}", "--trainer.callbacks.every_n_train_steps=3",
        "--trainer.callbacks.save_last=true", "--trainer.callbacks.save_top_k=-1",
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "msds_lightning.cli", "finetune", *args, "--trainer.max_steps=100000"],
                            cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 240
    # ModelCheckpoint names its files epoch=E-step=S.ckpt: wait for the second save (step 6)
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.endswith("step=6.ckpt") for p in ckpt_dir.glob("*.ckpt")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True, map_location="cpu")
    step = saved["global_step"]
    # last.ckpt is rewritten just after each epoch=E-step=S.ckpt, so a kill can fall in between: it then
    # holds the previous save (step 3), which is exactly what a resume should start from
    assert step >= 3 and step % 3 == 0
    assert main(["finetune", *args, f"--trainer.max_steps={step + 3}", "--ckpt_path=last"]) == 0
    resumed = torch.load(ckpt_dir / "last.ckpt", weights_only=True, map_location="cpu")
    assert resumed["global_step"] == step + 3
    adam_steps = {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(step + 3)}  # a fresh optimizer would have counted 3
