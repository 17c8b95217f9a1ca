import numpy as np
import pytest
import torch

from scripts.heatmaps import DECODERS, LandmarkHeatmap, decode_heatmaps, grid_to_original


def test_heatmap_peak_is_at_the_landmark_and_is_one():
    pts = torch.tensor([[10.0, 20.0], [30.4, 5.6], [0.0, 47.0]])
    hm = LandmarkHeatmap(sigma=3.0)(pts, (40, 48))
    assert hm.shape == (3, 40, 48)
    for k, (x, y) in enumerate(pts.tolist()):
        flat = int(hm[k].argmax())
        assert (flat // 48, flat % 48) == (round(x), round(y))
        assert float(hm[k].max()) == pytest.approx(1.0)


def test_heatmap_is_not_rounded_to_whole_pixels():
    a = LandmarkHeatmap(3.0)(torch.tensor([[10.0, 10.0]]), (24, 24))
    b = LandmarkHeatmap(3.0)(torch.tensor([[10.3, 10.0]]), (24, 24))
    assert not torch.allclose(a, b)
    assert float(b[0, 11, 10]) > float(a[0, 11, 10])  # mass moved towards x = 11


def test_missing_and_outside_landmarks():
    hm = LandmarkHeatmap(2.0)(torch.tensor([[float("nan"), float("nan")], [-50.0, 3.0]]), (16, 16))
    assert torch.isnan(hm[0]).all()
    assert float(hm[1].abs().max()) == 0.0


def _random_centres(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(8, size - 8, (n, 2))


def test_subpixel_decoding_beats_argmax_on_known_centres():
    centres = _random_centres(200, 64)
    hm = LandmarkHeatmap(3.0)(torch.as_tensor(centres, dtype=torch.float32), (64, 64))
    errors = {}
    for method in DECODERS:
        pts, conf = decode_heatmaps(hm, method)
        errors[method] = float(np.linalg.norm(pts.numpy() - centres, axis=1).mean())
        assert conf.shape == (200,)
    assert errors["gaussian"] < 0.1, errors
    assert errors["argmax"] > 0.3, errors  # ~0.38 px: the mean distance of a uniform offset to the pixel centre
    assert errors["local_mean"] < errors["argmax"]


def test_gaussian_fit_recovers_elongated_rotated_peaks_and_falls_back_when_degenerate():
    xx, yy = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    cx, cy, t = 15.3, 22.8, 0.6  # a peak 2 x 4 px wide, rotated by 0.6 rad: not separable along the axes
    u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
    v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
    rotated = 0.3 * torch.exp(-(u**2) / (2 * 2.0**2) - v**2 / (2 * 4.0**2))  # a low peak: scale does not matter
    flat = torch.zeros(32, 40)
    flat[10:13, 20:23] = 0.5  # a plateau: log-quadratic fit is degenerate -> local mean, the plateau's centre
    edge = LandmarkHeatmap(3.0)(torch.tensor([[0.3, 39.0]]), (32, 40))[0]  # half the window outside the image
    pts, conf = decode_heatmaps(torch.stack([rotated, flat, edge]), "gaussian", window=7)
    assert pts[0].tolist() == pytest.approx([cx, cy], abs=1e-3)
    assert pts[1].tolist() == pytest.approx([11.0, 21.0], abs=1e-6)
    assert pts[2].tolist() == pytest.approx([0.3, 39.0], abs=1e-3)
    assert conf.tolist() == pytest.approx([float(rotated.max()), 0.5, 1.0], abs=1e-6)


def test_decoding_window_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(torch.zeros(1, 8, 8), "gaussian", window=4)


def test_decoding_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown decoding"):
        decode_heatmaps(torch.zeros(1, 8, 8), "magic")


def test_grid_to_original_inverts_an_anisotropic_resize():
    from monai.data import MetaTensor
    from monai.transforms import Resize

    img = MetaTensor(torch.zeros(1, 300, 120), affine=torch.diag(torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)))
    small = Resize((60, 48), mode="bilinear")(img)
    # the original pixel (149.5, 59.5) is the centre of the image; so is the resized (29.5, 23.5)
    back = grid_to_original(torch.tensor([[29.5, 23.5], [0.0, 0.0]]), small.affine, img.affine)
    assert back[0].tolist() == pytest.approx([149.5, 59.5], abs=1e-4)
    # resized pixel 0 covers original pixels 0..4 in x (factor 5) and 0..2.5 in y (factor 2.5)
    assert back[1].tolist() == pytest.approx([2.0, 0.75], abs=1e-4)


@pytest.mark.parametrize("method", sorted(DECODERS))
def test_decoded_points_stay_inside_the_grid(method):
    # a trained network's peak can sit on the border with its centre fitted beyond it (seen in a short run)
    xx, yy = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    beyond = torch.exp(-((xx - 50.5) ** 2 + (yy - 70.0) ** 2) / (2 * 3.0**2))  # centre outside the grid
    noisy = beyond + 0.05 * torch.rand(48, 64, generator=torch.Generator().manual_seed(0))
    pts, _ = decode_heatmaps(torch.stack([beyond, noisy]), method, window=9)
    assert (pts >= 0).all() and (pts[:, 0] <= 47).all() and (pts[:, 1] <= 63).all()
