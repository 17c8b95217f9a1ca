"""The refinement stage: patches follow the landmark (round trip within 0.5 px, mirrored too), the training target
sits on the landmark in its own channel, the loss prefers the right peak, refined points map back to the original
image, the patches follow the anatomy's apparent scale, shifted patches read each landmark's own channel, and a bad
refiner file fails with its name."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from scripts.anatomies import Anatomy, AnatomySet
from scripts.checkpoints import CheckpointError
from scripts.refinement import (
    AccumulateLandmarkShapes,
    LandmarkRefiner,
    PatchHeatmapLoss,
    RandLandmarkPatchesd,
    RefineLandmarksd,
    landmark_patches,
    shape_scale,
)


def blob_image(w: int, h: int, points: np.ndarray, sigma: float = 1.5) -> torch.Tensor:
    """A ``(1, W, H)`` image with a Gaussian blob at each ``(x, y)`` point (x along the first axis)."""
    x = torch.arange(w, dtype=torch.float32)[:, None]
    y = torch.arange(h, dtype=torch.float32)[None, :]
    img = torch.zeros(w, h)
    for px, py in points:
        img += torch.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2))
    return img[None]


def centroid(patch: torch.Tensor) -> tuple[float, float]:
    """The intensity-weighted centre ``(i, j)`` of the brightest part of a patch ``(P, P)``."""
    p = patch - patch.min()
    p = torch.where(p > 0.5 * p.max(), p, torch.zeros_like(p))
    i = torch.arange(p.shape[0], dtype=torch.float32)
    return float((p.sum(1) * i).sum() / p.sum()), float((p.sum(0) * i[: p.shape[1]]).sum() / p.sum())


@pytest.mark.parametrize("step, flip", [(1.0, False), (1.25, False), (0.8, True)])
def test_a_patch_maps_back_to_its_landmark_within_half_a_pixel(step, flip):
    point = np.array([[41.3, 57.8]])
    image = blob_image(96, 120, point, sigma=2.0)
    centre = torch.tensor([[36.6, 61.2]])  # an off-centre start, as a coarse prediction is
    size = 32
    patch = landmark_patches(image, centre, size, step, flip=flip)[0, 0]
    u, v = centroid(patch)
    sign = -1.0 if flip else 1.0
    back = centre[0] + torch.tensor([sign * (u - (size - 1) / 2), v - (size - 1) / 2]) * step
    assert np.linalg.norm(back.numpy() - point[0]) < 0.5
    assert abs(float(patch.mean())) < 1e-4 and abs(float(patch.std()) - 1) < 1e-3  # z-scored


def test_training_patches_put_the_target_on_the_landmark_in_its_own_channel():
    points = np.array([[30.2, 40.7], [70.5, 90.1], [50.0, 20.4]], dtype=np.float32)
    counts = [2, 3]  # a first anatomy of 2 landmarks, then this one (domain 1) of 3
    t = RandLandmarkPatchesd(keys="image", landmark_counts=counts, patch_size=32, num_samples=12, jitter=4.0, zoom=(0.8, 1.2), sigma=1.5)
    t.set_random_state(3)
    samples = t({"image": blob_image(100, 120, points), "landmarks": points, "domain": 1})
    assert len(samples) == 12
    for s in samples:
        label = s["label"]
        assert label.shape == (5, 32, 32) and s["image"].shape == (1, 32, 32)
        channel = int(label.flatten(1).sum(1).argmax())
        assert channel in (2, 3, 4) and float(label[:2].abs().sum()) == 0.0  # the other anatomy's channels are empty
        assert float(label.sum()) == pytest.approx(float(label[channel].sum()))
        # the blob in the patch is where the label peaks (blobs of other landmarks lie outside the patch here)
        ti, tj = centroid(label[channel])
        pi, pj = centroid(s["image"][0])
        assert abs(ti - pi) < 0.5 and abs(tj - pj) < 0.5


def test_unannotated_landmarks_are_never_drawn_and_an_image_without_any_is_refused():
    points = np.array([[30.0, 40.0], [np.nan, np.nan]], dtype=np.float32)
    t = RandLandmarkPatchesd(keys="image", landmark_counts=[2], patch_size=16, num_samples=20)
    samples = t({"image": blob_image(64, 64, points[:1]), "landmarks": points, "domain": 0})
    assert all(int(s["label"].flatten(1).sum(1).argmax()) == 0 for s in samples)
    with pytest.raises(ValueError, match="no annotated landmark"):
        t({"image": torch.zeros(1, 64, 64), "landmarks": np.full((2, 2), np.nan, np.float32), "domain": 0})


def test_the_loss_is_lower_for_the_right_peak_and_reads_only_the_landmark_channel():
    size = 16
    label = torch.zeros(2, 3, size, size)
    label[0, 1, 5, 9] = 1.0
    label[1, 2, 11, 3] = 1.0
    right = torch.zeros(2, 3, size, size)
    right[0, 1, 5, 9] = right[1, 2, 11, 3] = 10.0
    wrong = torch.zeros(2, 3, size, size)
    wrong[0, 1, 12, 2] = wrong[1, 2, 2, 12] = 10.0
    loss = PatchHeatmapLoss()
    assert float(loss(right, label)) < float(loss(wrong, label))
    logits = torch.zeros(2, 3, size, size, requires_grad=True)
    loss(logits, label).backward()
    assert float(logits.grad[0, [0, 2]].abs().sum()) == 0.0 and float(logits.grad[0, 1].abs().sum()) > 0


class PeakPerChannel(torch.nn.Module):
    """Stands in for the refiner's network: logits peaked at one patch pixel per channel (another pixel in each, so
    a patch read in another landmark's channel moves its point by that landmark's offset)."""

    def __init__(self, peaks: list[tuple[int, int]], size: int) -> None:
        super().__init__()
        self.peaks, self.size = peaks, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], len(self.peaks), self.size, self.size)
        for c, (i, j) in enumerate(self.peaks):
            out[:, c, i, j] = 30.0
        return out


def peak_at(channels: int, i: int, j: int, size: int) -> PeakPerChannel:
    """Logits peaked at the same patch pixel for every landmark."""
    return PeakPerChannel([(i, j)] * channels, size)


@pytest.mark.parametrize("flip", [False, True])
def test_refine_moves_each_point_to_the_peak_in_image_coordinates(flip):
    refiner = LandmarkRefiner([2], factor=2, patch_size=16, window=3)
    refiner.net = peak_at(2, 10, 4, 16)  # 2.5 right and 3.5 up of the patch centre (7.5, 7.5)
    points = torch.tensor([[20.0, 30.0], [float("nan"), float("nan")]])
    out, conf, scale = refiner.refine(torch.rand(1, 64, 64), points, domain=0, flip=flip)
    dx = -2.5 if flip else 2.5
    assert torch.allclose(out[0], torch.tensor([20.0 + dx, 30.0 - 3.5]), atol=1e-4)
    assert torch.isnan(out[1]).all() and conf[0] > 0.99 and torch.isnan(conf[1])
    assert scale == 1.0  # no training layout recorded: the grid's own scale


class BrightestPixel(torch.nn.Module):
    """Stands in for a trained refiner: every channel's logits are the patch itself, so each patch's answer is the
    image's blob wherever the patch sits around it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (4.0 * x).expand(-1, self.channels, -1, -1)


