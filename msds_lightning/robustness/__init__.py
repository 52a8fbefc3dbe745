"""Empirical robustness: attacks (:mod:`.attacks`: PGD, EOT-PGD, AutoAttack; pure PyTorch) and their
evaluation image by image into a resumable result file (:mod:`.evaluation`, behind ``msds attack``)."""

from msds_lightning.robustness.attacks import autoattack, cw_loss, frozen_batchnorm, pgd, pgd_with_restarts
from msds_lightning.robustness.evaluation import (
    AttackSettings,
    AttackTable,
    accuracies,
    attack_batch,
    predict_labels,
    read_rows,
    robust_accuracy,
)

__all__ = [
    "AttackSettings",
    "AttackTable",
    "accuracies",
    "attack_batch",
    "autoattack",
    "cw_loss",
    "frozen_batchnorm",
    "pgd",
    "pgd_with_restarts",
    "predict_labels",
    "read_rows",
    "robust_accuracy",
]
