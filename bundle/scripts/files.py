"""Writing files so that a reader never sees half of one, and naming files after their image.

Every file a run writes (datalists, landmark JSON, reports, figures, overlays) goes through :func:`atomic_path`:
it is written beside its destination under a temporary name, flushed to disk and renamed over the
destination in one step, so an interrupted run leaves the previous file, not a truncated one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .durable import replace_durably, umask

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_folder",
    "atomic_path",
    "image_stem",
    "image_suffix",
    "strict_json",
    "write_image_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

# file name endings of the image formats the bundle reads; compound ones (".nii.gz") before their tails
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_suffix(path: str) -> str | None:
    """The image suffix ``path`` ends with (one of :data:`IMAGE_SUFFIXES`, any case), or None."""
    low = os.path.basename(path).lower()
    return next((s for s in IMAGE_SUFFIXES if low.endswith(s)), None)


def image_stem(path: str) -> str:
    """The file name of ``path`` without its image suffix: ``/data/a.nii.gz`` -> ``a``, ``b.PNG`` -> ``b``.

    ``os.path.splitext`` strips only the last suffix (``a.nii``); other names lose their last suffix only.
    """
    name = os.path.basename(path)
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else os.path.splitext(name)[0]


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only once written whole.

    The temporary name keeps the extension, so writers that infer the format from it (PIL, matplotlib) work.
    On success :func:`~scripts.durable.replace_durably` commits it (fsync, the mode a new file would get, rename,
    folder fsync); on failure it is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix="_" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_folder(path: str) -> Iterator[str]:
    """Yield a temporary folder beside ``path`` to fill; it replaces the folder ``path`` only once filled.

    A failure removes the temporary folder and leaves ``path`` as it was.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_" + os.path.basename(path) + "_")
    old = tmp + "_old"
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~umask())
        if os.path.exists(path):
            os.replace(path, old)  # out of the way first: a folder cannot be renamed over a full one
        try:
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(old):
                os.replace(old, path)
            raise
    finally:
        for folder in (tmp, old):
            if os.path.exists(folder):
                shutil.rmtree(folder)


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: strict JSON, which every reader accepts."""
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json_atomic(obj: Any, path: str, indent: int = 2) -> None:
    """Write ``obj`` as strict JSON (NaN and inf as null) through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(strict_json(obj), f, indent=indent, allow_nan=False)


def write_text_atomic(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_image_atomic(image: Any, path: str, format: str = "PNG") -> None:
    """Save a PIL image (anything with ``save(path, format=...)``) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        image.save(tmp, format=format)
