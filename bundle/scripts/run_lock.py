"""One run per output folder: a lock taken before anything is written there.

Two runs sharing an ``output_dir`` overwrite each other's checkpoints, prune each other's epoch files and race on
the MLflow SQLite store (``duplicate column name: step``). Every workflow's ``initialize`` therefore takes an
exclusive lock on ``<output_dir>/.run.lock`` first; a second run is refused at once with a message naming the
run that holds it. The lock is an OS file lock (``flock``), so the OS releases it when the process ends, however
it ends (``kill -9`` included): there is no stale lock to clean up. Taking it also checks, before the model is
built, that ``output_dir`` is a folder this run can write to. Under ``torchrun`` only rank 0 takes it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from .errors import BundleError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLockError", "LOCK_NAME", "lock_output_dir", "unlock_output_dir"]

LOCK_NAME = ".run.lock"
_HELD: dict[str, int] = {}  # output folder -> the open lock file (held until the process ends)


class RunLockError(BundleError):
    """``output_dir`` is in use by another run, or is not a folder this run can write to."""


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # pragma: no cover
        return False
    return True  # pragma: no cover


def _holder(path: str) -> str:
    """Who holds the lock, from what it wrote into the lock file."""
    try:
        with open(path) as f:
            info = json.load(f)
        return (
            f"{info.get('workflow', 'a run')} (pid {info.get('pid')} on {info.get('host')}, started "
            f"{info.get('started')}: {info.get('command', '')})"
        )
    except (OSError, ValueError):
        return "another process"


def lock_output_dir(output_dir: str, workflow: str = "run") -> str:
    """Create ``output_dir`` if needed and lock it for this process; returns its absolute path.

    Raises:
        RunLockError: ``output_dir`` is a file, cannot be created or written, or another run holds its lock.
    """
    path = os.path.abspath(output_dir)
    if path in _HELD:
        return path
    if int(os.environ.get("RANK", "0") or 0) != 0:  # multi-GPU (torchrun): rank 0 holds the run's lock
        os.makedirs(path, exist_ok=True)
        return path
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunLockError(f"output_dir {path}: is a file, not a folder; choose a folder with --output_dir.")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RunLockError(
            f"output_dir {path}: cannot be created ({e.strerror or e}); choose a writable folder with --output_dir."
        ) from None
    lock = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunLockError(
            f"output_dir {path}: cannot write there ({e.strerror or e}); choose a writable folder with --output_dir."
        ) from None
    if not _try_lock(fd):
        os.close(fd)
        raise RunLockError(
            f"output_dir {path} is in use by another run: {_holder(lock)}. Wait for it to end, or give this run "
            "another --output_dir."
        )
    info = {
        "workflow": workflow,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
    except OSError as e:
        os.close(fd)
        raise RunLockError(
            f"output_dir {path}: cannot write there ({e.strerror or e}); choose a writable folder with --output_dir."
        ) from None
    _HELD[path] = fd
    return path


def unlock_output_dir(output_dir: str) -> None:
    """Release this process's lock on ``output_dir`` (the OS also releases it when the process ends)."""
    fd = _HELD.pop(os.path.abspath(output_dir), None)
    if fd is not None:
        os.close(fd)
