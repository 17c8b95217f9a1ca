"""The head reader (ISBI 2015) in both layouts, its splits, its label choices, and the CLI's merge."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import shared_data
from official_layouts import isbi2015_official
from scripts.datasets.common import PrepareError
from scripts.datasets.isbi2015 import ISBI2015_SPACING, prepare_isbi2015
from scripts.prepare import main as prepare_main

OFFICIAL = {"TrainingData": list(range(1, 11)), "Test1Data": [151, 152, 153]}


@pytest.fixture()
def official(tmp_path):
    root = str(tmp_path / "ISBI2015")
    labels = isbi2015_official(root, OFFICIAL, extra_labels=(301, 302))
    return root, labels


def test_official_layout_counts_and_mean_label(official):
    root, labels = official
    prepared = prepare_isbi2015(root, size=(64, 80), protocol="challenge", val_fraction=0.2)
    assert prepared.counts() == {"training": 8, "validation": 2, "test": 3, "test1": 3}
    assert prepared.report["absent"] == {"test2": "2 labelled images absent"}
    assert prepared.spec["spacing"] == [ISBI2015_SPACING] * 2 and len(prepared.spec["landmarks"]) == 19
    item = prepared.splits["test1"][0]
    assert item["id"] == "151" and item["image"].endswith(os.path.join("Test1Data", "151.bmp"))
    mean = (labels["senior"][151] + labels["junior"][151]) / 2
    np.testing.assert_allclose(item["landmarks"], mean, atol=1e-3)
    senior = prepare_isbi2015(root, label="senior", val_fraction=0.2)
    np.testing.assert_allclose(senior.splits["test"][0]["landmarks"], labels["senior"][151], atol=1e-3)
    assert "test1" not in senior.splits  # the paper's protocol: one test split


def test_validation_draw_is_fixed_by_the_seed(official):
    root, _ = official
    ids = lambda seed: [it["id"] for it in prepare_isbi2015(root, val_fraction=0.3, seed=seed).splits["validation"]]
    assert ids(0) == ids(0) and len(ids(0)) == 3 and ids(0) != ids(1)


def test_missing_image_in_a_present_split_names_the_label_file(official):
    root, _ = official
    os.remove(os.path.join(root, "RawImage", "Test1Data", "152.bmp"))
    with pytest.raises(PrepareError, match=r"400_senior.152\.txt: a label for image 152"):
        prepare_isbi2015(root)


def test_bad_label_line_names_file_and_line(official):
    root, _ = official
    path = os.path.join(root, "AnnotationsByMD", "400_junior", "003.txt")
    lines = open(path).read().splitlines()
    lines[4] = "12.5;7"
    open(path, "w").write("\n".join(lines))
    with pytest.raises(PrepareError, match=r"003\.txt, line 5: expected 'x,y'"):
        prepare_isbi2015(root)


def test_csv_layout_in_mm_with_a_bad_row(tmp_path, official):
    root, labels = official
    csv_root = tmp_path / "csv"
    (csv_root / "annotations").mkdir(parents=True)
    os.symlink(os.path.join(root, "RawImage", "TrainingData"), str(csv_root / "images"))
    for doctor in ("senior", "junior"):
        rows = [f"{i:03d}," + ",".join(f"{v * ISBI2015_SPACING:.4f}" for v in labels[doctor][i].ravel()) for i in range(1, 11)]
        (csv_root / "annotations" / f"all_{doctor}.csv").write_text("\n".join(rows) + "\n")
    prepared = prepare_isbi2015(str(csv_root), val_fraction=0)
    assert prepared.counts() == {"training": 10, "validation": 0, "test": 0}
    np.testing.assert_allclose(prepared.splits["training"][0]["landmarks"], (labels["senior"][1] + labels["junior"][1]) / 2, atol=1e-3)
    with open(csv_root / "annotations" / "all_junior.csv", "a") as f:
        f.write("011,1,2,3\n")
    with pytest.raises(PrepareError, match=r"all_junior\.csv, line 11: 4 values, expected 39"):
        prepare_isbi2015(str(csv_root))


def test_cli_on_the_shared_head_data_both_protocols(tmp_path, capsys):
    raw = shared_data("head")
    out = str(tmp_path / "out")
    prepare_main(["isbi2015", "--raw", raw, "--out", out, "--protocol", "challenge", "--size", "128", "160"])
    assert "'test2': '100 labelled images absent'" in capsys.readouterr().out
    data = json.load(open(os.path.join(out, "datalist.json")))
    counts = {k: len(v) for k, v in data.items() if isinstance(v, list)}
    assert counts == {"training": 135, "validation": 15, "test": 150, "test1": 150}
    assert data["anatomies"]["head"]["size"] == [128, 160] and data["anatomies"]["head"]["spacing"] == [0.1, 0.1]
    senior = np.loadtxt(os.path.join(raw, "annotations", "all_senior.csv"), delimiter=",", max_rows=1)[1:]
    junior = np.loadtxt(os.path.join(raw, "annotations", "all_junior.csv"), delimiter=",", max_rows=1)[1:]
    first = next(it for it in data["training"] + data["validation"] if it["id"] == "001")
    np.testing.assert_allclose(np.ravel(first["landmarks"]), (senior + junior) / 2 / 0.1, atol=1e-3)
    paper = str(tmp_path / "paper")
    prepare_main(["isbi2015", "--raw", raw, "--out", paper])
    data = json.load(open(os.path.join(paper, "datalist.json")))
    assert {k: len(v) for k, v in data.items() if isinstance(v, list)} == {"training": 135, "validation": 15, "test": 150}
