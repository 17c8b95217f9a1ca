"""Training augmentation for other sites: framing, position and display changes, the landmarks following the image.

Every spatial transform here is a MONAI transform that updates the image's affine (resampling with
``RandAffine``, cropping with ``SpatialCrop``, resizing with ``Resize``), so that the training pipeline's
``ApplyTransformToPointsd(invert_affine=True)`` moves the landmarks exactly as it does after the paper's
rotation and shift. MONAI lacks three pieces, written here as array + dictionary twins where an array form makes
sense:

- :class:`RandFramingAffined`: rotation, **isotropic** zoom in or out (MONAI's ``RandAffine`` draws one scale per
  axis) and a shift given as a fraction of the image side, in one resampling;
- :class:`RandCropResized`: a random crop of each side (tighter framing, another aspect ratio), resized back to
  the network size;
- :class:`InvertIntensity` / :class:`RandInvertIntensityd`: inverted polarity (bones dark), as X-ray displays differ.

:func:`choose_augmentation` picks a config's ``augmentation`` list (``robust`` or ``paper``) by name.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandAffined, RandomizableTransform, Resize, SpatialCrop, Transform
from monai.transforms.spatial.array import RandAffineGrid

__all__ = [
    "AUGMENTATIONS",
    "choose_augmentation",
    "InvertIntensity",
    "RandInvertIntensityd",
    "RandFramingAffined",
    "RandCropResized",
]

AUGMENTATIONS = ("robust", "paper")


def choose_augmentation(name: str, **lists: Sequence[Any]) -> list[Any]:
    """The random transforms of the augmentation called ``name`` among ``lists`` (a config's ``augment_<name>``)."""
    if name not in lists:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(lists)}.")
    return list(lists[name])


class InvertIntensity(Transform):
    """Inverted polarity: ``max + min - x`` (bright becomes dark, the intensity range is kept)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.max() + img.min() - img


class RandInvertIntensityd(RandomizableTransform, MapTransform):
    """Dictionary transform: :class:`InvertIntensity` with probability ``prob``."""

    def __init__(self, keys: KeysCollection, prob: float = 0.1, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.inverter = InvertIntensity()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self.inverter(d[key])
        return d


class _IsotropicScaleGrid(RandAffineGrid):
    """MONAI's random affine grid with one scale factor for every axis (the first axis' draw)."""

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(data)
        if self.scale_params:
            self.scale_params = [self.scale_params[0]] * len(self.scale_params)


class RandFramingAffined(RandAffined):
    """Rotation, isotropic zoom and shift in one resampling; the image keeps its size, the affine follows.

    Args:
        keys: the images to transform (their affines are updated, so points follow through
            ``ApplyTransformToPointsd``).
        prob: probability of transforming a sample.
        rotate_degrees: rotation drawn in ``[-rotate_degrees, rotate_degrees]``.
        zoom_range: apparent magnification ``(low, high)``: 0.7 shows the content at 70 % on a padded canvas (zoomed
            out), 1.3 magnifies it by 30 % and crops the border (zoomed in). Drawn uniformly in ``1/zoom`` (MONAI's
            scale), one factor for both axes.
        translate_fraction: shift drawn per axis in ``[-f, f]`` times that axis' size.
        padding_mode, mode: as MONAI's ``RandAffined`` (``zeros`` pads with 0: black once intensities are in [0, 1]).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        rotate_degrees: float = 10.0,
        zoom_range: Sequence[float] = (0.75, 1.3),
        translate_fraction: float = 0.08,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        low, high = (float(z) for z in zoom_range)
        if not 0 < low <= high:
            raise ValueError(f"zoom_range must be 0 < low <= high, got {zoom_range}.")
        scale = (1.0 / high - 1.0, 1.0 / low - 1.0)  # MONAI adds 1: the sampling grid's scale
        super().__init__(
            keys,
            prob=prob,
            rotate_range=float(np.deg2rad(rotate_degrees)),
            scale_range=(scale, scale),
            translate_range=(0.0, 0.0),
            padding_mode=padding_mode,
            mode=mode,
            allow_missing_keys=allow_missing_keys,
        )
        grid = self.rand_affine.rand_affine_grid
        iso = _IsotropicScaleGrid(
            rotate_range=grid.rotate_range, shear_range=grid.shear_range, translate_range=grid.translate_range,
            scale_range=grid.scale_range, device=grid.device, dtype=grid.dtype,
        )  # fmt: skip
        iso.set_random_state(state=grid.R)
        self.rand_affine.rand_affine_grid = iso
        self.translate_fraction = float(translate_fraction)

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        first = self.first_key(dict(data))
        if first != ():
            shape = data[first].shape[1:]
            self.rand_affine.rand_affine_grid.translate_range = tuple(self.translate_fraction * float(n) for n in shape)
        return super().__call__(data, lazy=lazy)


class RandCropResized(RandomizableTransform, MapTransform):
    """A random crop keeping ``[min_fraction, 1]`` of each side at a random place, resized back to the input size.

    Tighter framing and another aspect ratio, as another device or operator frames the same anatomy. Cropping
    (``SpatialCrop``) and resizing (``Resize``, bilinear) update the affine, so points follow; points cut off
    lie outside the image afterwards (their heatmap target is all zeros, see :class:`~scripts.heatmaps.LandmarkHeatmap`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        min_fraction: float = 0.75,
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction}.")
        self.min_fraction, self.mode = float(min_fraction), mode
        self._fraction: tuple[float, ...] = ()
        self._position: tuple[float, ...] = ()

    def randomize(self, data: Any | None = None) -> None:
        super().randomize(None)
        self._fraction = tuple(self.R.uniform(self.min_fraction, 1.0) for _ in range(2))
        self._position = tuple(self.R.uniform(0.0, 1.0) for _ in range(2))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            shape = [int(n) for n in d[key].shape[1:]]
            size = [max(1, round(f * n)) for f, n in zip(self._fraction, shape)]
            start = [int(round(p * (n - s))) for p, n, s in zip(self._position, shape, size)]
            cropped = SpatialCrop(roi_start=start, roi_end=[a + s for a, s in zip(start, size)])(d[key])
            d[key] = Resize(spatial_size=shape, mode=self.mode, anti_aliasing=False)(cropped)
        return d
