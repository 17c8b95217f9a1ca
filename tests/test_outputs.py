"""Per-image outputs: the landmark JSON (pixels, and mm where the spacing is known) and validation overlays."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from official_layouts import dicom_image
from scripts.anatomies import Anatomy, AnatomySet
from scripts.datalist import inference_items
from scripts.image_io import read_gray_image
from scripts.outputs import SaveLandmarksd, SaveOverlayd

KNEE = AnatomySet([Anatomy("knee", ("a", "b"), (32, 32), (0.2, 0.5))])
HIP = AnatomySet([Anatomy("knee", ("a", "b"), (32, 32), None)])


@pytest.fixture()
def image(tmp_path) -> str:
    path = str(tmp_path / "scan.v2.nii.png")
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)).save(path)  # 30 wide, 40 high
    return path


def _save(item: dict, anatomies: AnatomySet, out: str) -> dict:
    pred = {"image_original": read_gray_image(item["image"]), "pred_landmarks": np.array([[3.0, 4.0], [10.0, 20.0]]),
            "pred_confidence": np.array([0.9, 0.1])}  # fmt: skip
    SaveLandmarksd(anatomies=anatomies, output_dir=out, overlay=False)({**item, **pred})
    return json.load(open(os.path.join(out, "scan.v2.nii.json")))


def test_json_has_mm_from_the_datalist_item(image, tmp_path):
    (item,) = inference_items(KNEE, [image], "knee")  # the anatomy's spacing, resolved by the datalist
    item["spacing"] = [torch.tensor(0.2), torch.tensor(0.5)]  # as a batch of one decollates it
    result = _save(item, KNEE, str(tmp_path / "out"))
    assert result["spacing"] == pytest.approx([0.2, 0.5]) and result["spacing_source"] == "anatomy"
    assert result["image_size"] == {"width": 30, "height": 40}
    b = result["landmarks"][1]
    assert (b["name"], b["x"], b["y"]) == ("b", 10.0, 20.0) and b["confidence"] == pytest.approx(0.1)
    assert b["x_mm"] == pytest.approx(2.0) and b["y_mm"] == pytest.approx(10.0)


def test_json_says_spacing_null_and_no_mm_in_pixels(image, tmp_path):
    (item,) = inference_items(HIP, [image], "knee")
    result = _save(item, HIP, str(tmp_path / "out"))
    assert result["spacing"] is None and result["spacing_source"] == "none (pixels)"
    assert "x_mm" not in result["landmarks"][0] and result["landmarks"][0]["x"] == 3.0


def test_an_item_from_elsewhere_gets_its_own_then_the_headers_then_the_anatomys_spacing(image, tmp_path):
    own = _save({"image": image, "anatomy": "knee", "spacing": [0.1, 0.1]}, KNEE, str(tmp_path / "a"))
    assert own["spacing_source"] == "datalist item" and own["landmarks"][1]["y_mm"] == pytest.approx(2.0)
    anatomy = _save({"image": image, "anatomy": "knee"}, KNEE, str(tmp_path / "b"))
    assert anatomy["spacing_source"] == "anatomy" and anatomy["landmarks"][1]["x_mm"] == pytest.approx(2.0)
    dicom = str(tmp_path / "scan.v2.nii.dcm")
    dicom_image(dicom, (30, 40), "DX", spacing=(0.3, 0.4))
    pred = {"image_original": read_gray_image(dicom), "pred_landmarks": np.array([[3.0, 4.0], [10.0, 20.0]])}
    SaveLandmarksd(anatomies=HIP, output_dir=str(tmp_path / "c"), overlay=False)({"anatomy": "knee", **pred})
    header = json.load(open(tmp_path / "c" / "scan.v2.nii.json"))
    assert header["spacing"] == pytest.approx([0.3, 0.4]) and header["spacing_source"] == "DICOM ImagerPixelSpacing"
    assert header["landmarks"][0]["y_mm"] == pytest.approx(1.6)


def _validation_item(path: str, anatomy: str = "knee") -> dict:
    network = MetaTensor(torch.zeros(1, 64, 80), meta={"filename_or_obj": path})
    return {"image": network, "anatomy": anatomy, "pred_landmarks": np.array([[899.5, 99.5]]),
            "pred_landmarks_grid": np.array([[32.0, 40.0]]), "pred_confidence": torch.tensor([0.9]),
            "landmarks_original": torch.tensor([[499.5, 99.5]])}  # fmt: skip


def test_validation_overlay_on_the_original_image_scaled_down(tmp_path):
    path = str(tmp_path / "big.png")
    Image.fromarray(np.full((200, 1000), 90, np.uint8)).save(path)  # 1000 wide, 200 high
    out = str(tmp_path / "val")
    SaveOverlayd(keys="pred_landmarks", output_dir=out, original=True, true_key="landmarks_original", max_size=500)(
        _validation_item(path)
    )
    img = Image.open(os.path.join(out, "knee_big.png")).convert("RGB")
    assert img.size == (500, 100)
    assert img.getpixel((449, 49))[1] > 200 and img.getpixel((449, 49))[0] < 60  # green, at (899.5 + 0.5) / 2 - 0.5
    assert img.getpixel((350, 49)) == (0, 200, 255)  # the line to the annotation at x 249.5


def test_validation_overlay_reads_the_path_key_and_keeps_at_most_max_per_anatomy(tmp_path, image):
    out = str(tmp_path / "val")
    grid = SaveOverlayd(output_dir=out, max_per_anatomy=1)
    grid(_validation_item(image))
    grid(_validation_item(str(tmp_path / "other.png")))  # a second knee: not drawn
    assert os.listdir(out) == ["knee_scan.v2.nii.png"] and Image.open(os.path.join(out, os.listdir(out)[0])).size == (64, 80)
    by_key = SaveOverlayd(keys="pred_landmarks", output_dir=out, original=True, path_key="image_path")
    by_key({**_validation_item("nowhere.png", "hip"), "image_path": image})
    assert Image.open(os.path.join(out, "hip_scan.v2.nii.png")).size == (30, 40)
    with pytest.raises(FileNotFoundError, match=r"SaveOverlayd: original image 'nowhere\.png'"):
        SaveOverlayd(keys="pred_landmarks", output_dir=out, original=True)(_validation_item("nowhere.png"))
