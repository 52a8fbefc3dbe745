"""``msds attack-smoothed -c CERTIFY_CONFIG.yaml [--section.key value ...] --output FILE.tsv [--radii R ...]
[--certified RESULTS.tsv] [--steps 20] [--samples 16] ...``: attack the smoothed classifier g of a
certification config and put its empirical robust accuracy next to the certified one.

The certify config's ``model`` and ``data`` sections define g (base classifier, σ or the cascade's σ, p0,
noise seed) and the images, exactly as ``msds certify`` builds them; ``model.n``/``model.alpha``/``model.n0``
are the defaults of the evaluating PREDICT. For every image that g predicts correctly when clean, and every
radius ε, :func:`~msds_lightning.robustness.smoothed.smoothed_pgd` (SmoothAdv's ℓ2 PGD with ``--samples``
Monte-Carlo draws per step) looks for an adversarial image, which the engine's PREDICT then evaluates. One
row per image goes to ``--output`` (resumable, fingerprinted and locked like ``msds attack``); the table of
certified vs empirical accuracy per radius, with the gap, is printed and written beside it (``.md`` and
``.csv``). ``--certified`` (default: the config's ``results.output``) is the certification of the same images.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .attack import parse_eps
from .certify import certify_arguments, certify_fingerprint
from .lightning import lightning_cli

# model settings that define g (the rest, e.g. n, alpha, sampling, only change how it is certified)
_NOT_G = {"n0", "n", "alpha", "seed", "batch_size", "compile", "sampling", "radii", "tolerance", "first_checkpoint",
          "checkpoint_ratio", "final_share", "official_columns", "noise_block", "mode", "unif_w"}  # fmt: skip


def build_parser():
    import argparse

    # our own flags; everything else is the certify config and its overrides (no abbreviations: those would
    # swallow LightningCLI options)
    p = argparse.ArgumentParser(
        prog="msds attack-smoothed -c CERTIFY_CONFIG.yaml [--section.key value ...]", add_help=False,
        allow_abbrev=False, description="Attack the smoothed classifier g of a certify config (SmoothAdv l2 PGD) "
        "and put its empirical robust accuracy next to the certified one. Its own flags:",
    )  # fmt: skip
    p.add_argument("--output", help="per-image result TSV (required); the gap table goes to .md and .csv")
    p.add_argument("--radii", nargs="+", type=parse_eps, default=None,
                   help="ℓ2 radii ε to attack ([0,1] pixel units; default: the config's results.radii)")  # fmt: skip
    p.add_argument("--certified", default=None,
                   help="certification TSV of the same images (default: the config's results.output)")  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="PGD steps per radius")
    p.add_argument("--step-size", type=parse_eps, default=None, help="ℓ2 step (default 2·ε/steps)")
    p.add_argument(
        "--samples", type=int, default=16, help="m: noise draws per image and step (gradient estimate)"
    )
    p.add_argument("--attack-seed", type=int, default=0, help="seed of the attack's noise (its own stream)")
    p.add_argument("--cascade-target", choices=("sum", "deciding"), default="sum",
                   help="cascade: the loss sums all levels' soft classifiers, or only the level that decided "
                   "for the clean image")  # fmt: skip
    p.add_argument("--predict-n", type=int, default=None, help="PREDICT's draws (default: model.n)")
    p.add_argument("--predict-alpha", type=float, default=None, help="PREDICT's α (default: model.alpha)")
    p.add_argument(
        "--predict-n0", type=int, default=None, help="cascade PREDICT's selection draws (default: model.n0)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming")
    return p


def g_settings(fingerprint: dict) -> dict:
    """The part of a certify fingerprint that defines g: the model section without how it is certified,
    and the data (class and split)."""
    return {k: v for k, v in fingerprint.items()
            if not (k.startswith("model.") and k.split(".")[1] in _NOT_G) and not k.startswith("trainer.")}  # fmt: skip


def check_same_g(certified: Path, fingerprint: dict) -> None:
    """Refuse a certification TSV whose stored fingerprint names another g (base classifier, checkpoints by
    content, σ, p0, data) than the config; say so, but go on, when it has none (e.g. Cohen et al.'s files)."""
    import json

    from ..runs import differences, fingerprint_path

    stored_at = fingerprint_path(certified)
    if not stored_at.is_file():
        print(f"[attack-smoothed] {certified} has no run fingerprint ({stored_at}); cannot check that it "
              f"certified the same smoothed classifier", file=sys.stderr)  # fmt: skip
        return
    try:
        stored = json.loads(stored_at.read_text())["settings"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{stored_at} is not a run fingerprint ({err})") from None
    changed = differences(g_settings(stored), g_settings(fingerprint))
    if changed:
        raise ValueError(f"{certified} certified another smoothed classifier than the config defines; "
                         f"differences (certified -> config): " + "; ".join(changed))  # fmt: skip


def main(argv: Sequence[str]) -> int:
    """``msds attack-smoothed ...``: see the module docstring."""
    from torch.utils.data import DataLoader, Subset

    from ..modules import CertifyModule
    from ..results import read_results
    from ..robustness.evaluation import AttackTable
    from ..robustness.smoothed import (
        SmoothedAttackSettings,
        attack_smoothed,
        columns,
        format_gap_csv,
        format_gap_markdown,
        gap_table,
    )
    from ..smoothing.checks import check_alpha, check_count

    parser = build_parser()
    if "-h" in argv or "--help" in argv:  # our flags, then LightningCLI's (the certify config's sections)
        sys.stdout.write(parser.format_help() + "\n")
    args, argv = parser.parse_known_args(list(argv))
    if args.output is None and "-h" not in argv and "--help" not in argv:
        raise ValueError("--output FILE.tsv is required (the per-image rows; the table goes beside it)")
    for flag in ("steps", "samples", "predict_n", "predict_n0"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.attack_seed < 0:
        raise ValueError(f"--attack-seed must be >= 0, got {args.attack_seed}")
    defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    cli = lightning_cli(CertifyModule, argv, "msds attack-smoothed", add_arguments=certify_arguments,
                        save_config_callback=None, trainer_defaults=defaults)  # fmt: skip
    model, config = cli.model, cli.config.as_dict()
    if str(config["trainer"].get("precision")) not in ("None", "32", "32-true"):
        raise ValueError(f"--trainer.precision={config['trainer']['precision']}: the attack and its PREDICT run g in "
                         f"fp32; certify and attack with precision 32 to compare the same g")  # fmt: skip
    radii = [float(r) for r in (args.radii if args.radii is not None else config["results"]["radii"])]
    if not radii or len(set(radii)) != len(radii) or min(radii) < 0:
        raise ValueError(f"--radii: give distinct radii >= 0 ([0,1] pixel units), got {radii}")
    certified_path = Path(args.certified or config["results"]["output"]).expanduser()
    if not certified_path.is_file():
        raise FileNotFoundError(f"certification of the same images not found: {certified_path}; run msds certify "
                                f"with this config first, or give --certified RESULTS.tsv")  # fmt: skip
    settings = SmoothedAttackSettings(
        radii=tuple(radii),
        predict_n=check_count(args.predict_n or model.n, "--predict-n"),
        predict_alpha=check_alpha(model.alpha if args.predict_alpha is None else args.predict_alpha),
        predict_n0=check_count(args.predict_n0 or model.n0, "--predict-n0"),
        steps=args.steps, step_size=args.step_size, samples=args.samples, seed=args.attack_seed,
        cascade_target=args.cascade_target,
    )  # fmt: skip
    from ..runs import fingerprint

    certify_print = certify_fingerprint(config)
    check_same_g(certified_path, certify_print)
    certified = read_results(certified_path)
    run_print = {**g_settings(certify_print), "model.seed": config["model"]["seed"],
                 "model.noise_block": config["model"]["noise_block"],
                 **fingerprint({"attack": {k: getattr(settings, k) for k in SmoothedAttackSettings.__dataclass_fields__}})}  # fmt: skip

    dataset = cli.datamodule.predict_dataset()
    if len(dataset) == 0:
        raise ValueError("no image to attack: the data selection (--data.init_args.skip/max) is empty")
    device = cli.trainer.strategy.root_device
    model.to(device).eval()
    output = Path(args.output)
    size = len(getattr(dataset, "dataset", dataset))
    writer = AttackTable(output, columns(radii), dict(sorted(run_print.items())), args.overwrite, size=size)
    todo = [k for k, index in enumerate(dataset.indices) if index not in writer.done]
    if len(todo) < len(dataset):
        print(f"[attack-smoothed] resuming {output}: {len(dataset) - len(todo)} of {len(dataset)} images done",
              file=sys.stderr)  # fmt: skip
    loader = DataLoader(Subset(dataset, todo), batch_size=int(getattr(cli.datamodule, "batch_size", 8) or 8),
                        shuffle=False, num_workers=0)  # fmt: skip
    started, seen = time.time(), 0
    try:
        for x, y, idx in loader:
            rows = attack_smoothed(model.engine, x.to(device), y.to(device), idx.tolist(), settings)
            writer.write(rows)
            seen += len(x)
            print(
                f"[attack-smoothed] {seen}/{len(todo)} images, {time.time() - started:.0f} s", file=sys.stderr
            )
        writer.compact()
        selected = set(dataset.indices)
        rows = [row for row in writer.rows() if row["idx"] in selected]
    finally:
        writer.close()
    table = gap_table(rows, certified, radii)
    rule = (
        f"cascade {list(model.sigmas)} (p0 = {model.p0:g})"
        if model.engine.cascade
        else f"σ = {model.sigmas[0]:g}"
    )
    step = "2·ε/steps" if settings.step_size is None else f"{settings.step_size:g}"
    title = (f"Smoothed classifier ({rule}): certified ({certified_path.name}) vs empirical robust accuracy under "
             f"SmoothAdv ℓ2 PGD on g ({settings.steps} steps of {step}, m = {settings.samples} noise draws per "
             f"step{', loss summed over levels' if model.engine.cascade and settings.cascade_target == 'sum' else ''}"
             f"{', loss of the deciding level' if model.engine.cascade and settings.cascade_target == 'deciding' else ''}"
             f"), evaluated by PREDICT (n = {settings.predict_n:,}, α = {settings.predict_alpha:g}); "
             f"{len(rows)} images")  # fmt: skip
    text = format_gap_markdown(table, title)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".csv").write_text(format_gap_csv(table))
    sys.stdout.write(text)
    return 0
