"""The training commands (LightningCLI ``fit`` of one Lightning module each, ``trainer``/``model``/``data``
sections): ``msds finetune | pretrain-denoiser | train-classifier | adversarial-train | train-idc -c CONFIG``.
``--ckpt_path`` resumes (a path, or ``last`` for the newest checkpoint of the run's ModelCheckpoint)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .lightning import lightning_cli


def fit_command(module_path: str, prog: str) -> Callable[[Sequence[str]], int]:
    """A training command: ``fit`` of the module at ``module_path``; ``--ckpt_path`` resumes
    (a path, or ``last`` for the newest checkpoint of the run's ModelCheckpoint)."""

    def run(argv: Sequence[str]) -> int:
        import importlib

        module_name, _, class_name = module_path.rpartition(".")
        model_class = getattr(importlib.import_module(module_name), class_name)
        cli = lightning_cli(
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
            from ..runs import check_training_checkpoint

            check_training_checkpoint(ckpt_path)  # one clear line now, not an unpickling traceback later
        # weights_only: a checkpoint file never runs code when it is loaded
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, weights_only=True)
        return 0

    return run


finetune = fit_command("msds_lightning.modules.DenoiserFinetuneModule", "msds finetune")
pretrain_denoiser = fit_command("msds_lightning.modules.DenoiserPretrainModule", "msds pretrain-denoiser")
train_classifier = fit_command("msds_lightning.modules.ClassifierModule", "msds train-classifier")
adversarial_train = fit_command("msds_lightning.modules.AdversarialTrainingModule", "msds adversarial-train")
train_idc = fit_command("msds_lightning.modules.IDCModule", "msds train-idc")
