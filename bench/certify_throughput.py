"""Certification throughput: the field's reference loop vs our engine vs bare forward passes.

    .venv/bin/python bench/certify_throughput.py [--sizes tiny demo] [--images 8] [--n 1000] [--out bench/RESULTS.md]
    make bench

In one process, on the same models, inputs and N (n0 selection + n estimation samples per image):
(a) reference: Cohen et al.'s loop, one image at a time, batches of min(batch, remaining) copies, noise
    from the global generator, counts copied to the host and tallied in Python every batch;
(b) engine: ``Engine.certify`` on all images at once (packing, per-image seeded noise, counts on
    the device, one host copy per call, inference mode); (b') the same with ``compile=True`` (fixed
    shapes, last forward padded; compile time reported separately, not in samples/s); on a GPU also
    (b'') compile + bf16 autocast;
(c) floor: the bare forward passes (denoiser + classifier) on the same number of samples, no smoothing.
Prints samples/s, b/a and c/b, and peak memory of the engine at N = 1,000 vs 100,000 (fresh processes),
and writes the table to ``--out`` with the machine, torch version and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from msds_lightning.convert import KINDS
from msds_lightning.models import Classifier, DenoiseAndClassify, DiffusionDenoiser
from msds_lightning.smoothing import Engine, clopper_pearson_lower

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.tiny_models
from tests.tiny_models import tiny_classifier, tiny_denoiser  # noqa: E402

SIGMA, ALPHA, N0 = 0.25, 0.001, 100
DEMO_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                 norm_num_groups=8, add_attention=False)  # fmt: skip


def build(size: str, device: torch.device):
    """(base classifier f(x_noisy) at σ, image shape) with random weights."""
    torch.manual_seed(0)
    if size == "tiny":
        denoiser, classifier, shape = tiny_denoiser(), tiny_classifier(), (3, 32, 32)
    elif size == "demo":
        denoiser = DiffusionDenoiser.from_config(
            DEMO_UNET, {"num_train_timesteps": 1000, "beta_schedule": "linear"}
        )
        classifier = Classifier("msds_small_cnn", 10, mean=[0.5], std=[0.5], model_kwargs={"in_chans": 1})
        shape = (1, 8, 8)
    elif size == "cifar10":  # the 52M improved-diffusion architecture + ViT-B/16 at 224 (GPU-sized)
        improved = KINDS["improved-cifar10"]
        denoiser = DiffusionDenoiser.from_config(improved.unet, improved.scheduler, rescale_timesteps=True)
        classifier = Classifier("vit_base_patch16_224", 10, input_size=224, mean=[0.5] * 3, std=[0.5] * 3)
        shape = (3, 32, 32)
    else:
        raise ValueError(f"unknown size {size!r}")
    model = DenoiseAndClassify(denoiser, classifier, SIGMA).to(device).eval()
    return model, shape


def reference_certify(f, x, n0, n, batch, num_classes=10):
    """Cohen et al.'s CERTIFY as the field runs it (host counts per batch, Python tally)."""

    def counts(num):
        tally = np.zeros(num_classes, dtype=int)
        remaining = num
        while remaining > 0:
            this = min(batch, remaining)
            remaining -= this
            b = x.repeat((this, 1, 1, 1))
            noise = torch.randn_like(b) * SIGMA
            for p in f(b + noise).argmax(1).cpu().numpy():
                tally[p] += 1
        return tally

    with torch.no_grad():
        c_hat = int(counts(n0).argmax())
        n_a = int(counts(n)[c_hat])
    return clopper_pearson_lower(n_a, n, ALPHA)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure(size, images, n, batch, device, repeats=3) -> dict:
    f, shape = build(size, device)
    x = torch.rand(images, *shape, device=device)
    samples = images * (N0 + n)
    engine = Engine(f, 10, SIGMA, seed=0, batch_size=batch)
    compiled = Engine(f, 10, SIGMA, seed=0, batch_size=batch, compile=True)
    # warm-up (allocator, kernels) on one image; the first compiled call compiles
    reference_certify(f, x[0], 10, batch, batch)
    engine.certify(x[:1], [0], 10, batch, ALPHA)
    compile_seconds = timed(lambda: compiled.certify(x[:1], [0], 10, batch, ALPHA), device)
    variants = {"compiled": compiled}
    if device.type == "cuda":
        variants["compiled_bf16"] = Engine(f, 10, SIGMA, batch_size=batch, compile=True, autocast="bf16")
        variants["compiled_bf16"].certify(x[:1], [0], 10, batch, ALPHA)

    inputs = torch.rand(batch, *shape, device=device)

    def floor():
        with torch.no_grad():
            done = 0
            while done < samples:
                this = min(batch, samples - done)
                f(inputs[:this]).argmax(1)
                done += this

    runs = {
        "reference": lambda: [reference_certify(f, x[i], N0, n, batch) for i in range(images)],
        "engine": lambda: engine.certify(x, list(range(images)), N0, n, ALPHA),
        **{
            name: (lambda e=e: e.certify(x, list(range(images)), N0, n, ALPHA))
            for name, e in variants.items()
        },
        "floor": floor,
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):  # interleaved, best of `repeats`: this machine's timings are noisy
        for name, fn in runs.items():
            best[name] = min(best[name], timed(fn, device))
    row = dict(size=size, images=images, n0=N0, n=n, batch=batch, compile_seconds=compile_seconds)
    row.update({name: samples / seconds for name, seconds in best.items()})
    return row


