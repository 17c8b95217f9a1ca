"""bench/review_signals.py: the shape residual points at a displaced landmark; the best-precision search is exact."""

import os
import sys

import numpy as np

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