@pytest.mark.parametrize("flip", [False, True])
def test_nine_shifted_patches_find_each_landmark_in_its_own_channel(flip):
    """With ``shifts`` each landmark is looked at from nine patches up to 2 x 1.5 x factor pixels off it: they find
    its blob (mirrored too), and each patch is read in its own landmark's channel, in chunks too."""
    blobs = np.array([[20.3, 31.6], [41.7, 18.2], [30.5, 45.4]])
    image = blob_image(64, 64, blobs, sigma=1.5)
    refiner = LandmarkRefiner([3], factor=2, patch_size=16, window=3)
    refiner.net = BrightestPixel(3)
    start = torch.tensor(blobs, dtype=torch.float32) + torch.tensor([[1.8, -2.2], [-2.4, 1.1], [0.6, 2.7]])
    nine, conf, _ = refiner.refine(image, start, domain=0, flip=flip, shifts=1.5)
    assert (nine - torch.tensor(blobs, dtype=torch.float32)).norm(dim=1).max() < 0.5
    assert bool((conf > 0).all())
    refiner.net = PeakPerChannel([(10, 4), (7, 7), (2, 12)], 16)  # offsets (2.5, -3.5), (-0.5, -0.5), (-5.5, 4.5)
    refiner.chunk = 4  # the 27 patches in 7 forward passes, the last one short
    moved = refiner.refine(image, start, domain=0, flip=flip, shifts=1.5)[0] - start
    expected = torch.tensor([[2.5, -3.5], [-0.5, -0.5], [-5.5, 4.5]])
    if flip:
        expected[:, 0] = -expected[:, 0]
    assert torch.allclose(moved, expected, atol=1e-4)


LAYOUT = torch.tensor([[10.0, 10.0], [30.0, 12.0], [22.0, 35.0], [8.0, 28.0], [18.0, 20.0]])


