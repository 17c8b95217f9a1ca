"""bench/review_signals.py: the shape residual points at a displaced landmark; the best-precision search is exact."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))  # after everything else: no shadowing
from review_signals import ShapeResidual, best_precision  # noqa: E402


def test_shape_residual_finds_the_displaced_landmark():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 100, (8, 2))
    shapes = []
    for _ in range(60):  # the mean shape under random similarity transforms, with small noise
        a, s, t = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2), rng.uniform(-20, 20, 2)
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        shapes.append(mean @ r * s + t + rng.normal(0, 0.5, mean.shape))
    model = ShapeResidual(np.array(shapes), ridge=1.0)
    test = mean * 1.5 + 7.0
    clean = model(test)
    test[3] += [12.0, -9.0]  # 15 units off, in a shape 1.5 times the training scale
    residual = model(test)
    assert int(np.argmax(residual)) == 3
    assert residual[3] > 10.0 and clean.max() < 3.0


def test_best_precision():
    suspicion = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    off = np.array([True, False, True, False, True])
    precision, flagged = best_precision(suspicion, off, 0.5)  # 2 of the 3 needed: the top 3 hold them
    assert flagged == 3 and abs(precision - 200.0 / 3) < 1e-9
    precision, flagged = best_precision(suspicion, off, 1.0)
    assert flagged == 5 and abs(precision - 60.0) < 1e-9


def test_training_shapes_keep_the_complete_and_refuse_too_few(tmp_path):
    from review_signals import training_shapes

    full = [[float(i), float(i + 1)] for i in range(3)]
    gap = [[0.0, 1.0], None, [2.0, 3.0]]
    items = [{"anatomy": "head", "landmarks": full}] * 10 + [{"anatomy": "head", "landmarks": gap}]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items + [{"anatomy": "hand", "landmarks": [[0, 0]]}]}))
    assert training_shapes(str(path), "head").shape == (10, 3, 2)  # the one with a gap left out
    path.write_text(json.dumps({"training": items[5:]}))
    with pytest.raises(SystemExit, match=r"datalist.json: 5 of 6 head training shapes have every landmark annotated"):
        training_shapes(str(path), "head")


def test_a_shape_with_a_missing_prediction_is_most_suspect():
    rng = np.random.default_rng(1)
    model = ShapeResidual(rng.uniform(0, 100, (1, 4, 2)) + rng.normal(0, 1, (30, 4, 2)), ridge=1.0)
    rows = [{"landmark": f"l{k}", "pred_x": str(x), "pred_y": str(y)} for k, (x, y) in enumerate(rng.uniform(0, 100, (4, 2)))]
    assert np.isfinite(model.of_rows(rows, ["l2", "l0"])).all()
    rows[1]["pred_x"] = ""
    assert np.isinf(model.of_rows(rows, ["l2", "l0"])).all()
