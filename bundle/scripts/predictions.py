"""The evaluation's predictions, one row per image and landmark: ``predictions.csv`` and the worst images.

The rows are the records of a :class:`~scripts.metrics.LandmarkErrorMetric`, so every figure of the report can
be recomputed from the CSV.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .anatomies import AnatomySet
from .files import atomic_path

__all__ = ["PREDICTION_COLUMNS", "write_predictions_csv", "worst_cases"]

PREDICTION_COLUMNS = (
    "image", "anatomy", "split", "landmark", "pred_x", "pred_y", "true_x", "true_y",
    "spacing_x", "spacing_y", "unit", "error", "confidence", "review", "mirrored",
)  # fmt: skip


def _number(v: float) -> str:
    """A CSV cell: six decimals, empty when unknown (NaN)."""
    return "" if not np.isfinite(v) else f"{v:.6f}"


def write_predictions_csv(records: Sequence[Mapping[str, Any]], anatomies: AnatomySet, path: str) -> int:
    """One row per image and landmark (:data:`PREDICTION_COLUMNS`), points in original-image pixels.

    The error is in the anatomy's unit (``unit``: mm with the per-axis spacing, or px); a landmark that is not
    annotated has empty ``true_x``, ``true_y`` and ``error``. Returns the number of rows.
    """
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for r in records:
            names = anatomies[r["anatomy"]].landmarks
            for k, name in enumerate(names):
                writer.writerow(
                    [r["image"], r["anatomy"], r["split"], name]
                    + [_number(v) for v in (*r["pred"][k], *r["true"][k], *r["spacing"])]
                    + [r["unit"], _number(r["errors"][k]), _number(float(r["confidence"][k]))]
                    + ["" if r.get("review") is None else str(bool(r["review"][k])).lower(), str(bool(r.get("mirrored"))).lower()]
                )
                rows += 1
    return rows


def worst_cases(records: Sequence[Mapping[str, Any]], anatomy: str, count: int) -> list[Mapping[str, Any]]:
    """The ``count`` images of ``anatomy`` with the highest mean error over their annotated landmarks."""
    recs = [r for r in records if r["anatomy"] == anatomy and np.isfinite(r["errors"]).any()]
    return sorted(recs, key=lambda r: -float(np.nanmean(r["errors"])))[:count]
