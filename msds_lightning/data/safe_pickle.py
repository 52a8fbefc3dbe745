"""Reading pickle-based data files (the CIFAR-10/100 python batches) without running code from them.

``pickle.load`` calls whatever callable a file names, so a tampered data file can execute anything. The
:class:`RestrictedUnpickler` resolves only the few globals that numpy arrays need (array reconstruction,
dtypes and scalars); plain containers, strings, bytes and numbers need no globals at all. Any other global
in a file is refused with a :class:`ValueError` naming the file, before it is called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

_ARRAY = np.zeros(1)
_RECONSTRUCT = _ARRAY.__reduce__()[0]  # numpy's ndarray._reconstruct (protocols 0-4)
_FROMBUFFER = _ARRAY.__reduce_ex__(5)[0]  # numpy's _frombuffer (protocol 5, the default of Python >= 3.14)
_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar(dtype, bytes)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 writes ``bytes`` in protocol 2 pickles; only the latin-1 codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) as written in files, by numpy 1.x (numpy.core) or 2.x (numpy._core) -> the object
ALLOWED_GLOBALS = {
    **{(f"{package}.multiarray", "_reconstruct"): _RECONSTRUCT for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.multiarray", "scalar"): _SCALAR for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _FROMBUFFER for package in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits numpy arrays, dtypes and scalars, and builtin containers and literals only."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and plain Python data are allowed"
            ) from None


def load_data_pickle(path: str | os.PathLike, encoding: str = "latin1"):
    """The object stored in the pickle file ``path``, read with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` reads Python 2 pickles (the CIFAR archives) with ``str`` keys, as torchvision does.
    Raises ``ValueError`` naming the file for a forbidden global, a truncated or otherwise unreadable file.
    """
    data = Path(path).read_bytes()  # read at once: the data set is held in memory anyway
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, OverflowError) as err:  # fmt: skip
        raise ValueError(f"{path} is not a readable data pickle ({type(err).__name__}: {err})") from err
