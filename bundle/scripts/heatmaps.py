"""Landmark heatmaps: sub-pixel Gaussian targets, decoding with sub-pixel refinement, confidence.

Targets are made here, not with MONAI's ``GenerateHeatmap``: that one rounds each centre to the nearest
pixel before blurring, which biases targets by up to 0.5 px (one of the faults of the GU2Net authors'
code we must not repeat). Here each channel is ``exp(-|p - c|^2 / (2 sigma^2))`` at the exact centre,
scaled to peak 1, computed separably (cheap even for many landmarks on a full-size input).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = [
    "LandmarkHeatmap",
    "LandmarkHeatmapd",
    "DECODERS",
    "decode_heatmaps",
    "grid_to_original",
    "DecodeLandmarksd",
]


class LandmarkHeatmap(Transform):
    """Gaussian heatmaps ``(N, *spatial)`` for ``(N, D)`` points given in voxel (array-axis) order.

    A landmark that is missing (NaN) gets a NaN channel, which the loss skips; one outside the image (more than
    half a pixel beyond the border pixels' centres) gets an all-zero channel: it is absent from this view (e.g.
    shifted or cropped out by augmentation), and the network learns to answer it with a low confidence rather
    than a full peak on the border.
    """

    def __init__(self, sigma: float = 3.0) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}.")
        self.sigma = float(sigma)

    def __call__(self, points: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
        pts = torch.as_tensor(points, dtype=torch.float32).reshape(-1, len(spatial_shape))
        out = None
        for axis, n in enumerate(spatial_shape):
            coords = torch.arange(n, dtype=torch.float32)
            g = torch.exp(-((coords[None, :] - pts[:, axis : axis + 1]) ** 2) / (2 * self.sigma**2))
            shape = [pts.shape[0]] + [1] * len(spatial_shape)
            shape[axis + 1] = n
            g = g.reshape(shape)
            out = g if out is None else out * g
        assert out is not None
        peak = out.flatten(1).amax(1).reshape([-1] + [1] * len(spatial_shape))
        out = torch.where(peak > 1e-6, out / peak.clamp_min(1e-12), torch.zeros_like(out))
        size = torch.tensor(spatial_shape, dtype=torch.float32)
        outside = ((pts < -0.5) | (pts > size - 0.5)).any(1)
        out[outside] = 0.0
        missing = torch.isnan(pts).any(1)
        out[missing] = float("nan")
        return out


class LandmarkHeatmapd(MapTransform):
    """Dictionary wrapper of :class:`LandmarkHeatmap`; the heatmap takes the shape of ``ref_key``'s image."""

    def __init__(
        self,
        keys: KeysCollection,
        heatmap_key: str = "label",
        ref_key: str = "image",
        sigma: float = 3.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.heatmap_key = heatmap_key
        self.ref_key = ref_key
        self.generator = LandmarkHeatmap(sigma)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            ref = d[self.ref_key]
            pts = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
            d[self.heatmap_key] = self.generator(pts, tuple(ref.shape[1:]))
        return d


def _argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer peak ``(C, 2)`` in array-axis order, and the peak values ``(C,)``."""
    c, w, h = heatmaps.shape
    flat = heatmaps.reshape(c, -1)
    value, idx = flat.max(1)
    return torch.stack([idx // h, idx % h], 1), value


def _window(heatmaps: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(C, k, k)`` patches around each channel's peak (zero outside the image), the peaks, the offsets.

    Returns the patches (float64), the integer peaks ``(C, 2)`` and the ``(k, k, 2)`` offsets of the patch
    pixels from the peak, so that a patch pixel lies at ``peak + offset``.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the decoding window must be a positive odd number of pixels, got {window}.")
    peak, _ = _argmax(heatmaps)
    r = window // 2
    padded = torch.nn.functional.pad(heatmaps.double(), (r, r, r, r))
    d = torch.arange(-r, r + 1)
    ix = (peak[:, 0, None, None] + r + d[None, :, None]).expand(-1, window, window)
    iy = (peak[:, 1, None, None] + r + d[None, None, :]).expand(-1, window, window)
    patch = padded[torch.arange(len(peak))[:, None, None], ix, iy]
    offsets = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1).double()
    return patch, peak, offsets


def _decode_argmax(heatmaps: torch.Tensor, window: int) -> torch.Tensor:
    """The peak pixel: the paper's decoding, at best within half a pixel of the true centre."""
    return _argmax(heatmaps)[0].float()


def _local_mean(patch: torch.Tensor, peak: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    weights = patch.clamp_min(0)
    total = weights.sum((1, 2))
    shift = (weights[..., None] * offsets).sum((1, 2)) / total.clamp_min(1e-300)[:, None]
    return torch.where(total[:, None] > 0, peak.double() + shift, peak.double())


def _decode_local_mean(heatmaps: torch.Tensor, window: int) -> torch.Tensor:
    """Heatmap-weighted mean of the coordinates in a ``window x window`` square around the peak.

    Robust to any peak shape, but biased towards the peak pixel when the window cuts the peak's tails.
    """
    return _local_mean(*_window(heatmaps, window)).float()


def _decode_gaussian(heatmaps: torch.Tensor, window: int) -> torch.Tensor:
    """Fit a 2D Gaussian to the ``window x window`` square around the peak; its centre is the landmark.

    A Gaussian's logarithm is a quadratic ``a + b.x + x^T Q x``, so the fit is a linear least-squares fit
    of ``log h`` (Guo's method, weighted by ``h^2`` because the logarithm magnifies the noise of small
    values); it is exact for Gaussian peaks of any width, elongation or rotation. Where the fit is
    degenerate (too few positive values, a quadratic that is not a peak, or a centre outside the window)
    the landmark falls back to the local mean.
    """
    patch, peak, offsets = _window(heatmaps, window)
    c = patch.shape[0]
    x, y = offsets[..., 0].reshape(-1), offsets[..., 1].reshape(-1)
    design = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], 1)  # (k*k, 6)
    values = patch.reshape(c, -1)
    positive = values > 1e-12
    logs = torch.log(torch.where(positive, values, torch.ones_like(values)))
    weights = torch.where(positive, values, torch.zeros_like(values)) ** 2
    weights = weights / weights.amax(1, keepdim=True).clamp_min(1e-300)
    normal = torch.einsum("pi,cp,pj->cij", design, weights, design)
    rhs = torch.einsum("pi,cp,cp->ci", design, weights, logs)
    theta, info = torch.linalg.solve_ex(normal, rhs)
    hessian = torch.stack([2 * theta[:, 3], theta[:, 4], theta[:, 4], 2 * theta[:, 5]], 1).reshape(c, 2, 2)
    shift, info2 = torch.linalg.solve_ex(hessian, -theta[:, 1:3])
    det = hessian[:, 0, 0] * hessian[:, 1, 1] - hessian[:, 0, 1] ** 2
    ok = (
        (info == 0)
        & (info2 == 0)
        & (positive.sum(1) >= 6)
        & (hessian[:, 0, 0] < 0)
        & (det > 0)
        & torch.isfinite(shift).all(1)
        & (shift.abs() <= window // 2).all(1)
    )
    fitted = peak.double() + torch.nan_to_num(shift)
    return torch.where(ok[:, None], fitted, _local_mean(patch, peak, offsets)).float()


DECODERS = {"argmax": _decode_argmax, "local_mean": _decode_local_mean, "gaussian": _decode_gaussian}


def decode_heatmaps(
    heatmaps: torch.Tensor, method: str = "gaussian", window: int = 9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``(C, *spatial)`` heatmaps into ``(C, 2)`` points (array-axis order) and ``(C,)`` confidences.

    The confidence of a landmark is its heatmap's peak value (the product of the local and global
    sigmoids: near 1 where both networks agree, near 0 where the landmark was not found).
    """
    if method not in DECODERS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {sorted(DECODERS)}.")
    hm = torch.as_tensor(heatmaps).detach().float().cpu()
    if hm.ndim != 3:
        raise ValueError(f"decode_heatmaps expects (C, W, H) heatmaps, got shape {list(hm.shape)}.")
    _, conf = _argmax(hm)
    # one rule for every decoder: a fit to a peak cut by the border (the zero padding holds no evidence) can
    # put its centre beyond it, where no landmark can be; points stay in the grid
    last = torch.tensor(hm.shape[1:], dtype=torch.float32) - 1
    return torch.minimum(DECODERS[method](hm, window).clamp_min(0), last), conf


def _affine_2d(affine: torch.Tensor) -> torch.Tensor:
    """The 3x3 in-plane part of an affine (a 4x4 one from a one-slice 3D file drops its third axis)."""
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.shape == (4, 4):
        a = a[[0, 1, 3]][:, [0, 1, 3]]
    return a


def grid_to_original(points: torch.Tensor, affine: torch.Tensor, original_affine: torch.Tensor) -> torch.Tensor:
    """Map ``(N, 2)`` voxel points of a transformed image back to its original image's pixel grid."""
    m = torch.linalg.inv(_affine_2d(original_affine)) @ _affine_2d(affine)
    p = torch.as_tensor(points, dtype=torch.float64)
    return (p @ m[:2, :2].T + m[:2, 2]).float()


class DecodeLandmarksd(MapTransform):
    """Decode a predicted heatmap into landmarks in the **original image's** pixel coordinates.

    Reads ``d[keys]`` ``(C, W, H)`` and the network-space image ``d[image_key]`` (a MetaTensor whose affine
    and ``original_affine`` relate the two grids); writes ``(C, 2)`` ``(x, y)`` points to ``output_key``,
    confidences to ``confidence_key`` and, if ``grid_key``, the points in the network's grid (for overlays).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        output_key: str = "pred_landmarks",
        confidence_key: str = "pred_confidence",
        grid_key: str | None = "pred_landmarks_grid",
        method: str = "gaussian",
        window: int = 9,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if method not in DECODERS:
            raise ValueError(f"unknown decoding method {method!r}; choose one of {sorted(DECODERS)}.")
        self.image_key, self.output_key, self.confidence_key = image_key, output_key, confidence_key
        self.grid_key = grid_key
        self.method, self.window = method, window

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            pts, conf = decode_heatmaps(d[key], self.method, self.window)
            d[self.output_key] = grid_to_original(pts, image.affine, image.meta["original_affine"]).numpy()
            d[self.confidence_key] = conf.numpy()
            if self.grid_key:
                d[self.grid_key] = pts.numpy()
        return d
