"""The GPU path on the CPU: no host syncs in the sampling loop, on-device counts equal a plain bincount,
``batch_size: auto``, and the GPU check's dry run and its no-GPU failure."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from msds_lightning.smoothing import (
    ESTIMATION,
    Engine,
    IgnoreSigma,
    noise_seed,
    probe_batch_size,
    sample_counts,
)

ROOT = Path(__file__).resolve().parents[1]
# aten ops that read a device value back to the host (a CUDA sync), or whose output size depends on data
SYNCING_OPS = (
    "_local_scalar_dense",
    "bincount",
    "nonzero",
    "unique",
    "masked_select",
    "item",
    "equal",
    "is_nonzero",
)


def linear_classifier(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes)).eval()


class OpLog(TorchDispatchMode):
    """Records the name of every aten op dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_sampling_loop_has_no_op_that_syncs_a_gpu():
    f = linear_classifier()
    x = torch.rand(3, 3, 8, 8)
    with OpLog() as log:
        counts = sample_counts(
            f, x, [0, 1, 2], 700, 0.5, 10, seed=0, stream=(ESTIMATION,), batch_size=256, pad=True
        )
    assert counts.sum().item() == 3 * 700
    assert "scatter_add_" in log.names and "randn" in log.names  # the log sees the loop's ops
    assert not [name for name in log.names if name in SYNCING_OPS]


def test_on_device_counts_equal_a_plain_bincount_of_the_same_draws():
    f = linear_classifier()
    x = torch.rand(2, 3, 8, 8)
    num, block = 600, 256
    counts = sample_counts(f, x, [5, 9], num, 0.5, 10, seed=3, stream=(ESTIMATION,), batch_size=97)
    expected = np.zeros((2, 10), dtype=np.int64)
    generator = torch.Generator()
    for row, index in enumerate([5, 9]):
        for b in range(-(-num // block)):
            generator.manual_seed(noise_seed(3, index, (ESTIMATION,), b))
            noise = torch.randn((block, 3, 8, 8), generator=generator)[: min(block, num - b * block)]
            with torch.no_grad():
                labels = f(x[row].unsqueeze(0) + noise * 0.5).argmax(1).numpy()
            expected[row] += np.bincount(labels, minlength=10)
    np.testing.assert_array_equal(counts.numpy(), expected)


def test_batch_size_auto_probes_once_and_changes_no_count():
    f = IgnoreSigma(linear_classifier())
    x = torch.rand(3, 3, 8, 8)
    fixed = Engine(f, 10, 0.5, batch_size=100).certify(x, [0, 1, 2], 100, 1000, 0.001)
    auto = Engine(f, 10, 0.5, batch_size="auto")
    assert auto.batch_size is None
    assert auto.certify(x, [0, 1, 2], 100, 1000, 0.001) == fixed
    chosen, probed = auto.batch_size, dict(auto.probed)
    assert chosen in probed and probed[chosen] == max(probed.values())
    auto.certify(x, [0, 1, 2], 100, 1000, 0.001)
    assert auto.probed == probed  # probed once
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or 'auto', got 'big'"):
        Engine(f, 10, 0.5, batch_size="big")


def test_probe_batch_size_stops_at_the_limit_and_at_a_failing_size():
    f = linear_classifier()
    example = torch.rand(1, 3, 8, 8)
    _, speeds = probe_batch_size(f, example, start=8, limit=64, gain=0.0)
    assert list(speeds) == [8, 16, 32, 64]

    def fails_above_32(z):
        if z.shape[0] > 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return f(z)

    _, speeds = probe_batch_size(fails_above_32, example, start=8, limit=1024, gain=0.0)
    assert list(speeds) == [8, 16, 32]
    with pytest.raises(RuntimeError, match="simulated"):  # not even the first size fits: the user must know
        probe_batch_size(fails_above_32, example, start=64)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~60 s: the whole GPU check on the CPU with tiny models (run it before a GPU session)
def test_gpu_check_dry_run_measures_every_row_and_checks_the_counts(tmp_path):
    gpu_check = load_gpu_check()
    out, raw = tmp_path / "report.md", tmp_path / "raw.json"
    code = gpu_check.main(["--dry-run", "--out", str(out), "--json", str(raw), "--skip", "imagenet",
                           "--memory-n", "100", "200"])  # fmt: skip
    assert code == 0
    text = out.read_text()
    for row in ("(a) reference loop fp32", "(b) engine fp32", "(c) engine bf16", "(c') engine bf16 channels_last",
                "floor fp32", "floor bf16", "| off |", "| on |", "`batch_size: auto` picks"):  # fmt: skip
        assert row in text, row
    assert "fp32 counts equal direct loop (2 images × 100 samples): True" in text
    assert "fp32 counts equal batch third (2 images × 100 samples): True" in text
    assert "- compile: skipped (--skip)" in text and "- imagenet: skipped (--skip)" in text
    assert '"cifar10"' in raw.read_text()


def test_gpu_check_fails_fast_without_a_gpu(monkeypatch, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_script_fails_fast_without_a_gpu():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gpu_check: no CUDA GPU is visible")
