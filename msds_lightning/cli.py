"""The ``msds`` command.

``msds analyze RESULTS... [--radii R...] [--format markdown|latex|csv] [--output FILE] [--plot PNG]``
    tabulate certified accuracy, ACR and abstention from result TSVs.
``msds compare A.tsv B.tsv [--radii R...] [--resamples 10000] [--seed 0] [--format markdown|latex|csv]``
    paired difference A - B over the same images: exact McNemar test and interval per radius, paired
    bootstrap interval of the ACR.
``msds certify -c CONFIG.yaml [--section.key value ...] [--print_config]``
    certify a data set with a (denoised-)smoothed classifier (LightningCLI: ``trainer``, ``model``,
    ``data`` and ``results`` sections).
``msds finetune | pretrain-denoiser | train-classifier -c CONFIG.yaml [--ckpt_path PATH|last]``
    train (LightningCLI ``fit``: ``trainer``, ``model``, ``data`` sections).
``msds demo [--stages ...|--all] [--quick]``
    the embedded default on scikit-learn digits (the MSDS story; --all: every stage).
``msds convert-openai SRC.pt DST_DIR --kind {improved-cifar10,guided-256}``
    OpenAI diffusion UNet checkpoint -> diffusers folder that ``DiffusionDenoiser.from_pretrained`` loads.
``msds generate --denoiser DIR --num-per-class N --num-classes K --output FILE.npz [--steps 20]
[--filter-classifier-name NAME --filter-checkpoint F --keep-per-class K]``
    sample a class-conditional diffusion UNet (EDM Heun) into generated training data.
``msds adversarial-train -c CONFIG.yaml``
    TRADES / PGD adversarial training on real (+ generated) data (LightningCLI ``fit``).
``msds train-idc -c CONFIG.yaml``
    train an image-to-image diffusion classifier (IDC; LightningCLI ``fit``).
``msds attack (--model-name NAME --checkpoint FILE | --idc DIR) ... --output FILE.tsv``
    empirical robustness: clean, PGD-k, EOT-PGD and AutoAttack accuracy, one row per image.

Each argparse sub-command registers itself in ``COMMANDS`` (name → (help, add_arguments, run)); the
delegated ones in ``DELEGATED_COMMANDS`` (LightningCLI commands, ``demo``) take the rest of the command line as LightningCLI arguments.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(run):
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return register


def _analyze_arguments(p: argparse.ArgumentParser) -> None:
    from .analysis import CIFAR10_RADII, FORMATTERS

    p.add_argument(
        "results", nargs="+", help="result TSV files (columns idx label predict radius correct time ...)"
    )
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii for the table, in [0,1] pixel units (default: %(default)s; ImageNet: 0 0.5 1 1.5 2 2.5 3)")  # fmt: skip
    p.add_argument("--format", choices=sorted(FORMATTERS), default="markdown", help="table format")
    p.add_argument("--output", "-o", help="also write the table to this file")
    p.add_argument("--plot", help="write a certified-accuracy-vs-radius plot (PNG) to this path")


@command("analyze", "tabulate certified accuracy, ACR and abstention from result TSVs", _analyze_arguments)
def _analyze(args: argparse.Namespace) -> int:
    import numpy as np

    from .analysis import FORMATTERS, plot_certified_accuracy, summarize
    from .results import read_results

    if any(r < 0 for r in args.radii):
        raise ValueError(f"--radii must be >= 0, got {args.radii}")
    results = [read_results(p) for p in args.results]
    for path, res in zip(args.results, results):
        if len(res) == 0:
            raise ValueError(f"{path} has no result rows (only a header): nothing to tabulate")
        nan, inf = int(np.isnan(res.radius).sum()), int(np.isinf(res.radius).sum())
        if nan or inf:  # NaN never counts as certified, inf counts at every radius: say so
            print(f"msds analyze: warning: {path} has {nan} NaN and {inf} infinite radius value(s); NaN rows "
                  f"count as not certified, infinite ones as certified at every radius", file=sys.stderr)  # fmt: skip
    table = FORMATTERS[args.format]([summarize(r, args.radii) for r in results])
    sys.stdout.write(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_certified_accuracy(results, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    from .analysis import CIFAR10_RADII
    from .compare import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES, FORMATTERS

    p.add_argument("a", help="result TSV of method A")
    p.add_argument("b", help="result TSV of method B (rows are paired with A's by idx)")
    p.add_argument("--radii", nargs="+", type=float, default=list(CIFAR10_RADII),
                   help="radii for certified accuracy, in [0,1] pixel units (default: %(default)s)")  # fmt: skip
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples for the ACR")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE, help="interval level")
    p.add_argument("--names", nargs=2, metavar=("NAME_A", "NAME_B"), help="labels in the table (default: file names)")
    p.add_argument("--format", choices=sorted(FORMATTERS), default="markdown", help="table format")
    p.add_argument("--output", "-o", help="also write the table to this file")


@command("compare", "paired comparison A - B over the same images: exact McNemar per radius, bootstrap ACR",
         _compare_arguments)  # fmt: skip
def _compare(args: argparse.Namespace) -> int:
    from .compare import FORMATTERS, compare_files

    comparison = compare_files(args.a, args.b, args.radii, args.resamples, args.seed, args.confidence, args.names)
    table = FORMATTERS[args.format](comparison)
    sys.stdout.write(table)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(table)
    return 0


def _lightning_cli(model_class, argv: Sequence[str], prog: str, add_arguments=None, **kwargs):
    """A LightningCLI over ``model_class`` and any data module (``data: class_path: ...``), not run."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    class CLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            if "num_classes" in inspect.signature(model_class).parameters:
                parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            if add_arguments:
                add_arguments(parser)

    # LightningCLI reads sys.argv; give it ours for parsing, then restore the real one, which DDP's
    # launcher re-executes to start the other ranks.
    real_argv, sys.argv = sys.argv, [prog, *argv]
    try:
        return CLI(model_class, LightningDataModule, subclass_mode_data=True, run=False, **kwargs)
    finally:
        sys.argv = real_argv