def _rotated(points: torch.Tensor, degrees: float, scale: float, mirror: bool = False) -> torch.Tensor:
    t = np.deg2rad(degrees)
    r = torch.tensor([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]], dtype=torch.float32)
    p = (points - points.mean(0)) @ r.T * scale
    if mirror:
        p[:, 0] = -p[:, 0]
    return p + torch.tensor([100.0, 80.0])


@pytest.mark.parametrize("degrees, scale, mirror", [(0.0, 0.7, False), (10.0, 1.3, False), (-25.0, 1.0, True)])
def test_the_scale_of_a_layout_ignores_position_rotation_mirroring_and_a_misplaced_minority(degrees, scale, mirror):
    points = _rotated(LAYOUT, degrees, scale, mirror)
    assert shape_scale(points, LAYOUT) == pytest.approx(scale, rel=1e-4)
    wrong = points.clone()
    wrong[1] = torch.tensor([400.0, -300.0])  # one landmark of five found far away
    assert shape_scale(wrong, LAYOUT) == pytest.approx(scale, rel=0.2)
    missing = points.clone()
    missing[:3] = float("nan")  # two left: too few to tell
    assert shape_scale(missing, LAYOUT) == 1.0
    assert shape_scale(points * 10, LAYOUT) == 2.0  # clipped to the limits


def test_the_training_layout_is_recorded_per_landmark_and_saved_with_the_weights():
    counts = [2, 3]
    refiner = LandmarkRefiner(counts, factor=2, patch_size=16)
    assert torch.isnan(refiner.mean_shape(1)).all()  # nothing recorded yet
    points = np.array([[30.0, 40.0], [70.0, 90.0], [np.nan, np.nan]], dtype=np.float32)
    t = RandLandmarkPatchesd(keys="image", landmark_counts=counts, patch_size=16, num_samples=4)
    samples = t({"image": blob_image(100, 120, points[:2]), "landmarks": points, "domain": 1})
    batch = {"shape": torch.stack([s["shape"] for s in samples])}

    class Engine:  # what AccumulateLandmarkShapes reads of ignite's engine
        class state:
            pass

    Engine.state.batch = batch
    handler = AccumulateLandmarkShapes(refiner)
    handler(Engine)
    moved = batch["shape"].clone()
    moved[:, 2:4] += 10.0  # a second image, its landmarks 10 px further on
    Engine.state.batch = [{"shape": m} for m in moved]  # as MONAI's workflows leave it: decollated
    handler(Engine)
    mean = refiner.mean_shape(1)
    assert torch.allclose(mean[:2], torch.tensor([[35.0, 45.0], [75.0, 95.0]], dtype=torch.float64))
    assert torch.isnan(mean[2]).all() and torch.isnan(refiner.mean_shape(0)).all()
    again = LandmarkRefiner.from_state_dict(refiner.state_dict())
    assert torch.allclose(again.mean_shape(1)[:2], mean[:2])
    # a refiner saved before layouts were recorded loads, and refines at the grid's own scale
    old = {k: v for k, v in refiner.state_dict().items() if not k.startswith("shape_")}
    assert torch.isnan(LandmarkRefiner.from_state_dict(old).mean_shape(1)).all()


@pytest.mark.parametrize("adapt", [True, False])
def test_patches_are_sampled_at_the_apparent_scale_of_the_anatomy(adapt):
    """An anatomy shown at twice the recorded size is looked at with a step of 2: the same patch pixel (the
    network's peak) lies twice as far from the centre in the image."""
    refiner = LandmarkRefiner([5], factor=2, patch_size=16, window=3)
    refiner.accumulate_shapes(LAYOUT[None])
    refiner.net = peak_at(5, 10, 4, 16)  # 2.5 right and 3.5 up of the patch centre
    points = _rotated(LAYOUT, 0.0, 2.0)
    out, _, scale = refiner.refine(torch.rand(1, 200, 200), points, domain=0, adapt_scale=adapt)
    expected = 2.0 if adapt else 1.0
    assert scale == pytest.approx(expected, rel=1e-4)
    assert torch.allclose(out - points, torch.tensor([2.5, -3.5]) * expected, atol=1e-3)


def test_a_refined_point_stays_in_the_image_where_the_patch_reaches_beyond_it():
    refiner = LandmarkRefiner([1], factor=2, patch_size=16, window=3)
    refiner.net = peak_at(1, 0, 8, 16)  # the network's peak 7.5 pixels left of the centre: outside the image
    out, _, _ = refiner.refine(torch.rand(1, 40, 40), torch.tensor([[2.0, 20.0]]), domain=0)
    assert -0.5 <= float(out[0, 0]) <= 39.5 and -0.5 <= float(out[0, 1]) <= 39.5


