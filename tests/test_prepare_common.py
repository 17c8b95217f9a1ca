"""What every preparation shares: the merge into an existing datalist, the atomic write, splits, checks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from scripts.datalist import load_datalist
from scripts.datasets.common import PreparedAnatomy, PrepareError, checked_landmarks, split_ids, write_datalist


@pytest.fixture()
def image(tmp_path):
    path = str(tmp_path / "img" / "a.png")
    os.makedirs(os.path.dirname(path))
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(path)  # 30 wide, 40 high
    return path


def _anatomy(name: str, image: str, extra_split: str | None = None) -> PreparedAnatomy:
    item = {"image": image, "anatomy": name, "landmarks": [[1.0, 2.0], [3.0, 4.0]]}
    splits = {"training": [item], "validation": [], "test": []}
    if extra_split:
        splits[extra_split] = []
    return PreparedAnatomy(name, {"landmarks": ["a", "b"], "size": [32, 32]}, splits, {"source": "test"})


def test_merge_adds_and_replaces_anatomies_keeping_the_others(tmp_path, image):
    out = str(tmp_path / "out")
    write_datalist(out, _anatomy("head", image))
    other = str(tmp_path / "b.png")
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(other)
    write_datalist(out, _anatomy("hand", other))
    replaced = _anatomy("head", image)
    replaced.spec["size"] = [64, 48]
    path = write_datalist(out, replaced)
    data = json.load(open(path))
    assert list(data["anatomies"]) == ["head", "hand"] and data["anatomies"]["head"]["size"] == [64, 48]
    assert [it["anatomy"] for it in data["training"]] == ["hand", "head"]
    assert set(data["prepared"]) == {"head", "hand"}
    assert len(load_datalist(path)) == 2


def test_images_inside_out_are_relative_others_absolute(tmp_path, image):
    inside = write_datalist(str(tmp_path), _anatomy("knee", image))
    assert json.load(open(inside))["training"][0]["image"] == os.path.join("img", "a.png")
    outside = write_datalist(str(tmp_path / "elsewhere"), _anatomy("knee", image))
    assert json.load(open(outside))["training"][0]["image"] == image


def test_a_broken_existing_datalist_is_not_overwritten(tmp_path, image):
    (tmp_path / "datalist.json").write_text("{broken")
    with pytest.raises(PrepareError, match="not valid JSON"):
        write_datalist(str(tmp_path), _anatomy("knee", image))
    assert (tmp_path / "datalist.json").read_text() == "{broken"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize(
    "points, message",
    [
        ([[1, 2]], r"2 coordinates, expected 4"),
        ([[1, 2], [np.nan, 3]], r"landmark\(s\) \[2\] have only one coordinate"),
        ([[1, 2], [np.inf, 3]], r"landmark coordinates must be finite"),
        ([[1, 2], [30.2, 3]], r"landmark 2 at \(30\.20, 3\.00\) is outside the 30x40 image"),
    ],
)
def test_landmark_checks_name_the_place(image, points, message):
    with pytest.raises(PrepareError, match=r"labels\.csv, line 3: " + message):
        checked_landmarks(points, 2, image, "labels.csv, line 3")


def test_missing_image_is_named(tmp_path):
    with pytest.raises(PrepareError, match=r"labels\.csv, line 3: image file .*nope\.png: does not exist"):
        checked_landmarks([[1, 2]], 1, str(tmp_path / "nope.png"), "labels.csv, line 3")


def test_split_ids_is_a_seeded_partition():
    ids = [f"{i:03d}" for i in range(20)]
    a = split_ids(ids, 0.1, 0.25, seed=3)
    assert [len(a[s]) for s in ("training", "validation", "test")] == [13, 2, 5]
    assert sorted(sum(a.values(), [])) == ids and a == split_ids(ids, 0.1, 0.25, seed=3)
    assert split_ids(["x"], 0.1, 0.5, seed=0) == {"training": ["x"], "validation": [], "test": []}
