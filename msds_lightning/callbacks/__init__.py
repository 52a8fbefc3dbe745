"""Lightning callbacks: result writing, certified-accuracy curves, denoised samples, EMA with a copy phase."""

from .curves import CertifiedAccuracyLogger
from .ema import CopyThenEMAWeightAveraging
from .samples import DenoisedSamplesLogger
from .writer import CertificationWriter, PredictionWriter

__all__ = [
    "CertificationWriter",
    "PredictionWriter",
    "CertifiedAccuracyLogger",
    "CopyThenEMAWeightAveraging",
    "DenoisedSamplesLogger",
]
