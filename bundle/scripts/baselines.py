"""The mean-shape baseline: predict every anatomy's mean training landmarks, scaled to the image.

A model that has learnt nothing from the pixels does about this well; the demo's model must beat it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .anatomies import AnatomySet
from .image_io import read_image_header
from .metrics import radial_errors, summarize_anatomy

__all__ = ["mean_shape", "mean_shape_baseline"]


def mean_shape(items: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per anatomy, the mean landmarks relative to the image size (0..1), ignoring missing ones."""
    rel: dict[str, list[np.ndarray]] = {}
    for it in items:
        w, h = read_image_header(it["image"]).size[:2]
        rel.setdefault(it["anatomy"], []).append(np.asarray(it["landmarks"], dtype=np.float64) / np.array([w, h]))
    return {k: np.nanmean(np.stack(v), axis=0) for k, v in rel.items()}


def mean_shape_baseline(
    train_items: Sequence[Mapping[str, Any]], test_items: Sequence[Mapping[str, Any]], anatomies: AnatomySet
) -> dict[str, Any]:
    """Per anatomy, the metrics of the mean-shape prediction on ``test_items`` (same format as the model's)."""
    shapes = mean_shape(train_items)
    errors: dict[str, list[np.ndarray]] = {}
    for it in test_items:
        if it["anatomy"] not in shapes:
            continue
        w, h = read_image_header(it["image"]).size[:2]
        pred = shapes[it["anatomy"]] * np.array([w, h])
        errors.setdefault(it["anatomy"], []).append(radial_errors(pred, it["landmarks"], it["spacing"]))
    out: dict[str, Any] = {}
    for a in anatomies:
        if a.name in errors:
            unit = next(it["unit"] for it in test_items if it["anatomy"] == a.name)
            out[a.name] = {"unit": unit, "images": len(errors[a.name]), **summarize_anatomy(np.stack(errors[a.name]), a)}
    return out
