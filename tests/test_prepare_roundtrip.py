"""A round trip: data sets in their owners' layouts -> `python -m scripts.prepare` (merged into one datalist)
-> one short training epoch -> evaluation, which reports each anatomy in its own unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLE
from official_layouts import dicom_image, hand_atlas, isbi2015_official, pelvis_csv, shenzhen
from scripts.prepare import main as prepare_main
from test_workflows import EVALUATE, TRAIN, bundle


def prepare_cli(*args: str) -> str:
    """``python -m scripts.prepare ARGS`` from the bundle folder, as the README runs it; returns its output."""
    proc = subprocess.run([sys.executable, "-m", "scripts.prepare", *args], cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    out = str(tmp_path_factory.mktemp("prepared"))
    isbi2015_official(str(raw / "head"), {"TrainingData": [1, 2, 3, 4, 5], "Test1Data": [151, 152]})
    os.makedirs(raw / "hand")
    hand_atlas(str(raw / "hand"), [str(3000 + k) for k in range(7)], rows_without_image=("4000",))
    sizes = {f"{k:04d}_0": (48 + 8 * (k % 2), 40) for k in range(1, 8)}
    shenzhen(str(raw / "chest"), str(raw / "chest-labels"), sizes)
    pelvis_csv(str(raw / "pelvis"), n=7)
    knee = raw / "knee"
    for k in range(7):
        dicom_image(str(knee / f"k{k}.dcm"), (40, 48), "DX", spacing=(0.3, 0.2))
    (knee / "knee.csv").write_text("image,top_x,top_y,bottom_x,bottom_y\n" + "".join(f"k{k}.dcm,{10 + k},5,20,{40 - k}\n" for k in range(7)))
    common = ["--out", out, "--size", "32", "32", "--val-fraction", "0.2"]
    log = prepare_cli("isbi2015", "--raw", str(raw / "head"), *common, "--protocol", "challenge")
    reports = [  # the others in this process: a subprocess costs seconds of imports each
        prepare_main(["hand", "--raw", str(raw / "hand"), *common, "--test-fraction", "0.3"]),
        prepare_main(["shenzhen", "--raw", str(raw / "chest"), "--labels", str(raw / "chest-labels"), *common, "--test-fraction", "0.3"]),
        prepare_main(["generic", "--raw", str(raw / "pelvis" / "pelvis.csv"), "--anatomy", "pelvis", *common, "--test-fraction", "0.3"]),
        prepare_main(["generic", "--raw", str(knee / "knee.csv"), "--anatomy", "knee", *common, "--test-fraction", "0.3"]),
    ]
    return out, log, reports


def test_one_datalist_for_five_anatomies(prepared):
    out, log, reports = prepared
    data = json.load(open(os.path.join(out, "datalist.json")))
    assert list(data["anatomies"]) == ["head", "hand", "chest", "pelvis", "knee"]
    counts = {a: sum(it["anatomy"] == a for s in ("training", "validation", "test") for it in data[s]) for a in data["anatomies"]}
    assert counts == {"head": 7, "hand": 7, "chest": 7, "pelvis": 7, "knee": 7}
    assert len(data["test1"]) == 2 and "test2" not in data and "test2" in log
    assert reports[0]["skipped"]["rows without an image"] == 1 and reports[3]["unit"] == "mm"


def test_train_one_epoch_then_evaluate_in_each_unit(prepared, tmp_path):
    out = prepared[0]
    run = str(tmp_path / "run")
    common = ["--dataset_dir", out, "--output_dir", run, "--batch_size", "2"]
    bundle("run", "training", "--config_file", TRAIN, "--max_epochs", "1", "--val_interval", "1", *common,
           "--recognizer_steps", "30", "--log_mlflow_model", "false")  # the units are what this test is about
    bundle("run", "evaluating", "--config_file", EVALUATE, *common, "--ckpt_path", os.path.join(run, "models", "model.pt"))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    units = {a: metrics[a]["unit"] for a in ("head", "hand", "chest", "pelvis", "knee")}
    assert units == {"head": "mm", "hand": "mm", "chest": "px", "pelvis": "px", "knee": "mm"}
    assert all(np.isfinite(metrics[a]["MRE"]) for a in units)
    assert set(metrics["hand"]["SDR"]) == {"2", "4", "10"} and set(metrics["chest"]["SDR"]) == {"3", "6", "9"}