def _certify_arguments(parser) -> None:
    from .callbacks import CertificationWriter

    parser.add_lightning_class_args(CertificationWriter, "results")
    # adaptive sampling stops once more samples cannot certify an image at a further radius of the table
    parser.link_arguments("results.radii", "model.radii")


def run_certify(argv: Sequence[str]) -> int:
    """``msds certify``: :class:`CertifyModule`, any data module, and the result writer (``results``).

    Resuming is the writer's job (finished indices are skipped), so under SLURM Lightning's own
    auto-requeue (which saves and reloads ``hpc_ckpt_*.ckpt``) is turned off, and a run refuses to start
    where Lightning would silently load such a training checkpoint into the certification model.
    """
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from .modules import CertifyModule

    defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    on_slurm = SLURMEnvironment.detect()
    if on_slurm:
        defaults["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    cli = _lightning_cli(
        CertifyModule,
        argv,
        "msds certify",
        add_arguments=_certify_arguments,
        save_config_callback=None,
        trainer_defaults=defaults,
    )
    hpc = sorted(Path(cli.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
    if on_slurm and hpc:
        raise ValueError(
            f"{hpc[-1]} is a training checkpoint that Lightning would load into the certification model under "
            f"SLURM; give certification its own --trainer.default_root_dir"
        )
    from .callbacks import CertificationWriter
    from .callbacks.writer import CertificationStopped
    from .runs import check_output_path

    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CertificationWriter))
    config = cli.config.as_dict()
    output = Path(config["results"]["output"])
    try:
        if cli.trainer.is_global_zero:  # every check before anything is written
            check_output_path(output, "--results.output")
            check_classifier_input(cli.model, cli.datamodule)
            writer.fingerprint = certify_fingerprint(config)
            writer.prepare()  # lock, then the fingerprint: refuses to mix rows of other settings
            # the resolved config beside the results: a run can be repeated exactly
            cli.parser.save(cli.config, output.with_suffix(".config.yaml"), overwrite=True, skip_validation=True)
        cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=False)
    except CertificationStopped as stop:
        print(f"msds certify: {stop} after writing the finished rows to {writer.shard_dir}; rerun the same "
              f"command to resume", file=sys.stderr)  # fmt: skip
        return 128 + stop.signum
    finally:
        writer.close()
    return 0


