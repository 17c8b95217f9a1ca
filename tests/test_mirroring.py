"""Mirrored images: landmarks come back in the given image's coordinates, with the right identities, flagged as mirrored.

A synthetic network stands in for a trained one: it finds each landmark (a dot of its own brightness) only when
the image faces the way it was "trained" (an orientation bar on the left); on a mirrored image it answers with low
confidence. The path under test is the bundle's: resize to the network grid, :class:`MirrorInferer`,
:class:`SelectOrientationd`, decoding and mapping back to the original image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from monai.transforms import Compose, NormalizeIntensityd

from scripts.anatomies import Anatomy, AnatomySet
from scripts.heatmaps import DecodeLandmarksd, LandmarkHeatmap
from scripts.landmark_transforms import ResizeToSized
from scripts.mirroring import MirrorInferer, SelectOrientationd
from scripts.review import review_fields

W0, H0 = 90, 110  # original image
NET = (48, 64)  # network grid
POINTS = np.array([[20.0, 30.0], [60.0, 25.0], [45.0, 80.0], [70.0, 95.0]])  # dots, left of centre or right
LEVELS = torch.tensor([0.4, 0.55, 0.7, 0.85])  # each landmark's brightness
ANATOMIES = AnatomySet([Anatomy("head", ("a", "b", "c", "d"), NET)])


def _original(mirrored: bool) -> MetaTensor:
    """The image a user gives: dots plus a bar on the left; mirrored = the pixels flipped (a new file, plain affine)."""
    img = torch.zeros(W0, H0)
    xx, yy = torch.meshgrid(torch.arange(W0.__float__()), torch.arange(H0.__float__()), indexing="ij")
    for (x, y), level in zip(POINTS, LEVELS):
        img = torch.maximum(img, level * (((xx - x) ** 2 + (yy - y) ** 2) <= 9).float())
    img[2:8, 10:100] = 1.0  # the orientation bar
    if mirrored:
        img = img.flip(0)
    affine = torch.eye(3, dtype=torch.float64)
    return MetaTensor(img[None], affine=affine, meta={"original_affine": affine.clone(), "filename_or_obj": "x.png"})


class OrientedDotFinder(nn.Module):
    """Heatmap k peaks at the dot of brightness LEVELS[k] (confidence 0.9) when the bar is on the left; otherwise
    at the wrong place, with confidence 0.05."""

    def forward(self, x: torch.Tensor, domain=None) -> torch.Tensor:
        b, _, w, h = x.shape
        out = torch.zeros(b, len(LEVELS), w, h)
        for i in range(b):
            img = x[i, 0].numpy()
            img = (img - img.min()) / (img.max() - img.min())
            left = img[: w // 8].mean() > img[-(w // 8) :].mean()
            labels, count = ndimage.label(img > 0.15)
            for blob in range(1, count + 1):
                inside = labels == blob
                if inside.sum() > 40:  # the bar
                    continue
                k = int(np.argmin(np.abs(LEVELS.numpy() - img[inside].max())))
                centre = torch.tensor(ndimage.center_of_mass(img * inside))
                if not left:  # facing the other way: a weak answer in the wrong place, as a trained network gives
                    centre[0] = w - 1 - centre[0]
                out[i, k] = (0.9 if left else 0.05) * LandmarkHeatmap(1.5)(centre[None], (w, h))[0]
        return out


def _predict(images: list[MetaTensor], mode: str = "auto", gate: float = 0.3) -> list[dict]:
    prepare = Compose([ResizeToSized(keys="image", size_key="size"), NormalizeIntensityd(keys="image")])
    items = [prepare({"image": img, "size": list(NET), "anatomy": "head"}) for img in images]
    batch = torch.stack([it["image"].as_tensor() for it in items])
    inferer = MirrorInferer(SimpleInferer(), mode=mode, gate=gate)
    pred = inferer(batch, OrientedDotFinder(), domain=torch.zeros(len(items), dtype=torch.long))
    post = Compose([SelectOrientationd(keys="pred", anatomies=ANATOMIES), DecodeLandmarksd(keys="pred", image_key="image")])
    return [post({**it, "pred": p}) for it, p in zip(items, pred)]


def test_a_mirrored_image_gives_the_landmarks_mapped_through_the_flip_with_their_identities():
    given, mirrored = _predict([_original(False), _original(True)])
    assert not given["pred_mirrored"] and mirrored["pred_mirrored"]
    expected_given = POINTS
    expected_mirrored = np.stack([W0 - 1 - POINTS[:, 0], POINTS[:, 1]], 1)  # the same landmarks, in the flipped file
    # within a grid pixel (1.9 px of the original here): the dots are found at their pixels' centroid
    assert np.abs(given["pred_landmarks"] - expected_given).max() < 1.5
    assert np.abs(mirrored["pred_landmarks"] - expected_mirrored).max() < 1.5
    # and the two answers agree through the flip, landmark by landmark (same identities)
    through_flip = np.stack([W0 - 1 - mirrored["pred_landmarks"][:, 0], mirrored["pred_landmarks"][:, 1]], 1)
    assert np.abs(through_flip - given["pred_landmarks"]).max() < 0.05
    assert mirrored["pred_confidence"].min() > 0.8  # the confident orientation's confidences
    conf = mirrored["pred_orientation_confidence"]
    assert conf[0] < 0.1 and conf[1] > 0.8


def test_the_mirror_is_run_only_where_the_image_looks_doubtful():
    given, mirrored = _predict([_original(False), _original(True)], gate=0.3)
    assert np.isnan(given["pred_orientation_confidence"][1])  # confident as given: no second run
    assert np.isfinite(mirrored["pred_orientation_confidence"][1])


def test_mirroring_off_keeps_the_given_orientation():
    (mirrored,) = _predict([_original(True)], mode="off")
    assert not mirrored["pred_mirrored"] and mirrored["pred_confidence"].max() < 0.1
    expected = np.stack([W0 - 1 - POINTS[:, 0], POINTS[:, 1]], 1)
    assert np.abs(mirrored["pred_landmarks"] - expected).max() > 10  # the landmarks are not found


def test_the_json_says_the_image_was_mirrored():
    (mirrored,) = _predict([_original(True)])
    marks = [{"name": n} for n in "abcd"]
    fields = review_fields({**mirrored, "pred_review": np.array([False, True, False, False]), "review_threshold": 0.3}, marks)
    assert fields["mirrored"] is True and fields["orientation_confidence"]["mirrored"] > 0.8
    assert [m["review"] for m in marks] == [False, True, False, False] and fields["landmarks_to_review"] == ["b"]


def test_select_orientation_refuses_a_wrong_channel_count():
    with pytest.raises(ValueError, match="3 heatmap channels for 4 landmarks"):
        SelectOrientationd(keys="pred", anatomies=ANATOMIES)({"pred": torch.zeros(3, 8, 8), "anatomy": "head"})
    with pytest.raises(ValueError, match="unknown mode"):
        MirrorInferer(mode="sometimes")
