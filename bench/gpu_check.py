"""The GPU check: certification and fine-tuning throughput at the real model sizes, in one command.

    bench/gpu_check.sh                  # GPU: installs what is missing, then runs this (≤ 8 min) and
                                        # writes bench/RESULTS_GPU.md
    bench/gpu_check.sh --dry-run        # CPU: the same code paths on the tiny models (about a minute)

Sections, in this order (each one is skipped with its reason once the time budget ``--budget`` would be
exceeded; results are written after every section, so a killed run keeps what it measured):

1. ``sync``: ``torch.cuda.set_sync_debug_mode("error")`` around the engine's whole sampling loop (noise,
   denoiser, classifier, on-device counts), fp32 eager and bf16: any host sync inside raises.
2. ``cifar10``: the 52.5M improved-diffusion UNet + ViT-B/16 at 224 px (random weights, 10 classes), σ =
   0.25, ``images × (n0 + n)`` samples for every row at the same batch size: (a) the reference loop (Cohen
   et al.'s, one image at a time, host tally per batch), (b) the engine fp32, (c) + bf16 autocast, (c')
   + channels_last, (d) + ``torch.compile``, (e) + CUDA graphs (``mode="reduce-overhead"``), and the bare
   forwards (no smoothing) fp32, bf16, bf16 compiled. Compile warm-up is timed apart. Checks: the
   engine's fp32 counts equal a direct per-image loop over the same noise blocks, and across batch sizes.
3. ``finetune``: one MSDS fine-tuning step (M = 4 noisy copies, the frozen ViT-B/16, bf16 autocast,
   AdamW) with UNet gradient checkpointing off and on: images/s and peak memory.
4. ``batch``: the largest batch that fits (``probe_batch_size`` with no early stop) and what
   ``batch_size: auto`` picks, bf16; memory of the engine at N = 1,000 vs 16,000 (flat in N).
5. ``imagenet``: the 552M guided-diffusion UNet at 256 px + ViT-B/16 (1000 classes): (a), (b), (c), floors.

6. ``profile_imagenet``, ``profile_cifar10``: the GPU kernels with the most self time in one bf16 forward.
7. ``imagenet_compile``: rows (d) and (e) at ImageNet sizes (compiling the 552M UNet takes minutes; in the
   default 430 s budget it is usually skipped; ``--skip sync cifar10 compile finetune batch`` runs it).

Rows (d) and (e) of the CIFAR-10 sizes form their own section, ``compile``, run right after ``cifar10``.
Compilation is skipped in a dry run unless ``--compile-on-cpu`` (it takes minutes on a CPU).

Samples/s = images × (n0 + n) / wall time (CUDA synchronized), best of ``--repeats`` interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: msds_lightning without installing, tests.tiny_models

from bench.certify_throughput import reference_certify  # noqa: E402  (Cohen et al.'s loop, host tally per batch)
from msds_lightning.convert import KINDS  # noqa: E402
from msds_lightning.models import Classifier, DenoiseAndClassify, DiffusionDenoiser  # noqa: E402
from msds_lightning.smoothing import (  # noqa: E402
    ESTIMATION,
    Engine,
    noise_seed,
    probe_batch_size,
    sample_counts,
)

SIGMA, ALPHA, SEED = 0.25, 0.001, 0
CARLINI_A100 = 825.0  # samples/s, Carlini et al. 2023, CIFAR-10 (52M UNet + ViT-B/16 at 224), one A100


# ---------------------------------------------------------------------------------------------------------
# models (random weights)
# ---------------------------------------------------------------------------------------------------------


def build(size: str, device: torch.device) -> tuple[DenoiseAndClassify, tuple[int, int, int], int]:
    """(f(x_noisy, σ), image shape, number of classes) for ``size`` in tiny | cifar10 | imagenet."""
    torch.manual_seed(0)
    if size == "tiny":
        from tests.tiny_models import tiny_classifier, tiny_denoiser

        denoiser, classifier, shape, classes = tiny_denoiser(), tiny_classifier(), (3, 32, 32), 10
    elif size in ("cifar10", "imagenet"):
        kind = KINDS["improved-cifar10" if size == "cifar10" else "guided-256"]
        denoiser = DiffusionDenoiser.from_config(
            kind.unet, kind.scheduler, rescale_timesteps=kind.rescale_timesteps
        )
        classes = 10 if size == "cifar10" else 1000
        classifier = Classifier(
            "vit_base_patch16_224", classes, input_size=224, mean=[0.5] * 3, std=[0.5] * 3
        )
        shape = (3, 32, 32) if size == "cifar10" else (3, 256, 256)
    else:
        raise ValueError(f"unknown size {size!r}")
    denoiser.timestep_for_sigma(SIGMA)  # cached now, so a compiled forward never traces the lookup
    return DenoiseAndClassify(denoiser, classifier).to(device).eval(), shape, classes


def parameters_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# ---------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


class Budget:
    """Seconds left of the run's budget; sections that would not fit are skipped with the reason."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


