import numpy as np
import pytest

from scripts.anatomies import Anatomy, AnatomySet
from scripts.metrics import LandmarkErrorMetric, radial_errors, summarize_anatomy, summarize_errors


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
    assert m.compute() == pytest.approx(np.sqrt(1.0 * 5.0))  # geometric mean of the anatomies' MREs
    assert m.results["a"]["missing_landmarks"] == 1 and m.results["a"]["unit"] == "mm"
    assert m.results["a"]["per_landmark_MRE"]["p"] == pytest.approx(1.0)
    assert np.isnan(m.results["a"]["per_landmark_MRE"]["q"])
    assert m.results["b"]["SDR"]["3"] == 0.0


def test_checkpoint_ranking_does_not_depend_on_units():
    """Two validation results of a two-anatomy model: the key metric ranks them the same when one anatomy's
    errors are in px (x 10) instead of mm, and a failing anatomy does not outweigh a real gain on another."""
    anatomies = AnatomySet([Anatomy("a", ("p",), (16, 16), None, (1.0,)), Anatomy("b", ("r",), (16, 16), None, (1.0,))])

    def key(err_a: float, err_b: float) -> float:
        m = LandmarkErrorMetric(anatomies)
        m.update(
            [
                {"pred_landmarks": [[0, 0]], "landmarks_original": [[err_a, 0]], "spacing": [1, 1], "unit": "px", "anatomy": "a"},
                {"pred_landmarks": [[0, 0]], "landmarks_original": [[err_b, 0]], "spacing": [1, 1], "unit": "px", "anatomy": "b"},
            ]
        )
        return m.compute()

    # checkpoint 2 halves a's error while b (not converged) gets 20 % worse: an overall gain
    for scale in (1.0, 10.0, 0.1):
        assert key(1.0, 100.0 * scale) > key(0.5, 120.0 * scale)


def _resized_item(points: np.ndarray, spacing: tuple[float, float]):
    """A (300 x 120) original with ``spacing`` mm, resized to the network's (60 x 48): factors 5 and 2.5."""
    import torch
    from monai.data import MetaTensor

    from scripts.landmark_transforms import PointsInImaged, ResizeToSized

    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.zeros(1, 300, 120), affine=affine, meta={"filename_or_obj": "/data/a.png"})
    image.meta["original_affine"] = affine
    d = {"image": image, "landmarks": points, "size": [60, 48]}
    d = ResizeToSized(keys="image")(PointsInImaged(keys="landmarks")(d))
    from monai.transforms import ApplyTransformToPointsd

    d = ApplyTransformToPointsd(keys="landmarks", refer_keys="image", invert_affine=True)(d)
    return d


def test_known_answer_through_resize_decode_and_anisotropic_spacing():
    """Heatmaps drawn one network pixel off the truth: 5 original px x 0.1 mm in x, 2.5 px x 0.2 mm in y."""
    import torch

    from scripts.heatmaps import DecodeLandmarksd, LandmarkHeatmap

    true = np.array([[101.3, 40.7], [200.0, 60.2], [150.6, 80.1], [np.nan, np.nan]])
    d = _resized_item(true, (0.1, 0.2))
    grid = d["landmarks"].as_tensor()[0].float()
    offsets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    d["pred"] = LandmarkHeatmap(2.0)(torch.nan_to_num(grid, nan=30.0) + offsets, (60, 48))
    d = DecodeLandmarksd(keys="pred", method="gaussian", window=5)(d)
    anatomies = AnatomySet([Anatomy("a", ("p", "q", "r", "s"), (48, 48), (0.1, 0.2), (0.6, 1.0))])
    m = LandmarkErrorMetric(anatomies)
    m.update([{**d, "landmarks_original": true, "spacing": [0.1, 0.2], "unit": "mm", "anatomy": "a"}])
    errors = m.records[0]["errors"]
    assert errors[:3] == pytest.approx([0.5, 0.5, np.hypot(0.5, 0.5)], abs=1e-4)
    assert np.isnan(errors[3])
    assert m.compute() == pytest.approx((1.0 + np.hypot(0.5, 0.5)) / 3, abs=1e-4)
    r = m.results["a"]
    assert r["SDR"] == {"0.6": pytest.approx(200 / 3), "1": pytest.approx(100.0)}
    assert r["median"] == pytest.approx(0.5, abs=1e-4) and r["count"] == 3 and r["missing_landmarks"] == 1
    assert r["per_landmark"]["r"]["SDR"]["0.6"] == 0.0 and r["per_landmark"]["s"]["count"] == 0
    assert m.records[0]["image"] == "/data/a.png"


def test_metric_is_an_ignite_metric_with_per_split_figures():
    from ignite.engine import Engine

    anatomies = AnatomySet([Anatomy("a", ("p",), (16, 16), None, (3.0, 6.0))])
    batches = [
        [{"pred_landmarks": [[0.0, 0.0]], "landmarks_original": [[3.0, 4.0]], "split": "test1"}],
        [{"pred_landmarks": [[0.0, 0.0]], "landmarks_original": [[0.0, 1.0]], "split": "test2"}],
    ]
    common = {"spacing": [1.0, 1.0], "unit": "px", "anatomy": "a"}
    engine = Engine(lambda e, batch: [{**b, **common} for b in batch])
    metric = LandmarkErrorMetric(anatomies)
    metric.attach(engine, "mre")
    state = engine.run(batches, max_epochs=1)
    assert state.metrics["mre"] == pytest.approx(3.0) and state.metrics["mre_a_SDR_6"] == 100.0
    per_split = metric.results["a"]["per_split"]
    assert per_split["test1"]["MRE"] == 5.0 and per_split["test2"]["MRE"] == 1.0 and per_split["test2"]["images"] == 1


def test_summarize_anatomy_per_landmark_known_answer():
    a = Anatomy("a", ("p", "q"), (16, 16), None, (2.0,))
    s = summarize_anatomy(np.array([[1.0, np.nan], [3.0, 5.0]]), a)
    assert s["MRE"] == pytest.approx(3.0) and s["SDR"]["2"] == pytest.approx(100 / 3)
    assert s["missing_landmarks"] == 1 and s["images_with_missing"] == 1
    assert s["per_landmark"]["p"] == {"MRE": 2.0, "STD": 1.0, "median": 2.0, "SDR": {"2": 50.0}, "count": 2}
    assert s["per_landmark_MRE"] == {"p": 2.0, "q": 5.0}
