"""``msds certify -c CONFIG.yaml [--section.key value ...] [--print_config]``: certify a data set with a
(denoised-)smoothed classifier — :class:`~msds_lightning.modules.CertifyModule`, any data module and the
result writer (``results`` section: :class:`~msds_lightning.callbacks.CertificationWriter`).

``msds predict -c CONFIG.yaml ...``: the same for PREDICT (:class:`~msds_lightning.modules.PredictModule`,
:class:`~msds_lightning.callbacks.PredictionWriter`): g(x) or abstain per image, no radius."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .lightning import lightning_cli


def certify_arguments(parser) -> None:
    from ..callbacks import CertificationWriter

    parser.add_lightning_class_args(CertificationWriter, "results")
    # adaptive sampling stops once more samples cannot certify an image at a further radius of the table
    parser.link_arguments("results.radii", "model.radii")


def predict_arguments(parser) -> None:
    from ..callbacks import PredictionWriter

    parser.add_lightning_class_args(PredictionWriter, "results")


def main(argv: Sequence[str]) -> int:
    """``msds certify``: :class:`CertifyModule`, any data module, and the result writer (``results``)."""
    from ..modules import CertifyModule

    return run(CertifyModule, argv, "msds certify", certify_arguments)


def predict(argv: Sequence[str]) -> int:
    """``msds predict``: :class:`PredictModule`, any data module, and the prediction writer (``results``)."""
    from ..modules import PredictModule

    return run(PredictModule, argv, "msds predict", predict_arguments)


def run(module_class, argv: Sequence[str], prog: str, add_arguments) -> int:
    """One ``trainer.predict`` pass of ``module_class`` with its row writer.

    Resuming is the writer's job (finished indices are skipped), so under SLURM Lightning's own
    auto-requeue (which saves and reloads ``hpc_ckpt_*.ckpt``) is turned off, and a run refuses to start
    where Lightning would silently load such a training checkpoint into the model.
    """
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    defaults = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    on_slurm = SLURMEnvironment.detect()
    if on_slurm:
        defaults["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    cli = lightning_cli(
        module_class, argv, prog, add_arguments=add_arguments, save_config_callback=None, trainer_defaults=defaults
    )
    hpc = sorted(Path(cli.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
    if on_slurm and hpc:
        raise ValueError(
            f"{hpc[-1]} is a training checkpoint that Lightning would load into the certification model under "
            f"SLURM; give certification its own --trainer.default_root_dir"
        )
    from ..callbacks import CertificationWriter
    from ..callbacks.writer import CertificationStopped
    from ..runs import check_output_path

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
        print(f"{prog}: {stop} after writing the finished rows to {writer.shard_dir}; rerun the same "
              f"command to resume", file=sys.stderr)  # fmt: skip
        return 128 + stop.signum
    finally:
        writer.close()
    return 0


# Settings that do not change a certification row (rows are keyed by dataset index and noise seed, and
# are the same for any batch size, device count or data location) or are checked per row (skip/max; the
# shift data sets' corruptions/severities: the index encodes both, so a run can add corruptions later).
_UNFINGERPRINTED = {
    "model": {"batch_size"},
    "data": {"root", "download", "verify_checksums", "batch_size", "num_workers", "pin_memory", "skip",
             "max", "augment", "corruptions", "severities"},  # fmt: skip
}


# Model options added after outputs were written, at the value that writes rows as before: left out of the
# fingerprint at that value, so those outputs still resume (at any other value they are in it)
_NEUTRAL_DEFAULTS = {"official_columns": False, "mode": "predict"}


def certify_fingerprint(config: dict) -> dict[str, object]:
    """The run fingerprint of a resolved ``msds certify`` (or ``msds predict``) config (see :mod:`msds_lightning.runs`): the model
    section (σ, n0, n, α, seed, noise block, sampling, the classifier and denoiser with their arguments)
    with local checkpoint paths replaced by content hashes, the trainer's precision, the data module's
    class and split, and for adaptive sampling the radius grid it stops on."""
    from ..runs import fingerprint, flatten

    model = {k: v for k, v in config["model"].items() if k not in _UNFINGERPRINTED["model"]}
    data = config["data"]
    if isinstance(data, dict) and "init_args" in data:
        args = {k: v for k, v in (data.get("init_args") or {}).items() if k not in _UNFINGERPRINTED["data"]}
        data = {"class_path": data.get("class_path"), "init_args": args}
    for key, neutral in _NEUTRAL_DEFAULTS.items():
        if key in model and model[key] == neutral:
            del model[key]
    if "mode" not in model:  # the uniform prior's weight only matters to the official empirical mode
        model.pop("unif_w", None)
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