def peak_memory(size: str, n: int, device: str) -> float:
    """Peak memory (MiB) of certifying one image with the engine, in a fresh process."""
    code = (
        "import resource, sys, torch, json; sys.path.insert(0, 'bench'); import certify_throughput as b;"
        f"d = torch.device('{device}'); f, s = b.build('{size}', d); x = torch.rand(1, *s, device=d);"
        f"b.Engine(f, 10, b.SIGMA, batch_size=1000).certify(x, [0], b.N0, {n}, b.ALPHA);"
        "m = torch.cuda.max_memory_allocated() / 2**20 if d.type == 'cuda' else "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes", nargs="+", default=None, help="tiny demo cifar10 (default: tiny demo; + cifar10 on GPU)"
    )
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--n", type=int, default=1000, help="estimation samples per image (plus n0 = 100)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/RESULTS.md")
    args = p.parse_args()
    device = torch.device(args.device)
    sizes = args.sizes or (["tiny", "demo", "cifar10"] if device.type == "cuda" else ["tiny", "demo"])

    rows = [measure(s, args.images, args.n, args.batch, device, args.repeats) for s in sizes]
    memory = {n: peak_memory("demo", n, args.device) for n in (1000, 100_000)}
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine += f", {torch.cuda.get_device_name()}"
    lines = [
        "# Certification throughput", "",
        f"`{' '.join(['python', *sys.argv])}` on {device.type} ({machine}); σ = {SIGMA}, n0 = {N0}, "
        f"batch {args.batch}, random weights. Samples/s = images × (n0 + n) / wall time, best of "
        f"{args.repeats} interleaved repeats.", "",
        "| models | images × (n0 + n) | (a) reference loop | (b) engine | (b') engine + compile | "
        "(c) bare forwards | b/a | b'/a | c/b | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['size']} | {r['images']} × ({r['n0']} + {r['n']}) | {r['reference']:,.0f} | "
                     f"{r['engine']:,.0f} | {r['compiled']:,.0f} | {r['floor']:,.0f} | "
                     f"{r['engine'] / r['reference']:.2f} | {r['compiled'] / r['reference']:.2f} | "
                     f"{r['floor'] / r['engine']:.2f} | {r['compile_seconds']:.0f} |")  # fmt: skip
    if device.type == "cuda":
        lines += ["", "bf16 autocast + compile (changes f's numerics): " + "; ".join(
            f"{r['size']}: {r['compiled_bf16']:,.0f} samples/s ({r['compiled_bf16'] / r['reference']:.2f}× the reference)"
            for r in rows)]  # fmt: skip
    unit = "GPU MiB (max allocated)" if device.type == "cuda" else "MiB peak RSS"
    lines += ["", f"Peak memory, engine, demo models, one image: N = 1,000: {memory[1000]:,.0f} {unit}; "
              f"N = 100,000: {memory[100_000]:,.0f} {unit} (ratio {memory[100_000] / memory[1000]:.3f})."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
