import numpy as np
import pytest

from scripts.anatomies import Anatomy, AnatomySet
from scripts.metrics import LandmarkErrorMetric, radial_errors, summarize_errors


def test_radial_errors_use_per_axis_spacing():
    pred = np.array([[3.0, 4.0], [10.0, 10.0], [0.0, 0.0]])
    true = np.array([[0.0, 0.0], [10.0, 12.0], [np.nan, np.nan]])
    e = radial_errors(pred, true, spacing=(0.5, 0.25))
    assert e[0] == pytest.approx(np.hypot(1.5, 1.0))
    assert e[1] == pytest.approx(0.5)
    assert np.isnan(e[2])


def test_summary_known_answer():
    s = summarize_errors(np.array([1.0, 2.0, 3.0, 10.0, np.nan]), radii=(2.0, 4.0))
    assert s["MRE"] == pytest.approx(4.0)
    assert s["STD"] == pytest.approx(np.std([1, 2, 3, 10]))
    assert s["median"] == pytest.approx(2.5)
    assert s["SDR"] == {"2": pytest.approx(50.0), "4": pytest.approx(75.0)}
    assert s["count"] == 4


def test_metric_averages_anatomies_and_counts_missing():
    anatomies = AnatomySet(
        [Anatomy("a", ("p", "q"), (16, 16), (0.1, 0.1), (1.0,)), Anatomy("b", ("r",), (16, 16), None, (3.0,))]
    )
    m = LandmarkErrorMetric(anatomies)
    m.reset()
    m.update(
        [
            {"pred_landmarks": [[0, 0], [0, 0]], "landmarks_original": [[10, 0], [np.nan, np.nan]], "spacing": [0.1, 0.1], "unit": "mm", "anatomy": "a"},
            {"pred_landmarks": [[0, 0]], "landmarks_original": [[3, 4]], "spacing": [1, 1], "unit": "px", "anatomy": "b"},
        ]
    )
    assert m.compute() == pytest.approx((1.0 + 5.0) / 2)
    assert m.results["a"]["missing_landmarks"] == 1 and m.results["a"]["unit"] == "mm"
    assert m.results["a"]["per_landmark_MRE"]["p"] == pytest.approx(1.0)
    assert np.isnan(m.results["a"]["per_landmark_MRE"]["q"])
    assert m.results["b"]["SDR"]["3"] == 0.0
