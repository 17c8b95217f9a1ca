"""bench/review_threshold.py: the threshold each rule chooses on a validation CSV, scored on a test CSV."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from scripts.review import choose_review_threshold, review_figures

SCRIPT = os.path.join(REPO, "bench", "review_threshold.py")
COLUMNS = ["image", "anatomy", "landmark", "error", "confidence"]


def _write(path: str, rng: np.random.Generator, images: int) -> tuple[np.ndarray, np.ndarray]:
    """A predictions.csv of ``images`` heads of 19 landmarks; errors that grow as the confidence falls."""
    conf = rng.uniform(0.2, 0.8, (images, 19))
    errors = np.exp(rng.normal(0.4 - 2.0 * (conf - 0.5), 0.6))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(images):
            for k in range(19):
                w.writerow([f"img{i:03d}.png", "head", f"L{k}", f"{errors[i, k]:.6f}", f"{conf[i, k]:.6f}"])
    return conf.ravel(), errors.ravel()


def test_the_threshold_chosen_on_validation_is_scored_on_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    v_conf, v_err = _write(str(tmp_path / "val.csv"), rng, 15)
    conf, err = _write(str(tmp_path / "test.csv"), rng, 60)
    _write(str(tmp_path / "coarse.csv"), rng, 60)
    out = subprocess.run(
        [sys.executable, SCRIPT, "--predictions", str(tmp_path / "test.csv"), "--validation", str(tmp_path / "val.csv"),
         "--coarse", str(tmp_path / "coarse.csv"), "--draws", "5"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for method in ("model", "empirical"):
        t, _ = choose_review_threshold(v_conf, v_err, 4.0, 0.9, method=method)
        line = re.search(rf"^  {method} +threshold +([0-9.]+): recall +([0-9.]+) %", out, re.M)
        assert line, out
        assert float(line.group(1)) == pytest.approx(t, abs=5e-4)
        assert float(line.group(2)) == pytest.approx(review_figures(err, conf < t, 4.0)["recall"], abs=0.05)
    assert "5 draws of 15 images as validation, scored on the other 45:" in out
    assert len(re.findall(r"^  (model|empirical) +recall", out, re.M)) == 2


def test_draws_need_the_coarse_predictions(tmp_path):
    _write(str(tmp_path / "test.csv"), np.random.default_rng(1), 20)
    proc = subprocess.run([sys.executable, SCRIPT, "--predictions", str(tmp_path / "test.csv"), "--draws", "3"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == "--draws needs --coarse (the test split scored without the refiner)"
