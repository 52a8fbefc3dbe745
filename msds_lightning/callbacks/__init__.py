"""Lightning callbacks."""

from .writer import CertificationWriter

__all__ = ["CertificationWriter"]