# Settings that do not change a certification row (rows are keyed by dataset index and noise seed, and
# are the same for any batch size, device count or data location) or are checked per row (skip/max).
_UNFINGERPRINTED = {
    "model": {"batch_size"},
    "data": {"root", "download", "verify_checksums", "batch_size", "num_workers", "pin_memory", "skip",
             "max", "augment"},  # fmt: skip
}


def certify_fingerprint(config: dict) -> dict[str, object]:
    """The run fingerprint of a resolved ``msds certify`` config (see :mod:`msds_lightning.runs`): the model
    section (σ, n0, n, α, seed, noise block, sampling, the classifier and denoiser with their arguments)
    with local checkpoint paths replaced by content hashes, the trainer's precision, the data module's
    class and split, and for adaptive sampling the radius grid it stops on."""
    from .runs import fingerprint, flatten

    model = {k: v for k, v in config["model"].items() if k not in _UNFINGERPRINTED["model"]}
    data = config["data"]
    if isinstance(data, dict) and "init_args" in data:
        args = {k: v for k, v in (data.get("init_args") or {}).items() if k not in _UNFINGERPRINTED["data"]}
        data = {"class_path": data.get("class_path"), "init_args": args}
    settings = {"model": model, "data": data, "trainer": {"precision": config["trainer"].get("precision")}}
    if model.get("sampling") == "adaptive":  # the stopping grid changes the rows; otherwise only the table
        model["radii"] = config["results"]["radii"]
    else:
        model.pop("radii", None)
    checkpoints = {
        f"model.{name}": value
        for name, value in flatten(model).items()
        if isinstance(value, str) and ("/" in value or "." in value) and Path(value).expanduser().exists()
    }
    return fingerprint(settings, {k: Path(v).expanduser() for k, v in checkpoints.items()})


def check_classifier_input(model, datamodule) -> None:
    """A dry forward of the classifier on the first image to certify, so that an image size the model does
    not take (a fixed-size ViT fed 32 px CIFAR images) or a wrong class count fails now, in one line."""
    import torch

    predict_dataset = getattr(datamodule, "predict_dataset", None)
    classifier = getattr(model, "classifier", None)
    if predict_dataset is None or classifier is None:
        return
    dataset = predict_dataset()
    if len(dataset) == 0:
        raise ValueError("no image to certify: the data selection (--data.init_args.skip/max) is empty")
    image = dataset[0][0][None]
    name = getattr(classifier, "model_name", type(classifier).__name__)
    try:
        with torch.no_grad():
            logits = classifier.eval()(image)
    except (AssertionError, RuntimeError, ValueError, TypeError) as err:
        raise ValueError(
            f"the classifier {name} cannot take the data's {'x'.join(map(str, image.shape[1:]))} images "
            f"({type(err).__name__}: {err}); a fixed-size model needs --model.classifier.init_args.input_size "
            f"(e.g. 224 for *_224 models)"
        ) from None
    if tuple(logits.shape) != (1, model.num_classes):
        raise ValueError(
            f"the classifier {name} returns logits of shape {tuple(logits.shape[1:])} per image, expected "
            f"({model.num_classes},) (model.num_classes)"
        )


def _run_demo(argv: Sequence[str]) -> int:
    from .demo import main as demo_main

    return demo_main(argv)


def _run_convert(argv: Sequence[str]) -> int:
    from .convert import main as convert_main

    return convert_main(argv)


def _run_generate(argv: Sequence[str]) -> int:
    from .generate import main as generate_main

    return generate_main(argv)


def _run_attack(argv: Sequence[str]) -> int:
    from .attack_cli import main as attack_main

    return attack_main(argv)


