"""The chest: Shenzhen chest X-rays (``CHNCXR_NNNN_0.png``, normal cases) with the GU2Net authors' 6 lung landmarks.

Label files ``CHNCXR_NNNN_0.txt`` (distributed apart from the images, hence ``labels``): the first line is the
count (6), then one line ``x y`` per landmark as ratios of the image width and height, pixel = ratio x size
(the ratios are pixel positions divided by the size, as the authors' code reads them back). Only normal cases
(``_0``) are used; an image without a label file is skipped and counted; a label file without its image is an
error (the wrong folder, or an incomplete download). The unit is pixels.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..image_io import read_image_header
from .common import PreparedAnatomy, PrepareError, checked_landmarks, find_images, parse_numbers, random_splits

__all__ = ["CHEST_LANDMARKS", "read_shenzhen_label", "read_shenzhen_labels", "prepare_shenzhen"]

CHEST_LANDMARKS = tuple(f"chest_{k + 1}" for k in range(6))
NORMAL = "CHNCXR_*_0"


def read_shenzhen_label(path: str) -> np.ndarray:
    """One label file: ``(6, 2)`` ratios of width and height, each checked to lie in [0, 1]."""
    with open(path) as f:
        lines = [line.strip() for line in f.read().splitlines()]
    n = len(CHEST_LANDMARKS)
    if not lines or lines[0] != str(n):
        raise PrepareError(f"{path}, line 1: expected the landmark count {n}, got {lines[0] if lines else ''!r}.")
    body = [(k + 2, line) for k, line in enumerate(lines[1:]) if line]
    if len(body) != n:
        raise PrepareError(f"{path}: {len(body)} landmark lines after the count, expected {n}.")
    ratios = []
    for number, line in body:
        where = f"{path}, line {number}"
        cells = line.split()
        if len(cells) != 2:
            raise PrepareError(f"{where}: expected 'x y' (ratios of width and height), got {line!r}.")
        xy = parse_numbers(cells, where)
        if np.isnan(xy).any() or (xy < 0).any() or (xy > 1).any():
            raise PrepareError(f"{where}: ratios must lie in [0, 1], got {line!r}.")
        ratios.append(xy)
    return np.stack(ratios)


def read_shenzhen_labels(folder: str) -> dict[str, tuple[np.ndarray, str]]:
    """All normal-case label files of a folder: image stem -> (ratios ``(6, 2)``, file)."""
    if not os.path.isdir(folder):
        raise PrepareError(f"{folder}: the label folder does not exist.")
    names = sorted(n for n in os.listdir(folder) if n.startswith("CHNCXR_") and n.endswith("_0.txt"))
    return {n[:-4]: (read_shenzhen_label(os.path.join(folder, n)), os.path.join(folder, n)) for n in names}


def prepare_shenzhen(
    raw: str,
    labels: str,
    size: tuple[int, int] = (512, 512),
    val_fraction: float = 0.1,
    test_fraction: float = 75 / 279,
    seed: int = 0,
    anatomy: str = "chest",
) -> PreparedAnatomy:
    """Read the Shenzhen normal cases under ``raw`` with the label files in ``labels``.

    Args:
        raw: folder holding ``CHNCXR_NNNN_0.png`` (searched recursively).
        labels: folder of the ``CHNCXR_NNNN_0.txt`` label files (not the set's own clinical readings, which
            have the same names).
        size: the network input size ``(W, H)`` (the paper: 512 x 512).
        val_fraction, test_fraction: shares drawn at random with ``seed`` (the paper: 75 of 279 for test).
        seed: seed of that draw.
        anatomy: the anatomy's name in the datalist.
    """
    raw, labels = os.path.abspath(raw), os.path.abspath(labels)
    found = read_shenzhen_labels(labels)
    images = find_images(raw, NORMAL + ".*")
    for key in sorted(found.keys() - images.keys()):
        raise PrepareError(f"{found[key][1]}: a label file for image {key}, which is not under {raw}.")
    items: dict[str, dict[str, Any]] = {}
    for key in sorted(found):
        ratios, path = found[key]
        header = read_image_header(images[key])
        pixels = ratios * np.array(header.size[:2], dtype=np.float64)
        items[key] = {"image": images[key], "anatomy": anatomy, "id": key, "landmarks": checked_landmarks(pixels, 6, images[key], path)}
    if not items:
        raise PrepareError(f"{labels}: no label files CHNCXR_NNNN_0.txt.")
    splits, how = random_splits(items, val_fraction, test_fraction, seed)
    spec = {"landmarks": list(CHEST_LANDMARKS), "size": list(size)}
    report = {
        "source": "shenzhen",
        "raw": raw,
        "labels": labels,
        "unit": "px",
        "split": how,
        "counts": {s: len(v) for s, v in splits.items()},
        "skipped": {
            "normal images without a label file": len(images.keys() - found.keys()),
            "abnormal cases (_1), not used": len(find_images(raw, "CHNCXR_*_1.*")),
        },
    }
    return PreparedAnatomy(anatomy, spec, splits, report)
