"""The generated-data file format (the field's, as written by ``msds generate`` and shipped by the reference,
e.g. the HF data set ``P2333/DM-Improves-AT``): an ``np.savez`` archive (uncompressed zip) with ``image``
uint8 [N, H, W, C] and ``label`` int64 [N], grouped by class.

* :func:`save_npz` / :func:`load_npz` write and read it (in memory);
* :func:`prepare_generated` converts an archive once into two plain ``.npy`` files beside it
  (``<stem>.image.npy``, ``<stem>.label.npy``; streamed, never the whole array in RAM): a ``.npz`` member
  cannot be memory-mapped, and 1M CIFAR-size images are 3 GB (50M: 154 GB), so
  :class:`~msds_lightning.data.GeneratedImages` opens the pair with ``np.load(mmap_mode="r")``.

Every file is written under a temporary name and renamed (:func:`write_atomic`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_KEY = "image"
LABEL_KEY = "label"
_COPY_CHUNK = 64 << 20  # bytes per read when converting .npz members to .npy


def missing_file_error(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Generated data not found: {path}. Make it with `msds generate --denoiser DIR --num-per-class N "
        f"--num-classes K --output {path}` (a DiffusionDenoiser folder whose UNet has class embeddings), or "
        f"download the reference's files (e.g. cifar10/1m.npz of the Hugging Face data set P2333/DM-Improves-AT)"
    )


def check_generated_arrays(images: Any, labels: Any, where: str) -> None:
    """Raise ``ValueError`` naming the problem unless ``images`` is uint8 [N, H, W, C] (C = 1 or 3) and
    ``labels`` int64 [N]."""
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: '{IMAGE_KEY}' must be uint8 (pixels 0..255), got {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        hint = ""
        if images.ndim == 4 and images.shape[1] in (1, 3):
            hint = " (it looks channels-first: transpose to N, H, W, C)"
        raise ValueError(
            f"{where}: '{IMAGE_KEY}' must have shape (N, H, W, C) with C = 1 or 3, got {tuple(images.shape)}{hint}"
        )
    if labels.dtype != np.int64:
        raise ValueError(f"{where}: '{LABEL_KEY}' must be int64, got {labels.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{where}: '{LABEL_KEY}' must have shape ({len(images)},) (one per image), got {tuple(labels.shape)}"
        )


def npy_paths(npz_path: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The ``.npy`` pair a ``.npz`` converts to: ``<stem>.image.npy``, ``<stem>.label.npy`` beside it or in
    ``cache_dir``."""
    npz_path = Path(npz_path).expanduser()
    folder = npz_path.parent if cache_dir is None else Path(cache_dir).expanduser()
    stem = npz_path.name[: -len(".npz")] if npz_path.name.endswith(".npz") else npz_path.name
    return folder / f"{stem}.{IMAGE_KEY}.npy", folder / f"{stem}.{LABEL_KEY}.npy"


