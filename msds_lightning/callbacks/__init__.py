"""Lightning callbacks: result writing, certified-accuracy curves, denoised samples."""

from .curves import CertifiedAccuracyLogger
from .samples import DenoisedSamplesLogger
from .writer import CertificationWriter

__all__ = ["CertificationWriter", "CertifiedAccuracyLogger", "DenoisedSamplesLogger"]
