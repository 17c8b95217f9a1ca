"""The robustness benchmark's shifts move the annotations with the image; predictions map back to the original."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.heatmaps import LandmarkHeatmap, decode_heatmaps, grid_to_original
from scripts.shifts import COMPOUND, SHIFTS, ImageShiftd, apply_shift

POINTS = np.array([[30.0, 15.0], [70.5, 45.2], [50.0, 90.0], [40.3, 70.7]])  # the first in the top fifth
SIZE = (100, 120)


def _image() -> MetaTensor:
    affine = torch.eye(3, dtype=torch.float64)
    img = LandmarkHeatmap(3.0)(torch.as_tensor(POINTS), SIZE) * 200.0  # raw intensities, one peak per channel
    return MetaTensor(img, affine=affine.clone(), meta={"original_affine": affine.clone(), "filename_or_obj": "a.png"})


@pytest.mark.parametrize("name", ["mirrored", "zoom_out_70", "zoom_in_130", "rotated_10", "crop_top_fifth"])
def test_spatial_shifts_map_back_to_the_original_annotations(name):
    shift = ImageShiftd(name=name)
    out = shift({"image": _image(), "landmarks": POINTS})["image"]
    found, _ = decode_heatmaps(out.as_tensor() / 200.0, "gaussian", 9)
    back = grid_to_original(found, out.affine, out.meta["original_affine"]).numpy()
    visible = shift.visible["a.png"]
    margin = ((found.numpy() >= 9) & (found.numpy() <= np.asarray(out.shape[1:]) - 10)).all(1)
    assert (visible & margin).sum() >= 2
    assert np.abs(back[visible & margin] - POINTS[visible & margin]).max() < 0.5
    if name == "crop_top_fifth":
        assert visible.tolist() == [False, True, True, True] and out.shape[1:] == (100, 96)
    if name == "mirrored":
        assert visible.all() and np.abs(found.numpy()[:, 0] - (SIZE[0] - 1 - POINTS[:, 0])).max() < 0.05


@pytest.mark.parametrize("name", ["gamma_0.6", "gamma_1.6", "noise", "none"])
def test_intensity_shifts_keep_the_geometry(name):
    shift = ImageShiftd(name=name)
    img = _image()
    out = shift({"image": img, "landmarks": POINTS})["image"]
    assert out.shape == img.shape and torch.equal(out.affine, img.affine) and shift.visible["a.png"].all()
    if name != "none":
        assert not torch.allclose(out.as_tensor(), img.as_tensor())
    again = ImageShiftd(name=name)({"image": _image(), "landmarks": POINTS})["image"]
    assert torch.equal(out.as_tensor(), again.as_tensor())  # seeded: every run sees the same shift


def test_a_compound_shift_is_its_parts_in_turn_and_maps_back():
    parts = COMPOUND["other_device"]
    out = ImageShiftd(name="other_device")({"image": _image(), "landmarks": POINTS})["image"]
    step = _image()
    for part in parts:
        step = apply_shift(step, part, zlib.crc32(b"a.png"))  # ImageShiftd's seed: 0 + the file's CRC
    assert torch.equal(out.as_tensor(), step.as_tensor()) and torch.equal(out.affine, step.affine)
    geometry = _image()  # its spatial parts alone, noise-free, decode back to the original annotations
    for part in (p for p in parts if p.startswith(("zoom_", "rotated_"))):
        geometry = apply_shift(geometry, part)
    assert not torch.equal(geometry.affine, _image().affine) and torch.equal(geometry.affine, out.affine)
    found, _ = decode_heatmaps(geometry.as_tensor() / 200.0, "gaussian", 9)
    back = grid_to_original(found, geometry.affine, geometry.meta["original_affine"]).numpy()
    assert np.abs(back - POINTS).max() < 0.5


def test_every_listed_shift_is_known():
    assert len(SHIFTS) == 10
    with pytest.raises(ValueError, match="unknown shift"):
        ImageShiftd(name="sideways")