def _read_npy_header(f, where: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    # 3.0 only exists for structured dtypes with non-latin-1 field names, never for uint8 images
    raise ValueError(f"{where}: the image array is in .npy format {version[0]}.{version[1]}; expected 1.0 or 2.0 "
                     f"(np.savez of a uint8 array writes 1.0)")  # fmt: skip


def prepare_generated(
    npz_path: str | Path, cache_dir: str | Path | None = None, force: bool = False
) -> tuple[Path, Path]:
    """Convert ``npz_path`` to its memory-mappable ``.npy`` pair unless an up-to-date pair exists; return it.

    The pair is up to date if both files exist and are not older than the ``.npz``; a missing ``.npz`` with
    an existing pair uses the pair (the archive may be deleted after conversion to save disk). Members are
    streamed in 64 MB pieces, so memory use does not grow with the data; each file is written under a
    temporary name and renamed, so concurrent or interrupted conversions never leave a partial file.
    """
    npz_path = Path(npz_path).expanduser()
    image_npy, label_npy = npy_paths(npz_path, cache_dir)
    have_pair = image_npy.is_file() and label_npy.is_file()
    if not npz_path.is_file():
        if have_pair:
            return image_npy, label_npy
        raise missing_file_error(npz_path)
    if have_pair and not force:
        npz_time = npz_path.stat().st_mtime
        if min(image_npy.stat().st_mtime, label_npy.stat().st_mtime) >= npz_time:
            return image_npy, label_npy

    image_npy.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(npz_path)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{npz_path} is not an .npz archive ({err}); expected np.savez(..., image=uint8 [N, H, W, C], "
            f"label=int64 [N])"
        ) from err
    with archive:
        members = {name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy")}
        missing = [key for key in (IMAGE_KEY, LABEL_KEY) if key not in members]
        if missing:
            raise ValueError(
                f"{npz_path}: no {' or '.join(repr(k) for k in missing)} array (it has {sorted(members)}); "
                f"expected np.savez(..., image=uint8 [N, H, W, C], label=int64 [N])"
            )
        with archive.open(f"{LABEL_KEY}.npy") as f:
            labels = np.lib.format.read_array(f, allow_pickle=False)
        if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.int64:
            labels = labels.astype(np.int64)  # lenient: int32 labels are common and small
        with archive.open(f"{IMAGE_KEY}.npy") as f:
            shape, fortran_order, dtype = _read_npy_header(f, npz_path)
            check_generated_arrays(_Header(shape, dtype), labels, str(npz_path))
            _stream_to_npy(f, image_npy, shape, dtype, fortran_order)
    write_atomic(label_npy, lambda tmp: np.save(tmp, labels))
    return image_npy, label_npy


class _Header:
    """Stands in for an array in :func:`check_generated_arrays` when only its ``.npy`` header has been read."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0


def _stream_to_npy(f, dest: Path, shape, dtype, fortran_order: bool) -> None:
    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape, fortran_order=fortran_order)
        flat = memoryview(out.reshape(-1, order="A").view(np.uint8)) if out.size else memoryview(b"")
        pos = 0
        while pos < len(flat):
            n = f.readinto(flat[pos : pos + _COPY_CHUNK])
            if not n:
                raise ValueError(f"{dest}: the archive ended after {pos} of {len(flat)} bytes of image data")
            pos += n
        out.flush()
        del flat, out

    write_atomic(dest, write)


def write_atomic(dest: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``dest``, then rename it to ``dest``: an interrupted or
    concurrent writer never leaves a partial file. The temporary name keeps ``dest``'s suffix (numpy's
    writers append ``.npy``/``.npz`` to names without it)."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}{dest.suffix}")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``np.savez`` (uncompressed) with ``image`` uint8 [N, H, W, C] and ``label`` int64 [N] to ``path``.

    The file is written beside ``path`` first and renamed, so an interrupted run leaves no partial file.
    ``path`` is used as given (``np.savez`` would append ``.npz`` to a plain path).
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if labels.dtype != np.int64 and np.issubdtype(labels.dtype, np.integer):
        labels = labels.astype(np.int64)
    check_generated_arrays(images, labels, "save_npz")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **{IMAGE_KEY: images, LABEL_KEY: labels})

    write_atomic(path, write)
    return path


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a generated-data ``.npz`` into memory: ``(images uint8 [N, H, W, C], labels int64 [N])``.

    For large files use :class:`~msds_lightning.data.GeneratedImages`, which memory-maps them instead.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise missing_file_error(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in (IMAGE_KEY, LABEL_KEY) if key not in data.files]
        if missing:
            raise ValueError(
                f"{path}: no {' or '.join(repr(k) for k in missing)} array (it has {sorted(data.files)}); "
                f"expected np.savez(..., image=uint8 [N, H, W, C], label=int64 [N])"
            )
        images, labels = data[IMAGE_KEY], data[LABEL_KEY]
    check_generated_arrays(images, labels, str(path))
    return images, labels
