"""``msds plan -c CERTIFY_CONFIG.yaml [--section.key value ...] [--budget 24h] [--warmup-images 2]``: before a
certification run, what it can certify at all and how long it will take.

1. For each σ of the config, the largest radius its N can certify: every one of the N estimation samples
   on the selected class gives the Clopper–Pearson lower bound ``α_s^{1/N}`` (α_s = α for Cohen's rule,
   α/(s+1) at cascade stage s, times the last checkpoint's share with adaptive sampling), so the radius
   is at most ``σ·(Φ⁻¹(α_s^{1/N}) − Φ⁻¹(p0))`` (p0 = 1/2 for Cohen's rule). Radii of ``results.radii`` above
   the largest are flagged, with the N that would reach them.
2. A short warm-up on the configured models and device (``--warmup-images`` images of the data set,
   n0 + a few batches of estimation samples each) measures samples/s, then the wall time of the whole
   run: images (after skip/max) × samples per image / (samples/s × devices). Samples per image: n0 + N per
   visited level; a cascade visits between one and all levels, so its estimate is a range; adaptive
   sampling stops early, so its estimate is an upper bound.
3. With ``--replay RUN.tsv [RUN.tsv ...]`` (earlier single-σ results, ours or Cohen et al.'s, one file per σ
   of the config in the table's order, highest σ first, on the same images), the count-level replay
   (:mod:`msds_lightning.results.replay`) runs this config's plan (n0, N, α, p0, sampling with its
   checkpoints and radius grid, the cascade's fall-through) on those images' probabilities: the expected
   samples per image, hence the expected wall time in place of a bound or a range.
4. With ``--budget`` (e.g. ``24h``, ``90m``, ``3600s``), whether the run fits, else the largest N and the
   smallest skip that would (by the replayed estimate when there is one, else by the upper bound).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .certify import certify_arguments
from .lightning import lightning_cli

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"24h"``, ``"90m"``, ``"3600s"``, ``"1.5d"`` or a bare number of seconds (> 0)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--budget: expected a positive duration such as 24h, 90m or 3600s, got {text!r}")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def level_alphas(
    alpha: float, levels: int, cascade: bool, sampling=None, n: int | None = None
) -> list[float]:
    """The α each level's final bound is taken at: α (Cohen's rule) or α/(s+1) (cascade stage s), times the
    share of the last checkpoint with adaptive sampling."""
    alphas = [alpha / (s + 1) if cascade else alpha for s in range(levels)]
    if sampling is not None:
        alphas = [sampling.plan(n, a).alphas[-1] for a in alphas]
    return alphas


def max_radius(sigma: float, n: int, alpha: float, p0: float = 0.5) -> float:
    """The largest radius N = ``n`` samples can certify at σ: all n on the class, lower bound ``alpha^{1/n}``."""
    from scipy.stats import norm

    return sigma * (float(norm.ppf(alpha ** (1.0 / n))) - float(norm.ppf(p0)))


def samples_needed(radius: float, sigma: float, alpha: float, p0: float = 0.5) -> int | None:
    """The smallest N whose :func:`max_radius` reaches ``radius`` at σ (None if no N can: Φ(r/σ + Φ⁻¹(p0)) = 1)."""
    from scipy.stats import norm

    target = float(norm.cdf(radius / sigma + norm.ppf(p0)))
    if target >= 1.0:
        return None
    return math.ceil(math.log(alpha) / math.log(target))


def main(argv: Sequence[str]) -> int:
    import argparse

    from ..modules import CertifyModule

    # our own flags; everything else is the certify config and its overrides (no abbreviations: those
    # would swallow LightningCLI options)
    own = argparse.ArgumentParser(prog="msds plan", add_help=False, allow_abbrev=False)
    own.add_argument("--budget")
    own.add_argument("--warmup-images", type=int, default=2)
    own.add_argument("--replay", nargs="+", default=None)
    args, argv = own.parse_known_args(list(argv))
    budget = None if args.budget is None else parse_duration(args.budget)
    warmup_images = args.warmup_images
    if warmup_images < 1:
        raise ValueError(f"--warmup-images must be >= 1, got {warmup_images}")
    for path in args.replay or ():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--replay: result file not found: {path}")
    defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    argv = [*argv, "--trainer.logger=false"]  # a plan logs no run, whatever loggers the config names
    cli = lightning_cli(CertifyModule, argv, "msds plan", add_arguments=certify_arguments,
                        save_config_callback=None, trainer_defaults=defaults)  # fmt: skip
    model, config = cli.model, cli.config.as_dict()
    engine, sigmas = model.engine, model.sigmas
    radii = [float(r) for r in config["results"]["radii"]]
    p0 = engine.p0 if engine.cascade else 0.5
    alphas = level_alphas(model.alpha, len(sigmas), engine.cascade, engine.sampling, model.n)

    rule = f"cascade (p0 = {p0:g})" if engine.cascade else "Cohen's rule"
    lines = [f"msds plan: {len(sigmas)} level(s), n0 = {model.n0}, N = {model.n:,}, alpha = {model.alpha:g}, {rule}, "
             f"{'adaptive' if engine.sampling else 'fixed'} sampling", "",
             "| σ | α of its bound | largest radius N can certify |", "|---|---|---|"]  # fmt: skip
    limits = []
    for sigma, a in zip(sigmas, alphas):
        limits.append(max_radius(sigma, model.n, a, p0))
        lines.append(f"| {sigma:g} | {a:.3g} | {limits[-1]:.4f} |")
    reach = max(limits)
    for r in (r for r in radii if r > reach):
        needs = [samples_needed(r, s, a, p0) for s, a in zip(sigmas, alphas)]
        best = min((n for n in needs if n is not None), default=None)
        advice = f"N >= {best:,} at the best level" if best else "no N can (σ too small)"
        lines.append(f"warning: radius {r:g} of results.radii exceeds what N = {model.n:,} can certify at any "
                     f"level ({reach:.4f}): {advice}")  # fmt: skip

    if args.replay:  # checked before the warm-up
        from ..results.replay import load_levels, mean_samples

        levels = load_levels(args.replay, sigmas)
    dataset = cli.datamodule.predict_dataset()
    count = len(dataset)
    if count == 0:
        raise ValueError("no image to certify: the data selection (--data.init_args.skip/max) is empty")
    import torch

    from ..smoothing import ESTIMATION

    device = cli.trainer.strategy.root_device
    model.to(device).eval()
    take = min(warmup_images, count)
    images = torch.stack([dataset[k][0] for k in range(take)]).to(device)
    indices = list(range(take))
    warm_n = min(model.n, 2 * (engine.batch_size or 1000))
    engine.certify(images[:1], [0], model.n0, min(warm_n, 100), model.alpha)  # kernels, allocator, compile
    began = time.perf_counter()
    engine.counts(images, indices, warm_n, (ESTIMATION,), sigma=sigmas[0])
    rate = take * warm_n / (time.perf_counter() - began)
    devices = max(1, int(cli.trainer.num_devices) * int(cli.trainer.num_nodes))
    per_image = (
        model.n0 + model.n,
        len(sigmas) * (model.n0 + model.n) if engine.cascade else model.n0 + model.n,
    )
    seconds = [count * s / (rate * devices) for s in per_image]
    lines += ["", f"warm-up: {rate:,.0f} samples/s on {device} ({take} image(s) × {warm_n:,} samples); "
              f"{devices} device(s), {count:,} image(s) to certify"]  # fmt: skip
    span = (
        _duration(seconds[0])
        if seconds[0] == seconds[1]
        else f"{_duration(seconds[0])} to {_duration(seconds[1])}"
    )
    kind = "at most " if engine.sampling else ""
    lines.append(
        f"estimated wall time: {kind}{span} ({per_image[0]:,}"
        + (f" to {per_image[1]:,}" if per_image[1] != per_image[0] else "")
        + " samples per image)"
    )
    expected = None  # samples per image, replayed
    if args.replay:
        expected = mean_samples(levels, sigmas, n0=model.n0, n=model.n, alpha=model.alpha,
                                sampling=engine.sampling, cascade=engine.cascade, p0=p0)  # fmt: skip
        lines.append(f"{'adaptive' if engine.sampling else 'fixed'} sampling, replayed on {len(levels[0].p):,} "
                     f"image(s) ({', '.join(f'σ = {s:g}: {f}' for s, f in zip(sigmas, args.replay))}): "
                     f"{expected:,.0f} samples per image ({expected / per_image[1]:.3f} of the bound), expected "
                     f"wall time {_duration(count * expected / (rate * devices))}")  # fmt: skip
    elif engine.sampling is not None:
        lines.append("adaptive sampling stops early: on Cohen et al.'s CIFAR-10 results its count-level replay "
                     "spent 0.13-0.16 of a fixed run at N = 100,000 (bench/RESULTS.md); --replay RUN.tsv "
                     "estimates it for your models")  # fmt: skip
    if budget is not None:
        per = expected if expected is not None else per_image[1]
        needed = count * per / (rate * devices)
        skip = int(config["data"]["init_args"].get("skip", 1) or 1)
        how = "expected (replay)" if expected is not None else "as configured"
        if needed <= budget:
            lines.append(f"budget {_duration(budget)}: fits {how}")
        else:
            # samples per image scale with N (the replay's share of the bound held fixed)
            share = per / per_image[1]
            fits_n = (
                int(budget * rate * devices / count / share / (per_image[1] / (model.n0 + model.n)))
                - model.n0
            )
            factor = math.ceil(needed / budget)
            took = f"expected {_duration(needed)}" if expected is not None else f"up to {_duration(needed)}"
            lines.append(f"budget {_duration(budget)}: does not fit ({took}); N <= "
                         f"{max(fits_n, 0):,} would, or --data.init_args.skip={skip * factor} "
                         f"(every {skip * factor}th image)")  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
