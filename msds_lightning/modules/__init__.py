"""Lightning modules: they orchestrate; the networks live in :mod:`msds_lightning.models`."""

from .adversarial import AdversarialTrainingModule
from .certify import CertifyModule, PredictModule
from .classifier_train import ClassifierModule
from .denoiser_pretrain import DenoiserPretrainModule
from .finetune import DenoiserFinetuneModule
from .idc import IDCModule

__all__ = [
    "AdversarialTrainingModule",
    "CertifyModule",
    "PredictModule",
    "ClassifierModule",
    "DenoiserFinetuneModule",
    "DenoiserPretrainModule",
    "IDCModule",
]
