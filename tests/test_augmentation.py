"""The robust augmentation: every spatial transform moves the landmarks with the image (round trip within 0.5 px).

The test image has one channel per landmark holding a Gaussian peak at it, so after any transform the bundle's
sub-pixel decoder finds each landmark in the transformed image; mapped back through the image's affine to the
original pixels (as evaluation maps predictions back) it must land on the original point, and the points that
``ApplyTransformToPointsd`` moved (the training targets) must land on the peaks.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ApplyTransformToPointsd, Compose

from conftest import BUNDLE
from scripts.augmentation import InvertIntensity, RandCropResized, RandFramingAffined, RandInvertIntensityd, choose_augmentation
from scripts.heatmaps import LandmarkHeatmap, decode_heatmaps, grid_to_original
from scripts.landmark_transforms import PointsInImaged

POINTS = np.array([[30.0, 40.0], [70.5, 45.2], [50.0, 90.0], [40.3, 70.7]])
SIZE = (100, 120)


def _peaks_image() -> MetaTensor:
    affine = torch.diag(torch.tensor([0.7, 0.7, 1.0], dtype=torch.float64))  # a spacing that is not 1
    img = LandmarkHeatmap(3.0)(torch.as_tensor(POINTS), SIZE)
    return MetaTensor(img, affine=affine.clone(), meta={"original_affine": affine.clone()})


def _round_trip(transform, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, MetaTensor]:
    """Apply ``transform`` (landmarks tied to the image first); return moved points, found peaks, peaks mapped back."""
    pipeline = Compose(
        [
            PointsInImaged(keys="landmarks", image_key="image"),
            transform,
            ApplyTransformToPointsd(keys="landmarks", refer_keys="image", invert_affine=True),
        ]
    )
    pipeline.set_random_state(seed)
    out = pipeline({"image": _peaks_image(), "landmarks": POINTS})
    img = out["image"]
    values = img.as_tensor()
    values = (values - values.min()) / (values.max() - values.min())  # undo any intensity normalisation
    found, _ = decode_heatmaps(values, "gaussian", 9)
    back = grid_to_original(found, img.affine, img.meta["original_affine"]).numpy()
    return out["landmarks"].as_tensor()[0].numpy(), found.numpy(), back, img


def _inside(points: np.ndarray, shape) -> np.ndarray:
    """Landmarks whose whole peak (3 sigma) lies inside the image: those a decoder can find exactly."""
    return ((points >= 9) & (points <= np.asarray(shape) - 10)).all(1)


SPATIAL = {
    "framing": lambda: RandFramingAffined(keys="image", prob=1.0, rotate_degrees=15, zoom_range=(0.7, 1.35), translate_fraction=0.1),
    "crop_resize": lambda: RandCropResized(keys="image", prob=1.0, min_fraction=0.7),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(SPATIAL))
def test_spatial_transforms_move_landmarks_with_the_image(name, seed):
    moved, found, back, img = _round_trip(SPATIAL[name](), seed)
    assert tuple(img.shape[1:]) == SIZE  # the network size is kept
    inside = _inside(moved, SIZE)
    assert inside.sum() >= 2
    assert np.abs(moved[inside] - found[inside]).max() < 0.1  # the training targets sit on the image's peaks
    assert np.abs(back[inside] - POINTS[inside]).max() < 0.5  # round trip in original coordinates
    assert np.abs(moved - POINTS).max() > 1.0  # it really moved


def test_framing_zoom_is_isotropic_and_within_its_range():
    t = RandFramingAffined(keys="image", prob=1.0, rotate_degrees=0.0, zoom_range=(0.7, 1.35), translate_fraction=0.0)
    zooms = []
    for seed in range(20):
        t.set_random_state(seed)
        img = t({"image": _peaks_image()})["image"]
        m = (torch.linalg.inv(img.affine) @ img.meta["original_affine"])[:2, :2].numpy()  # original -> new pixels
        assert abs(m[0, 1]) < 1e-9 and abs(m[1, 0]) < 1e-9 and m[0, 0] == pytest.approx(m[1, 1])
        zooms.append(m[0, 0])
    assert 0.7 - 1e-6 <= min(zooms) < 0.85 and 1.2 < max(zooms) <= 1.35 + 1e-6


def _robust_transforms(spatial: float, intensity: float) -> Compose:
    """train.yaml's random transforms with every spatial and every intensity transform at the given probability."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", "train.yaml")])
    parser.update({"augmentation": "robust", "framing_prob": spatial, "crop_prob": spatial, **{k: intensity for k in (
        "invert_prob", "gamma_prob", "histogram_shift_prob", "blur_prob", "noise_prob")}})  # fmt: skip
    return Compose(parser.get_parsed_content("train#random_transforms"))