def _anatomies() -> AnatomySet:
    return AnatomySet([Anatomy("hand", ("a", "b"), (32, 48))])


def test_refined_points_map_back_to_the_original_image(tmp_path):
    """Through the real resize and affines: a peak at the patch centre returns the input points unchanged."""
    from monai.data import MetaTensor

    path = str(tmp_path / "refiner.pt")
    refiner = LandmarkRefiner([2], factor=2, patch_size=16, window=3)
    torch.save({"refiner": refiner.state_dict()}, path)
    transform = RefineLandmarksd("pred_landmarks", path, _anatomies())
    assert transform.active
    transform.refiner.net = peak_at(2, 7, 7, 16)  # near the centre (7.5, 7.5): a shift of -0.5 patch px each way
    original = MetaTensor(torch.rand(1, 96, 144), affine=torch.diag(torch.tensor([0.2, 0.2, 1.0, 1.0], dtype=torch.float64)))
    pts = np.array([[40.0, 70.0], [10.0, 100.0]], dtype=np.float32)
    out = transform({"pred_landmarks": pts, "image_original": original, "domain": 0})
    # the refinement grid is 64 x 96 for 96 x 144 original pixels: half a grid pixel is 0.75 original pixels
    np.testing.assert_allclose(out["pred_landmarks"], pts - 0.75, atol=0.05)
    np.testing.assert_allclose(out["pred_landmarks_coarse"], pts)


def test_points_are_read_in_the_files_grid_when_the_image_was_transformed_after_reading(tmp_path):
    """A mirrored copy (its affine flipped, as MONAI's Flip leaves it) refines the file's points where they are."""
    from monai.data import MetaTensor
    from monai.transforms import Flip

    path = str(tmp_path / "refiner.pt")
    torch.save({"refiner": LandmarkRefiner([2], factor=2, patch_size=16, window=3).state_dict()}, path)
    transform = RefineLandmarksd("pred_landmarks", path, _anatomies())
    transform.refiner.net = peak_at(2, 7, 7, 16)
    read = MetaTensor(torch.rand(1, 96, 144), affine=torch.eye(4, dtype=torch.float64))
    read.meta["original_affine"] = read.affine.clone()
    mirrored = Flip(spatial_axis=0)(read)
    assert not torch.allclose(mirrored.affine, read.affine)
    pts = np.array([[40.0, 70.0], [10.0, 100.0]], dtype=np.float32)
    out = transform({"pred_landmarks": pts, "image_original": mirrored, "domain": 0, "pred_mirrored": True})
    # the patch is sampled mirrored from a grid whose x runs against the file's: its -0.5 is -0.75 file pixels in
    # x too (reading the points in the mirrored copy's own grid instead gives +0.75)
    np.testing.assert_allclose(out["pred_landmarks"], pts - 0.75, atol=0.05)


@pytest.mark.parametrize("shifts", [-1, "far", float("nan")])
def test_a_bad_shift_distance_is_refused_with_the_option_name(shifts):
    with pytest.raises(ValueError, match="refine_shifts"):
        RefineLandmarksd("pred_landmarks", None, _anatomies(), shifts=shifts)


def test_without_a_refiner_items_pass_unchanged_and_a_bad_file_names_itself(tmp_path, caplog):
    transform = RefineLandmarksd("pred_landmarks", str(tmp_path / "none.pt"), _anatomies())
    d = {"pred_landmarks": np.zeros((2, 2), np.float32), "domain": 0}
    assert not transform.active and transform(d) == d
    path = str(tmp_path / "refiner_ok.pt")
    torch.save({"refiner": LandmarkRefiner([2], patch_size=16).state_dict()}, path)
    assert RefineLandmarksd("pred_landmarks", path, _anatomies()).active
    # `--refine false` on the command line arrives as a string
    assert not any(RefineLandmarksd("pred_landmarks", path, _anatomies(), enabled=v).active for v in ("false", False, "0"))
    truncated = tmp_path / "refiner.pt"
    torch.save({"refiner": LandmarkRefiner([2], patch_size=16).state_dict()}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="refiner.pt"):
        RefineLandmarksd("pred_landmarks", str(truncated), _anatomies())
    other = tmp_path / "other.pt"
    torch.save({"refiner": LandmarkRefiner([5], patch_size=16).state_dict()}, str(other))
    with caplog.at_level(logging.WARNING, logger="scripts.refinement"):
        stale = RefineLandmarksd("pred_landmarks", str(other), _anatomies())
    assert not stale.active and stale(d) == d  # a refiner of another model: the decoded points, not refined
    assert "other.pt: trained for landmark counts [5], the model has [2]" in caplog.text
