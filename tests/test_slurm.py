"""Opt-in: submit the certify sbatch template to a real one-node SLURM cluster (2 tasks, gloo on CPU).

Run with a local cluster (root, Debian packages slurmd slurmctld slurm-client munge):

    experiments/slurm/local_cluster.sh start
    SLURM_CONF=/tmp/msds-slurm/slurm.conf MSDS_SLURM_TEST=1 .venv/bin/python -m pytest tests/test_slurm.py -m slow
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from msds_lightning.cli import main

from .conftest import REPO
from .test_certify_cli import overrides, rows_without_time

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("MSDS_SLURM_TEST") != "1", reason="opt-in: set MSDS_SLURM_TEST=1"),
]


def test_certify_template_on_real_slurm_matches_single_process(tiny_assets, tmp_path):
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.fail(
            "MSDS_SLURM_TEST=1 but no reachable SLURM cluster (experiments/slurm/local_cluster.sh start)"
        )
    reference, output = tmp_path / "single.tsv", tmp_path / "slurm.tsv"
    assert main(["certify", *overrides(tiny_assets, reference)]) == 0
    args = [
        a
        for a in overrides(tiny_assets, output)
        if a not in ("-c", str(REPO / "configs/cifar10/certify_dds.yaml"))
    ]
    args = [a for a in args if not a.startswith("--trainer.devices")]  # devices come from SLURM
    cmd = ["sbatch", "--wait", f"--output={tmp_path}/%x-%j.out", "--nodes=1", "--ntasks-per-node=2",
           "--cpus-per-task=1", "--gres=none", "experiments/slurm/certify.sbatch",
           str(REPO / "configs/cifar10/certify_dds.yaml"), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert proc.returncode == 0, proc.stderr + logs[-3000:]
    assert "Starting with 2 processes" in logs
    assert rows_without_time(output) == rows_without_time(reference)