def _fit_command(module_path: str, prog: str) -> Callable[[Sequence[str]], int]:
    """A training command: ``fit`` of the module at ``module_path``; ``--ckpt_path`` resumes
    (a path, or ``last`` for the newest checkpoint of the run's ModelCheckpoint)."""

    def run(argv: Sequence[str]) -> int:
        import importlib

        module_name, _, class_name = module_path.rpartition(".")
        model_class = getattr(importlib.import_module(module_name), class_name)
        cli = _lightning_cli(
            model_class,
            argv,
            prog,
            add_arguments=lambda parser: parser.add_argument(
                "--ckpt_path", type=str | None, default=None, help="checkpoint to resume from, or 'last'"
            ),
            save_config_kwargs={"overwrite": True},  # a resumed or requeued run rewrites the same config
        )
        ckpt_path = cli.config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc", "registry"):
            from .runs import check_training_checkpoint

            check_training_checkpoint(ckpt_path)  # one clear line now, not an unpickling traceback later
        # weights_only: a checkpoint file never runs code when it is loaded
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
        return 0

    return run


DELEGATED_COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "certify": (
        "certify a data set with a (denoised-)smoothed classifier (LightningCLI config)",
        run_certify,
    ),
    "finetune": (
        "MSDS fine-tuning of a diffusion denoiser with the classifier frozen",
        _fit_command("msds_lightning.modules.DenoiserFinetuneModule", "msds finetune"),
    ),
    "pretrain-denoiser": (
        "DDPM pre-training of a diffusion denoiser (diffusers UNet2DModel)",
        _fit_command("msds_lightning.modules.DenoiserPretrainModule", "msds pretrain-denoiser"),
    ),
    "train-classifier": (
        "train a timm classifier (optionally with Gaussian noise augmentation)",
        _fit_command("msds_lightning.modules.ClassifierModule", "msds train-classifier"),
    ),
    "adversarial-train": (
        "TRADES / PGD adversarial training on real and diffusion-generated data",
        _fit_command("msds_lightning.modules.AdversarialTrainingModule", "msds adversarial-train"),
    ),
    "train-idc": (
        "train an image-to-image diffusion classifier (IDC: Brownian bridge to label images)",
        _fit_command("msds_lightning.modules.IDCModule", "msds train-idc"),
    ),
    "generate": (
        "sample a class-conditional diffusion UNet (EDM Heun) into an .npz of generated training data",
        _run_generate,
    ),
    "attack": ("empirical robustness: clean, PGD-k, EOT-PGD and AutoAttack (torchattacks) accuracy", _run_attack),
    "demo": ("the embedded default: the MSDS story on scikit-learn digits in minutes on a CPU", _run_demo),
    "convert-openai": (
        "convert an OpenAI improved-/guided-diffusion UNet checkpoint to a diffusers denoiser folder",
        _run_convert,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msds", description="Certified robustness with diffusion denoisers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    for name, (help_text, _) in DELEGATED_COMMANDS.items():
        sub.add_parser(name, help=f"{help_text}; `msds {name} --help` for its options", add_help=False)
    return parser


def _message(err: BaseException) -> str:
    """The error's text, with our own message first where jsonargparse wraps it in a Union dump
    ("Does not validate against any of the Union subtypes ... Errors: - <ours> - Expected a NoneType")."""
    text = str(err)
    if "Errors:" in text and "Union subtypes" in text:
        bullets = [line.strip()[2:] for line in text.split("Errors:", 1)[1].splitlines() if line.strip().startswith("- ")]
        ours = [b for b in bullets if not b.startswith(("Expected a ", "Not a valid subclass", "Problem with given class_path"))]
        if ours:
            return ours[0]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED_COMMANDS:
        try:
            return DELEGATED_COMMANDS[argv[0]][1](argv[1:])
        except (ValueError, OSError) as err:  # bad config values or files: say which, no traceback
            print(f"msds {argv[0]}: error: {_message(err)}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except (ValueError, OSError) as err:  # bad input: a clear message, no traceback
        print(f"msds {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
