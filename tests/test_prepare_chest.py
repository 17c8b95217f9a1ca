"""The chest reader (Shenzhen): normal cases only, ratios to pixels per axis, skipped and bad label files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import shared_data
from official_layouts import shenzhen
from scripts.datasets.common import PrepareError
from scripts.datasets.shenzhen import prepare_shenzhen, read_shenzhen_labels

SIZES = {"0001_0": (48, 40), "0002_0": (40, 56), "0003_0": (44, 44), "0004_0": (40, 40), "0005_0": (40, 40), "0006_1": (40, 40)}


@pytest.fixture()
def chest(tmp_path):
    images, labels = str(tmp_path / "CXR_png"), str(tmp_path / "landmarks")
    return images, labels, shenzhen(images, labels, SIZES, unlabelled=("0005_0",))


def test_normal_cases_with_labels_in_pixels_per_axis(chest):
    images, labels, ratios = chest
    prepared = prepare_shenzhen(images, labels, val_fraction=0.25, test_fraction=0.25)
    assert sum(prepared.counts().values()) == 5 - 1  # 0006_1 is abnormal (it has a label file), 0005_0 unlabelled
    assert prepared.report["skipped"] == {"normal images without a label file": 1, "abnormal cases (_1), not used": 1}
    items = {it["id"]: it for split in prepared.splits.values() for it in split}
    np.testing.assert_allclose(items["CHNCXR_0002_0"]["landmarks"], ratios["0002_0"] * [40, 56], atol=1e-3)
    assert "spacing" not in prepared.spec and "spacing" not in items["CHNCXR_0001_0"]


def test_label_file_without_its_image_is_an_error(chest):
    images, labels, _ = chest
    os.remove(os.path.join(images, "CHNCXR_0003_0.png"))
    with pytest.raises(PrepareError, match=r"CHNCXR_0003_0\.txt: a label file for image CHNCXR_0003_0, which is not under"):
        prepare_shenzhen(images, labels)


@pytest.mark.parametrize(
    "text, message",
    [
        ("5\n", r"line 1: expected the landmark count 6, got '5'"),
        ("6\n0.1 0.2\n", r"1 landmark lines after the count, expected 6"),
        ("6\n" + "0.1 0.2\n" * 5 + "0.1,0.2\n", r"line 7: expected 'x y'"),
        ("6\n" + "0.1 0.2\n" * 5 + "0.1 1.2\n", r"line 7: ratios must lie in \[0, 1\]"),
    ],
)
def test_bad_label_files_name_file_and_line(chest, text, message):
    images, labels, _ = chest
    with open(os.path.join(labels, "CHNCXR_0004_0.txt"), "w") as f:
        f.write(text)
    with pytest.raises(PrepareError, match=r"CHNCXR_0004_0\.txt.*" + message):
        prepare_shenzhen(images, labels)


def test_the_shared_chest_labels_parse():
    found = read_shenzhen_labels(shared_data("chest-labels"))
    assert len(found) == 279
    ratios = np.stack([r for r, _ in found.values()])
    assert ratios.shape == (279, 6, 2) and ratios.min() >= 0 and ratios.max() <= 1
