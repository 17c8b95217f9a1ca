"""Controlled shifts of a test image, the annotations moving along: what ``bench/robustness.py`` scores a model under.

:class:`ImageShiftd` applies one named shift to the **original** image, right after it is read (before the
resize to the network size), through MONAI transforms that update the image's affine. Decoding maps the
predictions back through that affine to the original image's pixels, so a shifted image is scored in mm against
its original annotations, exactly as an unshifted one. The shift also records, per image, which annotated
landmarks are still inside the shifted image (``visible``): a landmark cropped away cannot be found, and the
benchmark counts those apart.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import AdjustContrast, Flip, MapTransform, Rotate, SpatialCrop, Zoom

from .heatmaps import _affine_2d

__all__ = ["SHIFTS", "COMPOUND", "ImageShiftd", "apply_shift"]

# name -> what it does (the benchmark's table, in this order)
SHIFTS = {
    "none": "the image as it is",
    "mirrored": "left-right mirrored",
    "zoom_out_70": "zoomed out to 70 % on a black canvas of the same size",
    "zoom_in_130": "zoomed in 130 % about the centre, the border cropped",
    "rotated_10": "rotated by 10 degrees about the centre, black corners",
    "gamma_0.6": "gamma 0.6 (brighter mid-tones)",
    "gamma_1.6": "gamma 1.6 (darker mid-tones)",
    "noise": "Gaussian noise, std 5 % of the intensity range",
    "crop_top_fifth": "the top fifth of the image cut off",
    "other_device": "zoomed in 115 %, rotated 5 degrees, gamma 1.4 and noise at once (another device and framing)",
}
# shifts made of others, applied in this order (names apply_shift reads: zoom_<percent>, rotated_<degrees>, ...)
COMPOUND = {"other_device": ("zoom_in_115", "rotated_5", "gamma_1.4", "noise")}


def apply_shift(img: MetaTensor, name: str, seed: int = 0) -> MetaTensor:
    """One named shift of a ``(1, W, H)`` image; spatial shifts update its affine (points can follow)."""
    for part in COMPOUND.get(name, ()):
        img = apply_shift(img, part, seed)
    if name in COMPOUND or name == "none":
        return img
    if name == "mirrored":
        return Flip(spatial_axis=0)(img)
    if name.startswith("zoom_"):
        zoom = float(name.rsplit("_", 1)[1]) / 100.0
        return Zoom(zoom=zoom, keep_size=True, mode="bilinear", padding_mode="constant")(img)
    if name.startswith("rotated_"):
        angle = np.deg2rad(float(name.rsplit("_", 1)[1]))
        return Rotate(angle=angle, keep_size=True, mode="bilinear", padding_mode="zeros")(img)
    if name.startswith("gamma_"):
        return AdjustContrast(gamma=float(name.split("_", 1)[1]))(img)
    if name == "noise":
        lo, hi = float(img.min()), float(img.max())
        g = torch.Generator().manual_seed(seed)
        return img + torch.randn(img.shape, generator=g, dtype=torch.float32).to(img.dtype) * 0.05 * (hi - lo)
    if name == "crop_top_fifth":
        w, h = (int(n) for n in img.shape[1:3])
        return SpatialCrop(roi_start=[0, h // 5], roi_end=[w, h])(img)
    raise ValueError(f"unknown shift {name!r}; choose one of {list(SHIFTS)}.")


class ImageShiftd(MapTransform):
    """Apply the shift ``name`` to ``d[keys]`` (the original image) and note which landmarks stay inside it.

    ``visible`` maps each image's file to a boolean per landmark of ``d[landmarks_key]`` (original pixels): inside
    the shifted image (within half a pixel of its border pixels' centres); NaN landmarks count as not visible.
    The noise is seeded by ``seed`` and the file name, so every run draws the same noise.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        name: str = "none",
        landmarks_key: str = "landmarks",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if name not in SHIFTS:
            raise ValueError(f"unknown shift {name!r}; choose one of {list(SHIFTS)}.")
        self.name, self.landmarks_key, self.seed = name, landmarks_key, int(seed)
        self.visible: dict[str, np.ndarray] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            source = str(img.meta.get("filename_or_obj", ""))
            before = _affine_2d(img.affine)
            shifted = apply_shift(img, self.name, self.seed + zlib.crc32(source.encode()))
            d[key] = shifted
            if self.landmarks_key in d:
                pts = np.asarray(d[self.landmarks_key], dtype=np.float64).reshape(-1, 2)
                m = (torch.linalg.inv(_affine_2d(shifted.affine)) @ before).numpy()
                moved = pts @ m[:2, :2].T + m[:2, 2]
                size = np.asarray(shifted.shape[1:3], dtype=np.float64)
                inside = np.isfinite(moved).all(1) & (moved >= -0.5).all(1) & (moved <= size - 0.5).all(1)
                self.visible[source] = inside
        return d
