"""The hand reader: atlas images in any ITK format + all.csv, the wrist-width mm scale from original pixels."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import shared_data
from official_layouts import HAND_SIZE, hand_atlas, write_image
from scripts.datasets.common import PrepareError
from scripts.datasets.hand_atlas import prepare_hand


@pytest.fixture()
def atlas(tmp_path):
    root = str(tmp_path / "atlas")
    os.makedirs(root)
    return root, hand_atlas(root, ["3001", "3002", "3003", "3004", "3005", "3006"], rows_without_image=("4001", "4002"))


def test_items_only_for_images_with_rows_and_the_wrist_scale(atlas):
    root, points = atlas
    write_image(os.path.join(root, "9999.jpg"), HAND_SIZE, 0)  # an image without a row
    prepared = prepare_hand(root, val_fraction=0.2, test_fraction=0.3)
    assert prepared.counts() == {"training": 3, "validation": 1, "test": 2}
    assert prepared.report["skipped"] == {"rows without an image": 2, "images without a row": 1}
    items = {it["id"]: it for split in prepared.splits.values() for it in split}
    for k, key in enumerate(sorted(points)):
        assert items[key]["spacing"] == pytest.approx([50 / (3 * (k + 10))] * 2)  # original pixels, both axes
        np.testing.assert_allclose(items[key]["landmarks"], points[key], atol=1e-3)
    assert prepared.report["mm_per_pixel"] == pytest.approx([50 / 45, 50 / 30], abs=1e-5)
    assert "spacing" not in prepared.spec and prepared.spec["sdr_radii"] == [2.0, 4.0, 10.0]


def test_bad_rows_name_the_line(atlas):
    root, _ = atlas
    path = os.path.join(root, "all.csv")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(PrepareError, match=r"all\.csv, line 9: duplicate image id '3002' \(also at .*line 2\)"):
        prepare_hand(root)
    open(path, "w").write("\n".join(lines[:2] + [lines[2] + ",7"]) + "\n")
    with pytest.raises(PrepareError, match=r"all\.csv, line 3: 76 values, expected 75"):
        prepare_hand(root)
    cells = lines[2].split(",")
    open(path, "w").write("\n".join(lines[:2] + [",".join(cells[:1] + ["nan"] + cells[2:])]) + "\n")
    with pytest.raises(PrepareError, match=r"line 3: value 1 is 'nan'"):
        prepare_hand(root)


def test_landmark_outside_the_image(atlas):
    root, _ = atlas
    path = os.path.join(root, "all.csv")
    lines = open(path).read().splitlines()
    cells = lines[0].split(",")
    cells[19] = "500"  # landmark 10's x (cells: id, x1, y1, ...)
    open(path, "w").write("\n".join([",".join(cells)] + lines[1:]) + "\n")
    with pytest.raises(PrepareError, match=r"line 1: landmark 10 at \(500\.00, .*outside the 60x90 image .*3001\.jpg"):
        prepare_hand(root)


def test_shared_hand_data_mm_per_pixel_from_the_original_images():
    raw = shared_data("hand")
    prepared = prepare_hand(raw)
    assert sum(prepared.counts().values()) == 7
    assert prepared.report["skipped"] == {"rows without an image": 903, "images without a row": 0}
    low, high = prepared.report["mm_per_pixel"]
    assert 0.102 <= low < high <= 0.1405  # the .mha headers say 0.108-0.165: they are not used
    item = next(it for split in prepared.splits.values() for it in split)
    pts = np.asarray(item["landmarks"])
    assert item["spacing"][0] == pytest.approx(50 / np.hypot(*(pts[0] - pts[4])), rel=1e-4)
