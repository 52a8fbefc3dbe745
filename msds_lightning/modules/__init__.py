"""Lightning modules: they orchestrate; the networks live in :mod:`msds_lightning.models`."""

from .certify import CertifyModule

__all__ = ["CertifyModule"]
