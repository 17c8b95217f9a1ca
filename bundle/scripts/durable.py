"""Durable atomic writes: a file a run leaves is either its old version or its whole new one, never a cut one.

The rule for every file a run writes (checkpoints, the best model, landmark JSON, overlays, reports): write a
temporary file in the same folder, flush and ``fsync`` it, give it the mode a plainly created file would have
(``0o666`` less the umask: readable by others like any output, not ``0600`` as ``mkstemp`` makes it), then
``os.replace`` it over the target (atomic on POSIX and Windows) and ``fsync`` the folder so the rename itself
survives a power cut. A process killed at any point leaves the previous file intact (plus, at worst, a
``.tmp_*`` file, which the checkpoint saver clears at its next start).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["TMP_PREFIX", "default_file_mode", "replace_durably", "save_torch_atomic", "umask"]

TMP_PREFIX = ".tmp_"


def umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets as it reads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, 'w')`` gives a new file: ``0o666`` less the process's umask."""
    return 0o666 & ~umask()


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is already durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rename(tmp: str, path: str) -> None:
    """The commit step (a seam for tests that inject a kill between writing and renaming)."""
    os.replace(tmp, path)


def replace_durably(tmp: str, path: str) -> None:
    """Give the written temporary file ``tmp`` the default mode, fsync it, rename it over ``path``, fsync the folder."""
    os.chmod(tmp, default_file_mode())
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _rename(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_torch_atomic(obj: Any, path: str, save: Callable[..., None] = torch.save, **kwargs: Any) -> None:
    """``torch.save(obj, path)`` through a temporary file (see the module's rule); ``path``'s folder must exist."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix="_" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f, **kwargs)
            f.flush()
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