# ---------------------------------------------------------------------------------------------------------
# what is measured
# ---------------------------------------------------------------------------------------------------------


def direct_counts(f, images, indices, num, num_classes, block):
    """The engine's estimation counts recomputed the plain way: each image alone, each noise block of its
    stream drawn with its own seeded generator and classified as one forward, ``bincount`` on the host."""
    generator = torch.Generator(device=images.device)
    out = np.zeros((len(indices), num_classes), dtype=np.int64)
    with torch.inference_mode():
        for row, (x, index) in enumerate(zip(images, indices)):
            for b in range(-(-num // block)):
                generator.manual_seed(noise_seed(SEED, index, (ESTIMATION,), b))
                noise = torch.randn((block, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
                noise = noise[: min(block, num - b * block)]
                labels = f(x.unsqueeze(0) + noise * SIGMA, SIGMA).argmax(1).cpu().numpy()
                out[row] += np.bincount(labels, minlength=num_classes)
    return out


def bare_forwards(forward: Callable, shape, samples: int, batch: int, device: torch.device) -> Callable:
    """The floor: ``samples`` inputs through ``forward`` in batches, no noise, no counting. The inputs are
    made in inference mode, like the engine's, and pass once before timing: a compiled forward guards on
    inference tensors and would otherwise recompile inside the timed run."""
    with torch.inference_mode():
        inputs = torch.rand(batch, *shape, device=device)
        forward(inputs)

    def run():
        with torch.inference_mode():
            done = 0
            while done < samples:
                forward(inputs).argmax(1)
                done += batch

    return run


def sync_check(f, shape, classes, batch, device, autocast) -> str:
    """'passed' when the whole sampling loop runs under ``set_sync_debug_mode('error')``."""
    if device.type != "cuda":
        return "n/a (CPU)"
    engine = Engine(f, classes, SIGMA, batch_size=batch, autocast=autocast)
    x = torch.rand(2, *shape, device=device)
    engine.counts(x, [0, 1], 2 * batch + 7, (ESTIMATION,))  # warm-up outside the check (cuDNN, allocator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = sample_counts(
            lambda z: engine.forward(z, SIGMA), x, [0, 1], 2 * batch + 7, SIGMA, classes, seed=SEED,
            stream=(ESTIMATION,), batch_size=batch,
        )  # fmt: skip
    except RuntimeError as error:
        return f"FAILED: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "passed" if int(counts.sum()) == 2 * (2 * batch + 7) else "FAILED: counts do not add up"


def certification_rows(size, args, device, budget, variants, imagenet=False) -> dict:
    """Rows (a)–(e) and the floors for one model size; ``variants`` picks which engine rows run."""
    f, shape, classes = build(size, device)
    images, n0, n, batch = args.images, args.n0, args.n, args.batch
    if imagenet:
        images, n0, n, batch = 1, args.imagenet_n0, args.imagenet_n, args.imagenet_batch
    samples = images * (n0 + n)
    x = torch.rand(images, *shape, device=device)
    indices = list(range(images))
    out = dict(size=size, params_m=round(parameters_m(f.denoiser.unet), 1), classifier_m=round(parameters_m(f.classifier), 1),
               images=images, n0=n0, n=n, batch=batch, samples=samples, rows={}, warmup_s={}, memory_mib={})  # fmt: skip
    engines = {
        "(b) engine fp32": dict(),
        "(c) engine bf16": dict(autocast="bf16"),
        "(c') engine bf16 channels_last": dict(autocast="bf16", channels_last=True),
        "(d) engine bf16 + compile": dict(autocast="bf16", compile=True),
        "(e) engine bf16 + compile + CUDA graphs": dict(autocast="bf16", compile="reduce-overhead"),
    }
    engines = {name: options for name, options in engines.items() if name.split()[0] in variants}
    runs: dict[str, Callable] = {}
    if "(a)" in variants:
        f_at_sigma = lambda z: f(z, SIGMA)  # noqa: E731
        reference_certify(f_at_sigma, x[0], 10, batch, batch, classes)  # warm-up
        runs["(a) reference loop fp32"] = lambda: [
            reference_certify(f_at_sigma, x[i], n0, n, batch, classes) for i in indices
        ]
    built = {}
    for name, options in engines.items():
        model = f
        if options.pop("channels_last", False):
            model = build(size, device)[0].to(memory_format=torch.channels_last)
        engine = Engine(model, classes, SIGMA, seed=SEED, batch_size=batch, **options)
        reset_peak(device)
        out["warmup_s"][name] = round(
            timed(lambda e=engine: e.certify(x[:1], [0], 10, batch, ALPHA), device), 1
        )
        built[name] = engine
        runs[name] = lambda e=engine: e.certify(x, indices, n0, n, ALPHA)
    floors: dict[str, Callable] = {}
    if "(b)" in variants:
        eager_bf16 = Engine(f, classes, SIGMA, autocast="bf16").forward
        floors["floor fp32"] = lambda z: f(z, SIGMA)
        floors["floor bf16"] = lambda z: eager_bf16(z, SIGMA)
    for row, floor in (("(d) engine bf16 + compile", "floor bf16 compiled"),
                       ("(e) engine bf16 + compile + CUDA graphs", "floor bf16 compiled + CUDA graphs")):  # fmt: skip
        if row in built:  # the engine's own compiled forward, at the batch size it was compiled for
            floors[floor] = lambda z, e=built[row]: e.forward(z, SIGMA)
    for name, forward in floors.items():
        runs[name] = bare_forwards(forward, shape, samples, batch, device)
    best = dict.fromkeys(runs, float("inf"))
    repeats = 1 if size == "imagenet" else args.repeats
    for _ in range(repeats):  # interleaved: drifting clocks hit every row alike
        for name, fn in runs.items():
            reset_peak(device)
            best[name] = min(best[name], timed(fn, device))
            out["memory_mib"][name] = peak_mib(device)
        if budget.left() < 0:
            break
    out["rows"] = {name: samples / seconds for name, seconds in best.items()}
    if "(b)" in variants:  # fp32 counts: the engine vs the plain loop over the same noise, and batch sizes
        num = min(n, 48 if imagenet else 2 * args.noise_block + 17)
        engine = built["(b) engine fp32"]
        mine = engine.counts(x, indices, num, (ESTIMATION,)).cpu().numpy()
        plain = direct_counts(f, x, indices, num, classes, engine.noise_block)
        other = Engine(f, classes, SIGMA, seed=SEED, batch_size=max(1, batch // 3)).counts(
            x, indices, num, (ESTIMATION,)
        )
        out["fp32_counts_equal_direct_loop"] = bool((mine == plain).all())
        out["fp32_counts_equal_batch_third"] = bool((mine == other.cpu().numpy()).all())
        out["fp32_counts_checked"] = f"{images} images × {num} samples"
        if "(c) engine bf16" in built:
            low = built["(c) engine bf16"].counts(x, indices, num, (ESTIMATION,)).cpu().numpy()
            out["bf16_vs_fp32_count_l1"] = int(np.abs(low - mine).sum())
    return out


def finetune_rows(size, args, device) -> dict:
    """One MSDS fine-tuning step, bf16 autocast, UNet gradient checkpointing off and on."""
    rows = {
        "off": finetune_step_speed(size, args, device, False),
        "on": finetune_step_speed(size, args, device, True),
    }
    return dict(size=size, batch=args.finetune_batch, copies=4, rows=rows)


def finetune_step_speed(size, args, device, checkpointing: bool) -> dict:
    from msds_lightning.modules import DenoiserFinetuneModule

    f, shape, classes = build(size, device)
    module = DenoiserFinetuneModule(f.denoiser, f.classifier, classes, num_noise_samples=4,
                                    gradient_checkpointing=checkpointing).to(device).train()  # fmt: skip
    optimizer = torch.optim.AdamW([q for q in f.denoiser.parameters() if q.requires_grad], lr=1e-5)
    x = torch.rand(args.finetune_batch, *shape, device=device)
    y = torch.randint(0, classes, (args.finetune_batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = module.objective(x, y)["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    reset_peak(device)
    seconds = min(timed(step, device) for _ in range(args.finetune_steps))
    return dict(images_per_s=args.finetune_batch / seconds, peak_mib=peak_mib(device))


def batch_rows(size, args, device) -> dict:
    """The largest batch that fits (bf16 forwards), what ``batch_size: auto`` picks, memory flat in N."""
    f, shape, classes = build(size, device)
    forward = Engine(f, classes, SIGMA, autocast="bf16").forward
    example = torch.rand(1, *shape, device=device)
    reset_peak(device)
    limit = 2**16 if device.type == "cuda" else 64
    largest, speeds = probe_batch_size(lambda z: forward(z, SIGMA), example, start=256 if device.type == "cuda" else 16,
                                       limit=limit, gain=0.0, max_seconds=20.0)  # fmt: skip
    largest = max(speeds)
    probe_peak = peak_mib(device)
    auto = Engine(f, classes, SIGMA, batch_size="auto", autocast="bf16")
    auto.counts(example, [0], 10, (ESTIMATION,))
    memory = {}
    for num in args.memory_n:
        engine = Engine(f, classes, SIGMA, batch_size=args.batch, autocast="bf16")
        reset_peak(device)
        engine.certify(example, [0], 100, num, ALPHA)
        memory[num] = peak_mib(device)
    return dict(size=size, largest=largest, speeds=speeds, probe_peak_mib=probe_peak, hit_limit=largest >= limit,
                auto=auto.batch_size, auto_speeds=auto.probed, memory_by_n=memory)  # fmt: skip


def profile_rows(size, args, device, imagenet=False, top=12) -> dict:
    """Where one bf16 eager forward spends its GPU time: the ops and kernels with the most self time."""
    f, shape, classes = build(size, device)
    batch = args.imagenet_batch if imagenet else args.batch
    forward = Engine(f, classes, SIGMA, autocast="bf16").forward
    x = torch.rand(batch, *shape, device=device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.inference_mode():
        forward(x, SIGMA)
        sync(device)
        with torch.profiler.profile(activities=activities) as profiler:
            forward(x, SIGMA)
            sync(device)

    def self_time(event):  # device time on a GPU, CPU time in a dry run (µs)
        if device.type == "cuda":
            return getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0))
        return event.self_cpu_time_total

    events = [e for e in profiler.key_averages() if self_time(e) > 0]
    if device.type == "cuda":  # the kernels alone: an op's device time is its kernels' time again
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(self_time(e) for e in events) or 1.0
    rows = [(e.key[:90], self_time(e) / 1e3, self_time(e) / total, e.count)
            for e in sorted(events, key=self_time, reverse=True)[:top]]  # fmt: skip
    return dict(size="imagenet" if imagenet else size, batch=batch, total_ms=total / 1e3, rows=rows)


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------


def render(results: dict) -> str:
    env = results["environment"]
    lines = ["# GPU check: certification and fine-tuning throughput", "",
             f"`{results['command']}` on {env['device']} ({env['machine']}), {env['date']}; wall time "
             f"{results.get('elapsed_s', 0):.0f} s of a {results['budget_s']:.0f} s budget. Random weights; "
             f"σ = {SIGMA}, α = {ALPHA}; samples/s = images × (n0 + n) / wall time, best of the repeats.", ""]  # fmt: skip
    lines += [
        f"Host syncs inside the sampling loop (`set_sync_debug_mode('error')`): {results.get('sync', 'not run')}.",
        "",
    ]
    for key, compile_key in (("cifar10", "compile"), ("imagenet", "imagenet_compile")):
        section = results.get(key)
        if not isinstance(section, dict):
            continue
        compiled = results.get(compile_key) if isinstance(results.get(compile_key), dict) else {}
        rows = {**section["rows"], **compiled.get("rows", {})}
        warm = {**section["warmup_s"], **compiled.get("warmup_s", {})}
        mem = {**section["memory_mib"], **compiled.get("memory_mib", {})}
        ref = rows.get("(a) reference loop fp32")
        lines += [f"## {key}: {section['params_m']}M UNet + {section['classifier_m']}M classifier, "
                  f"{section['images']} images × ({section['n0']} + {section['n']}), batch {section['batch']}", "",
                  "| row | samples/s | × (a) | peak GPU MiB | warm-up s |", "|---|---|---|---|---|"]  # fmt: skip
        for name, speed in rows.items():
            ratio = f"{speed / ref:.2f}" if ref else ""
            memory = f"{mem[name]:,.0f}" if mem.get(name) is not None else ""
            lines.append(f"| {name} | {speed:,.0f} | {ratio} | {memory} | {warm.get(name, '')} |")
        lines.append("")
        for engine_row, floor in (("(b) engine fp32", "floor fp32"), ("(c) engine bf16", "floor bf16"),
                                  ("(d) engine bf16 + compile", "floor bf16 compiled"),
                                  ("(e) engine bf16 + compile + CUDA graphs", "floor bf16 compiled + CUDA graphs")):  # fmt: skip
            if engine_row in rows and floor in rows:
                lines.append(f"- {engine_row} / {floor}: {rows[engine_row] / rows[floor]:.3f}")
        if key == "cifar10" and rows:
            best_name = max((r for r in rows if r.startswith("(")), key=rows.get)
            lines.append(f"- best engine row: {best_name}, {rows[best_name]:,.0f} samples/s = "
                         f"{rows[best_name] / CARLINI_A100:.1f}× Carlini et al.'s {CARLINI_A100:.0f} samples/s on one A100")  # fmt: skip
        for check in ("fp32_counts_equal_direct_loop", "fp32_counts_equal_batch_third"):
            if check in section:
                lines.append(
                    f"- {check.replace('_', ' ')} ({section['fp32_counts_checked']}): {section[check]}"
                )
        if "bf16_vs_fp32_count_l1" in section:
            lines.append(f"- bf16 vs fp32 counts, L1 distance over the same draws: {section['bf16_vs_fp32_count_l1']} "
                         "(bf16 certifies the bf16 classifier, a different f)")  # fmt: skip
        lines.append("")
    finetune = results.get("finetune")
    if isinstance(finetune, dict):
        lines += [f"## Fine-tuning: MSDS objective, M = {finetune['copies']}, bf16 autocast, {finetune['batch']} images per step "
                  f"({finetune['size']} sizes)", "", "| UNet gradient checkpointing | images/s | peak GPU MiB |", "|---|---|---|"]  # fmt: skip
        for name, row in finetune["rows"].items():
            peak = f"{row['peak_mib']:,.0f}" if row["peak_mib"] is not None else ""
            lines.append(f"| {name} | {row['images_per_s']:,.1f} | {peak} |")
        lines.append("")
    batch = results.get("batch")
    if isinstance(batch, dict):
        speeds = ", ".join(f"{b}: {v:,.0f}" for b, v in batch["speeds"].items())
        lines += [f"## Batch size ({batch['size']} sizes, bf16 forwards)", "",
                  f"- largest batch that fits: {batch['largest']:,}{' (the probe limit; more may fit)' if batch['hit_limit'] else ''}"
                  f" (peak {batch['probe_peak_mib'] or 0:,.0f} MiB); samples/s by batch: {speeds}",
                  f"- `batch_size: auto` picks {batch['auto']:,} (samples/s by batch: "
                  + ", ".join(f"{b}: {v:,.0f}" for b, v in batch["auto_speeds"].items()) + ")",
                  "- engine peak memory, one image, by N: " + "; ".join(
                      f"N = {n:,}: {m or 0:,.0f} MiB" for n, m in batch["memory_by_n"].items()), ""]  # fmt: skip
    for key in ("profile_imagenet", "profile_cifar10"):
        profile = results.get(key)
        if isinstance(profile, dict):
            lines += [f"## Profile: one bf16 eager forward, {profile['size']} sizes, batch {profile['batch']} "
                      f"({profile['total_ms']:,.0f} ms of self time)", "",
                      "| op or kernel | self ms | share | calls |", "|---|---|---|---|"]  # fmt: skip
            lines += [
                f"| `{name}` | {ms:,.1f} | {share:.1%} | {calls} |"
                for name, ms, share, calls in profile["rows"]
            ]
            lines.append("")
    skipped = {
        k: v
        for k, v in results.items()
        if k in SECTIONS and isinstance(v, str) and v.startswith(("skipped", "FAILED"))
    }
    if skipped:
        lines += ["## Not measured", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    return "\n".join(lines)


SECTIONS = (
    "sync",
    "cifar10",
    "compile",
    "finetune",
    "batch",
    "imagenet",
    "profile_imagenet",
    "profile_cifar10",
    "imagenet_compile",
)
ESTIMATE_S = {
    "sync": 20,
    "cifar10": 90,
    "compile": 150,
    "finetune": 40,
    "batch": 60,
    "imagenet": 90,
    "profile_imagenet": 30,
    "profile_cifar10": 20,
    "imagenet_compile": 240,
}


def environment(device: torch.device) -> dict:
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    name = "CPU (dry run)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        machine += (f", CUDA {torch.version.cuda}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB; "
                    f"PyTorch defaults: TF32 matmuls {torch.backends.cuda.matmul.allow_tf32}, TF32 convolutions "
                    f"{torch.backends.cudnn.allow_tf32}, cuDNN benchmark {torch.backends.cudnn.benchmark}")  # fmt: skip
    return dict(device=name, machine=machine, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny models, small N: the code paths, not the speed"
    )
    p.add_argument(
        "--out", default=None, help="markdown report (default bench/RESULTS_GPU.md; dry run: outputs/bench/)"
    )
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--budget", type=float, default=430.0, help="seconds; later sections are skipped past it")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections not to run")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=2400, help="estimation samples per image (CIFAR-10 sizes)")
    p.add_argument("--batch", type=int, default=1000, help="noisy samples per forward, every row")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--imagenet-n0", type=int, default=32)
    p.add_argument("--imagenet-n", type=int, default=224)
    p.add_argument("--imagenet-batch", type=int, default=64)
    p.add_argument("--finetune-batch", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=3)
    p.add_argument("--noise-block", type=int, default=256)
    p.add_argument(
        "--memory-n", type=int, nargs=2, default=[1000, 16_000], help="N of the memory-flat-in-N check"
    )
    p.add_argument(
        "--compile-on-cpu", action="store_true", help="dry run: also the compile section (minutes)"
    )
    args = p.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        args.images, args.n, args.batch, args.repeats, args.memory_n = 2, 100, 100, 1, [100, 400]
        args.imagenet_n0, args.imagenet_n, args.imagenet_batch, args.finetune_batch, args.finetune_steps = (
            4,
            28,
            16,
            2,
            1,
        )
        out = Path(args.out or ROOT / "outputs" / "bench" / "gpu_check_dryrun.md")
    else:
        if not torch.cuda.is_available():
            print(f"gpu_check: no CUDA GPU is visible to torch {torch.__version__} (CUDA build {torch.version.cuda}); "
                  "run on a GPU machine, or `bench/gpu_check.sh --dry-run` for the CPU code paths", file=sys.stderr)  # fmt: skip
            return 2
        device = torch.device("cuda")
        out = Path(args.out or ROOT / "bench" / "RESULTS_GPU.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    size = "tiny" if args.dry_run else "cifar10"
    budget = Budget(args.budget)
    results: dict = dict(command=" ".join(["bench/gpu_check.sh", *(argv if argv is not None else sys.argv[1:])]),
                         environment=environment(device), budget_s=args.budget)  # fmt: skip

    def save():
        results["elapsed_s"] = budget.elapsed()
        out.write_text(render(results) + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    jobs = {
        "sync": lambda: "; ".join(f"{label}: {sync_check(*build(size, device), args.batch, device, autocast)}"
                                  for label, autocast in (("fp32", None), ("bf16", "bf16"))),
        "cifar10": lambda: certification_rows(size, args, device, budget, ("(a)", "(b)", "(c)", "(c')")),
        "compile": lambda: certification_rows(size, args, device, budget, ("(d)", "(e)") if device.type == "cuda" else ("(d)",)),
        "finetune": lambda: finetune_rows(size, args, device),
        "batch": lambda: batch_rows(size, args, device),
        "imagenet": lambda: certification_rows("tiny" if args.dry_run else "imagenet", args, device, budget, ("(a)", "(b)", "(c)"), imagenet=True),
        "profile_imagenet": lambda: profile_rows("tiny" if args.dry_run else "imagenet", args, device, imagenet=True),
        "profile_cifar10": lambda: profile_rows(size, args, device),
        "imagenet_compile": lambda: certification_rows("tiny" if args.dry_run else "imagenet", args, device, budget,
                                                       ("(d)", "(e)") if device.type == "cuda" else ("(d)",), imagenet=True),
    }  # fmt: skip
    if args.dry_run and not args.compile_on_cpu:
        args.skip += ["compile", "imagenet_compile"]
    failures = 0
    for name, job in jobs.items():
        if name in args.skip:
            results[name] = "skipped (--skip)"
        elif budget.left() < ESTIMATE_S[name] * (0.2 if args.dry_run else 1.0):
            results[name] = (
                f"skipped: {budget.left():.0f} s of the budget left, the section needs about {ESTIMATE_S[name]} s"
            )
        else:
            began = time.perf_counter()
            try:
                results[name] = job()
            except Exception as error:  # one failing section must not cost the others' measurements
                failures += 1
                results[name] = (
                    f"FAILED after {time.perf_counter() - began:.0f} s: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                )
            print(f"gpu_check: {name} done in {time.perf_counter() - began:.0f} s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()
    print(render(results))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