def test_the_robust_config_moves_landmarks_with_the_image(monkeypatch):
    """train.yaml's ``augment_robust`` list, every spatial transform on: the training pipeline's round trip."""
    monkeypatch.chdir(BUNDLE)
    robust = _robust_transforms(spatial=1.0, intensity=0.0)
    for seed in range(3):
        moved, found, back, _ = _round_trip(robust, seed)
        inside = _inside(moved, SIZE)
        assert inside.sum() >= 2
        assert np.abs(moved[inside] - found[inside]).max() < 0.1
        assert np.abs(back[inside] - POINTS[inside]).max() < 0.5


def test_robust_intensity_transforms_keep_the_geometry_and_z_score(monkeypatch):
    monkeypatch.chdir(BUNDLE)
    robust = _robust_transforms(spatial=0.0, intensity=1.0)
    robust.set_random_state(0)
    out = robust({"image": _peaks_image()})["image"]
    assert out.shape == (len(POINTS), *SIZE) and torch.equal(out.affine, _peaks_image().affine)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-4) and float(out.std()) == pytest.approx(1.0, abs=1e-2)


def test_augmentation_is_chosen_by_name(monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(BUNDLE)
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", "train.yaml")])
    # the default: the robust list with only the framing lever on (the others measured worse at the CPU budget)
    assert parser["augmentation"] == "robust" and parser["framing_prob"] > 0
    assert all(parser[k] == 0 for k in ("crop_prob", "gamma_prob", "histogram_shift_prob", "blur_prob", "noise_prob", "invert_prob"))
    robust = parser.get_parsed_content("train#random_transforms", lazy=False)
    assert "RandFramingAffined" in [type(t).__name__ for t in robust]
    parser["augmentation"] = "paper"  # the paper's recipe stays available, for its figures
    paper = parser.get_parsed_content("train#random_transforms", lazy=False)
    assert [type(t).__name__ for t in paper] == ["RandRotated", "RandAffined"] and len(robust) > len(paper)
    with pytest.raises(ValueError, match="unknown augmentation 'papr'"):
        choose_augmentation("papr", paper=[], robust=[])


def test_inverted_polarity_keeps_the_range_and_the_affine():
    img = _peaks_image()
    out = InvertIntensity()(img)
    assert float(out.max()) == pytest.approx(float(img.max())) and float(out.min()) == pytest.approx(float(img.min()))
    assert torch.allclose(out + img, img.max() + img.min())
    t = RandInvertIntensityd(keys="image", prob=0.0)
    assert t({"image": img})["image"] is img


def test_heatmap_target_of_a_landmark_outside_the_image_is_zero():
    """Augmentation moves landmarks out of view: their target says 'not here' (zeros), not a peak on the border."""
    hm = LandmarkHeatmap(2.0)(torch.tensor([[-1.5, 10.0], [-0.4, 10.0], [10.0, 16.2], [10.0, 15.4], [float("nan")] * 2]), (16, 16))
    assert float(hm[0].abs().max()) == 0.0 and float(hm[2].abs().max()) == 0.0
    assert float(hm[1].max()) == pytest.approx(1.0) and float(hm[3].max()) == pytest.approx(1.0)  # on the border pixel
    assert torch.isnan(hm[4]).all()
