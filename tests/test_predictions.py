"""predictions.csv rows and the choice of worst cases, from metric records."""

from __future__ import annotations

import csv

import numpy as np

from scripts.anatomies import Anatomy, AnatomySet
from scripts.predictions import PREDICTION_COLUMNS, worst_cases, write_predictions_csv

ANATOMIES = AnatomySet([Anatomy("knee", ("a", "b"), (32, 32), (0.5, 0.5))])


def _record(image: str, errors, anatomy: str = "knee") -> dict:
    return {
        "image": image, "anatomy": anatomy, "split": "test", "pred": np.zeros((2, 2)), "true": np.array([[1.0, 2.0], [np.nan, np.nan]]),
        "spacing": [0.5, 0.5], "unit": "mm", "errors": np.asarray(errors, float), "confidence": np.array([0.5, 0.25]),
    }  # fmt: skip


def test_worst_cases_rank_by_mean_error_over_annotated_landmarks_only():
    records = [_record("a", [1.0, np.nan]), _record("b", [3.0, np.nan]), _record("c", [np.nan, np.nan]), _record("d", [2.0, 2.0])]
    assert [r["image"] for r in worst_cases(records, "knee", 2)] == ["b", "d"]
    assert [r["image"] for r in worst_cases(records, "knee", 10)] == ["b", "d", "a"]  # "c" has no error to rank
    assert worst_cases(records, "hip", 3) == []


def test_csv_rows_leave_unknown_cells_empty(tmp_path):
    path = str(tmp_path / "predictions.csv")
    assert write_predictions_csv([_record("/x/a.png", [1.118034, np.nan])], ANATOMIES, path) == 2
    rows = list(csv.DictReader(open(path)))
    assert tuple(rows[0]) == PREDICTION_COLUMNS
    assert rows[0]["true_y"] == "2.000000" and rows[0]["error"] == "1.118034" and rows[0]["confidence"] == "0.500000"
    assert rows[1]["landmark"] == "b" and rows[1]["true_x"] == rows[1]["error"] == "" and rows[1]["unit"] == "mm"
