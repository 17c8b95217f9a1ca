"""Landmarks must follow the image through resize, rotation and translation (the training pipeline)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ApplyTransformToPointsd, Compose, RandAffined, RandRotated
from scipy import ndimage

from scripts.landmark_transforms import PointsInImaged, ResizeToSized, ToGray2D, resize_image


def _dots(w: int, h: int, pts: np.ndarray) -> MetaTensor:
    """An image (1, W, H) with a small Gaussian blob at each (x, y)."""
    xx, yy = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")
    img = np.zeros((w, h), np.float32)
    for x, y in pts:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
    affine = torch.diag(torch.tensor([0.7, 0.7, 1.0], dtype=torch.float64))  # a spacing that is not 1
    return MetaTensor(torch.as_tensor(img)[None], affine=affine)


def _blob_centres(img: torch.Tensor, n: int) -> np.ndarray:
    a = np.asarray(img[0])
    labels, count = ndimage.label(a > 0.3 * a.max())
    assert count == n, f"expected {n} separate blobs, found {count}"
    return np.array(ndimage.center_of_mass(a, labels, range(1, n + 1)))


@pytest.mark.parametrize("seed,mode", [(0, "area"), (1, "area"), (2, "bilinear")])
def test_points_follow_resize_rotation_and_translation(seed, mode):
    pts = np.array([[40.0, 50.0], [150.0, 60.0], [90.0, 170.0], [60.0, 120.0]])
    data = {"image": _dots(200, 220, pts), "landmarks": pts, "size": [96, 112]}
    pipeline = Compose(
        [
            PointsInImaged(keys="landmarks", image_key="image"),
            ResizeToSized(keys="image", size_key="size", mode=mode),
            RandRotated(keys="image", range_x=np.deg2rad(20), prob=1.0, padding_mode="zeros"),
            RandAffined(keys="image", translate_range=(8, 8), prob=1.0, padding_mode="zeros"),
            ApplyTransformToPointsd(keys="landmarks", refer_keys="image", invert_affine=True),
        ]
    )
    pipeline.set_random_state(seed)
    out = pipeline(data)
    moved = out["landmarks"].as_tensor()[0].numpy()
    found = _blob_centres(out["image"], len(pts))
    # match each moved point to its nearest blob
    dist = np.linalg.norm(moved[:, None] - found[None], axis=2).min(1)
    assert dist.max() < 1.0, dist
    assert not np.allclose(moved, pts * np.array([96 / 200, 112 / 220]), atol=1.0)  # it really moved


@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_resize_by_a_large_odd_factor_keeps_the_points(mode):
    """An X-ray shrunk ~7.4 x (not a whole factor): each blob lands within 0.5 px of its point mapped by the affine."""
    pts = np.array([[100.0, 130.0], [560.0, 300.0], [333.3, 655.5]])
    image = _dots(710, 830, pts)
    image = MetaTensor(torch.as_tensor(ndimage.gaussian_filter(np.asarray(image[0]), 12.0))[None], affine=image.affine)
    out = resize_image(image, [96, 112], mode)
    assert out.shape == (1, 96, 112)
    # the points through the resized image's affine: original world coordinates back to the new voxels
    world = (image.affine.numpy() @ np.c_[pts, np.ones(len(pts))].T).T
    moved = (np.linalg.inv(out.affine.numpy()) @ world.T).T[:, :2]
    found = _blob_centres(out, len(pts))
    dist = np.linalg.norm(moved[:, None] - found[None], axis=2).min(1)  # each point to its nearest blob
    assert dist.max() < 0.5, dist


def test_resize_area_grows_bilinear_and_refuses_unknown_modes():
    image = MetaTensor(torch.arange(12.0).reshape(1, 3, 4), affine=torch.eye(3, dtype=torch.float64))
    up = resize_image(image, [9, 12], "area")  # growing: bilinear, not repeated pixels
    assert len(torch.unique(up)) > 12
    with pytest.raises(ValueError, match="resize_mode"):
        resize_image(image, [2, 2], "cubic")
    with pytest.raises(ValueError, match="resize_mode"):
        ResizeToSized(keys="image", mode="nearest")


def test_to_gray_2d_averages_colour_and_drops_singleton_slices():
    rgb = MetaTensor(torch.stack([torch.ones(8, 6), 2 * torch.ones(8, 6), 3 * torch.ones(8, 6)]))
    assert ToGray2D()(rgb).shape == (1, 8, 6) and float(ToGray2D()(rgb).mean()) == pytest.approx(2.0)
    one_slice = MetaTensor(torch.zeros(1, 8, 6, 1), affine=torch.eye(4, dtype=torch.float64))
    out = ToGray2D()(one_slice)
    assert out.shape == (1, 8, 6) and out.affine.shape == (3, 3)
    with pytest.raises(ValueError, match="2D"):
        ToGray2D()(MetaTensor(torch.zeros(1, 8, 6, 3)))
