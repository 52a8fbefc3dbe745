"""Guards of resumable result files: one writer per output, and rows only from one set of settings.

Certification and attack runs append rows to a result file and resume it after a crash or a requeue. Two
things must then hold, or the table lies:

* **one writer per output** — :class:`OutputLock` holds an exclusive ``fcntl.flock`` on ``<file>.lock``
  for the run. The OS drops it when the process dies (even by ``kill -9``), so no stale lock survives;
  a second run on the same output is refused at start with the holder's host and pid.
* **one set of settings per output** — a *run fingerprint* (every setting that changes a row, with the
  checkpoints identified by the sha256 of their content rather than by their path) is stored next to the
  rows (:func:`check_fingerprint`); resuming with another fingerprint is refused with the differing
  settings named.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

FINGERPRINT_VERSION = 1


class OutputLock:
    """Exclusive lock of ``target`` through ``<target>.lock`` (``fcntl.flock``, released by the OS when the
    holding process exits). The lock file keeps the holder's ``host pid`` for the refusal message; it is never
    deleted (deleting a lock file another process is about to lock would let two writers in).

    ``flock`` is exclusive across the processes of one machine, and across NFS clients where the NFS client
    maps it to POSIX locks (Linux does since 2.6.12); on file systems without locking, acquiring raises."""

    def __init__(self, target: str | os.PathLike, hint: str = "choose another output"):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.hint = hint
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OSError(err.errno, f"cannot lock {self.path} ({err.strerror})") from err
            who = f"host {holder[0]}, pid {holder[1]}" if len(holder) >= 2 else "another process"
            raise ValueError(
                f"{self.target} is being written by another run ({who}; lock {self.path}). Wait for it to "
                f"finish or stop it, or {self.hint}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def content_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def flatten(settings: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"model": {"sigma": 0.25}}`` -> ``{"model.sigma": 0.25}``; lists and scalars are leaves."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def fingerprint(
    settings: Mapping, checkpoints: Mapping[str, str | os.PathLike | None] = ()
) -> dict[str, object]:
    """A run fingerprint: the flattened ``settings`` (JSON values) plus ``checkpoints`` (setting name ->
    local file or folder) replaced by :func:`content_digest`, so a moved checkpoint matches itself and a
    retrained one at the same path does not."""
    flat = json.loads(json.dumps(flatten(settings), default=str))  # as it reads back from the file
    for name, path in dict(checkpoints).items():
        flat[name] = content_digest(path) if path is not None and Path(path).exists() else path
    return dict(sorted(flat.items()))


def fingerprint_path(output: str | os.PathLike) -> Path:
    """Where the fingerprint of ``output`` is stored: ``<output stem>.fingerprint.json`` beside it."""
    return Path(output).with_suffix(".fingerprint.json")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """``"key: old -> new"`` for every setting that differs (missing ones shown as ``(absent)``)."""
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {_short(old[k]) if k in old else '(absent)'} -> {_short(new[k]) if k in new else '(absent)'}"
        for k in keys
        if old.get(k, ...) != new.get(k, ...)
    ]


def check_fingerprint(
    stored_at: str | os.PathLike,
    current: Mapping[str, object],
    has_rows: bool,
    rows_in: str,
    overwrite_hint: str,
) -> bool:
    """Refuse to resume rows made under other settings.

    :param stored_at: the fingerprint file (:func:`fingerprint_path`)
    :param current: this run's :func:`fingerprint`
    :param has_rows: whether result rows exist already (a file without a fingerprint is then foreign)
    :param rows_in: the result file(s), for the message
    :param overwrite_hint: how to start afresh, e.g. ``"--results.overwrite true"``
    :returns: whether the fingerprint file has to be (re)written: there are no rows yet
    :raises ValueError: naming each differing setting (``key: old -> new``)
    """
    stored_at = Path(stored_at)
    how = f"use another output path, or {overwrite_hint} to discard the existing rows"
    if not has_rows:
        return True  # nothing to mix (e.g. a run that failed before its first row): record this run's
    if not stored_at.is_file():
        if has_rows:
            raise ValueError(
                f"{rows_in} holds rows but no run fingerprint ({stored_at}): they may come from other settings "
                f"or another program, so they are not resumed; {how}"
            )
        return True
    try:
        stored = json.loads(stored_at.read_text())
        old = stored["settings"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{stored_at} is not a run fingerprint ({err}); {how}") from None
    changed = differences(old, current)
    if changed:
        raise ValueError(
            f"{rows_in} was written with other settings; refusing to mix rows. Differences (stored -> now): "
            + "; ".join(changed)
            + f". To keep the old rows, {how}"
        )
    return False


def write_fingerprint(stored_at: str | os.PathLike, current: Mapping[str, object]) -> None:
    """Write ``current`` atomically (a reader never sees half a fingerprint)."""
    stored_at = Path(stored_at)
    stored_at.parent.mkdir(parents=True, exist_ok=True)
    tmp = stored_at.with_name(stored_at.name + ".tmp")
    tmp.write_text(json.dumps({"version": FINGERPRINT_VERSION, "settings": dict(current)}, indent=1) + "\n")
    os.replace(tmp, stored_at)


def check_output_path(output: str | os.PathLike, argument: str) -> Path:
    """``output`` as a result file path that can be created: not a folder, its parent writable.

    Raises ``ValueError`` naming ``argument`` (e.g. ``--results.output``) before any work is done."""
    output = Path(output)
    if output.is_dir():
        raise ValueError(
            f"{argument}={output} is a folder; give a file path such as {output / 'results.tsv'}"
        )
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"{argument}: cannot create the folder {parent} ({err.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (
        output.exists() and not os.access(output, os.R_OK | os.W_OK)
    ):
        raise ValueError(f"{argument}={output}: not writable by this user")
    return output


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """``"safetensors"``, ``"zip"`` (``torch.save``), ``"pickle"`` (legacy ``torch.save``) or ``None`` (not a
    checkpoint) from the first bytes of a file; nothing is unpickled."""
    import zipfile

    path = Path(path)
    with path.open("rb") as f:
        head = f.read(9)
    if zipfile.is_zipfile(path):
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return None


def check_training_checkpoint(path: str | os.PathLike, argument: str = "--ckpt_path") -> Path:
    """A Lightning checkpoint to resume from: it must exist and load with ``torch.load(weights_only=True)``
    (tensors and plain data only; no code runs). Raises ``ValueError``/``FileNotFoundError`` naming it."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: checkpoint not found: {path}")
    kind = checkpoint_format(path)
    if kind not in ("zip", "pickle"):
        raise ValueError(f"{argument}: {path} is not a torch.save checkpoint (a Lightning .ckpt file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as err:  # zip, pickle and torch errors of all kinds: a damaged or foreign file
        raise ValueError(f"{argument}: cannot load {path} ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{argument}: {path} is not a Lightning training checkpoint (no 'state_dict')")
    return path


def honour_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or every file of a folder) the mode a plain ``open`` would: ``0o666 & ~umask``.
    safetensors creates its files 0600, which a cluster group sharing the checkpoints cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        os.chmod(file, 0o666 & ~mask)
