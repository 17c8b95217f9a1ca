"""The hand: Digital Hand Atlas radiographs with Payer et al.'s 37 landmarks (``all.csv``).

``all.csv`` has one row per image, ``id,x0,y0,...,x36,y36`` in pixels of the original image. The images may be
in any ITK format (the atlas ships JPGs), anywhere under the raw folder, named by their id. Only images with
a row get items; rows of images that are not there are counted (the atlas is often partly downloaded), and so
are images without a row.

Physical scale, per image: the wrist width, the distance between landmarks 1 and 5 (1-based), is 50 mm, so
mm per pixel = 50 / that distance **in the original image's pixels**. (The authors' code measured it after an
anisotropic resize, which distorts it; an image header's spacing is not used either.)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .common import PreparedAnatomy, PrepareError, checked_landmarks, find_images, parse_numbers, random_splits, read_csv_rows

__all__ = ["HAND_LANDMARKS", "WRIST_WIDTH_MM", "wrist_spacing", "read_hand_csv", "prepare_hand"]

HAND_LANDMARKS = tuple(f"hand_{k + 1}" for k in range(37))
WRIST_WIDTH_MM = 50.0
WRIST_LANDMARKS = (0, 4)  # landmarks 1 and 5, 0-based
SPACING_SOURCE = "wrist width: 50 mm between landmarks 1 and 5, in original pixels"


def wrist_spacing(points: np.ndarray, where: str) -> float:
    """mm per pixel of one hand image from its landmarks ``(37, 2)`` in original pixels."""
    a, b = points[WRIST_LANDMARKS[0]], points[WRIST_LANDMARKS[1]]
    width = float(np.hypot(*(a - b)))
    if not np.isfinite(width) or width <= 0:
        raise PrepareError(f"{where}: landmarks 1 and 5 are missing or coincide; the wrist width (50 mm) gives the scale.")
    return WRIST_WIDTH_MM / width


def read_hand_csv(path: str) -> dict[str, tuple[np.ndarray, str]]:
    """Payer et al.'s ``all.csv``: image id -> (landmarks ``(37, 2)`` in pixels, ``"file, line"``)."""
    n = 2 * len(HAND_LANDMARKS)
    rows: dict[str, tuple[np.ndarray, str]] = {}
    for where, cells in read_csv_rows(path):
        if len(cells) != n + 1:
            raise PrepareError(f"{where}: {len(cells)} values, expected {n + 1} (id and {n} coordinates).")
        key = cells[0].strip()
        if key in rows:
            raise PrepareError(f"{where}: duplicate image id {key!r} (also at {rows[key][1]}).")
        rows[key] = (parse_numbers(cells[1:], where).reshape(-1, 2), where)
    return rows


def prepare_hand(
    raw: str,
    labels: str | None = None,
    size: tuple[int, int] = (352, 512),
    val_fraction: float = 0.1,
    test_fraction: float = 1 / 3,
    seed: int = 0,
    anatomy: str = "hand",
) -> PreparedAnatomy:
    """Read the hand atlas images under ``raw`` and their rows of ``labels`` (default ``raw/all.csv``).

    Args:
        raw: folder holding the images (searched recursively; file name = CSV id).
        labels: Payer et al.'s ``all.csv``.
        size: the network input size ``(W, H)`` (the paper: 352 x 512).
        val_fraction, test_fraction: shares drawn at random with ``seed`` (the paper: 300 of 895 for test).
        seed: seed of that draw.
        anatomy: the anatomy's name in the datalist.
    """
    raw = os.path.abspath(raw)
    labels = os.path.abspath(labels or os.path.join(raw, "all.csv"))
    rows = read_hand_csv(labels)
    images = find_images(raw)
    items: dict[str, dict[str, Any]] = {}
    for key in sorted(rows.keys() & images.keys()):
        points, where = rows[key]
        mm = wrist_spacing(points, where)
        items[key] = {
            "image": images[key],
            "anatomy": anatomy,
            "id": key,
            "landmarks": checked_landmarks(points, len(HAND_LANDMARKS), images[key], where),
            "spacing": [mm, mm],
            "spacing_source": SPACING_SOURCE,
        }
    if not items:
        raise PrepareError(f"{raw}: none of the {len(rows)} images of {labels} is there (file name = id, e.g. {next(iter(rows), '?')}.jpg).")
    splits, how = random_splits(items, val_fraction, test_fraction, seed)
    factors = [it["spacing"][0] for it in items.values()]
    spec = {"landmarks": list(HAND_LANDMARKS), "size": list(size), "sdr_radii": [2.0, 4.0, 10.0], "spacing_source": SPACING_SOURCE}
    report = {
        "source": "hand",
        "raw": raw,
        "labels": labels,
        "spacing": f"{SPACING_SOURCE}; mm per pixel {min(factors):.4f}-{max(factors):.4f}",
        "mm_per_pixel": [round(min(factors), 5), round(max(factors), 5)],
        "split": how,
        "counts": {s: len(v) for s, v in splits.items()},
        "skipped": {
            "rows without an image": len(rows.keys() - images.keys()),
            "images without a row": len(images.keys() - rows.keys()),
        },
    }
    return PreparedAnatomy(anatomy, spec, splits, report)
