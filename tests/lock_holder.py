"""A second real process holding an output's lock, as a running `msds certify` would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def held_by_another_process(path):
    """Yield the ``Popen`` of a process that holds ``OutputLock(path)``; SIGKILL it on exit (no cleanup
    code runs in the holder, so the OS alone must release the lock)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from msds_lightning.runs import OutputLock; "
         "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
