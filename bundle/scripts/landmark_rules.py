"""The rules a landmark annotation and a pixel spacing obey, wherever they are read.

One home for the checks that the datalist (:mod:`scripts.datalist`), the data set readers
(:mod:`scripts.datasets`), the anatomies and the outputs share, so each input is held to the same rules and
every caller reports a broken rule with the same words. Each check takes the caller's error class
(``DatalistError``, ``PrepareError``, ``ValueError``) and the place (``where``: file, item, line) that prefixes
its message.

Landmarks are ``(x, y)`` in pixels of the original image: x right, y down, pixel centres at integers. A
landmark is annotated fully or not at all (both coordinates NaN, ``null`` in JSON). The spacing is mm per
pixel per axis, ``(sx, sy)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .image_io import ImageHeader

__all__ = ["NO_SPACING", "as_points", "check_landmarks", "parse_spacing", "resolve_spacing"]

# the spacing source of an image whose unit is the pixel
NO_SPACING = "none (pixels)"
# a point may lie up to half a pixel beyond the outer pixel centres: that is still on the image
_EDGE = 0.5


def parse_spacing(value: Any, where: str, error: type[Exception] = ValueError) -> tuple[float, float]:
    """``(sx, sy)`` from a number (both axes) or a pair of numbers (text is read as a number, e.g. a CSV cell).

    Raises:
        error: not one or two numbers, or not positive and finite; the message starts with ``where``.
    """
    try:
        scalar = np.ndim(value) == 0 and not isinstance(value, str)
        pair = tuple(float(v) for v in ([value, value] if scalar else list(value)))
    except (TypeError, ValueError):
        pair = ()
    if isinstance(value, str) or len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        raise error(f"{where}: spacing must be a positive number or two [sx, sy] (mm per pixel), got {value!r}.")
    return pair  # type: ignore[return-value]


def resolve_spacing(
    item: Any,
    header: ImageHeader | None,
    default: Sequence[float] | None,
    where: str,
    error: type[Exception] = ValueError,
) -> tuple[tuple[float, float] | None, str]:
    """An image's spacing and where it came from, in this order: its item's own ``spacing``, its DICOM header
    (``PixelSpacing``, else ``ImagerPixelSpacing``), its anatomy's ``default``; else None, and the unit is pixels.
    """
    if item is not None:
        return parse_spacing(item, where, error), "datalist item"
    if header is not None and header.dicom_spacing is not None:
        return tuple(header.dicom_spacing), f"DICOM {header.dicom_spacing_tag}"  # type: ignore[return-value]
    if default is not None:
        return parse_spacing(default, where, error), "anatomy"
    return None, NO_SPACING


def as_points(value: Any, where: str, error: type[Exception] = ValueError) -> np.ndarray:
    """``[x, y]`` pairs, ``None`` where not annotated, as an ``(N, 2)`` float64 array (NaN where not annotated)."""
    if isinstance(value, (list, tuple)):
        value = [[np.nan, np.nan] if p is None else p for p in value]
    try:
        points = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty(0)
    if points.ndim != 2 or points.shape[1] != 2:
        raise error(f"{where}: landmarks must be a list of [x, y] pairs (null where not annotated).")
    return points


def check_landmarks(
    value: Any,
    count: int,
    where: str,
    error: type[Exception] = ValueError,
    image_size: Sequence[int] | None = None,
    image: str = "",
    owner: str = "the anatomy",
) -> np.ndarray:
    """Check ``count`` landmarks and return them as a ``(count, 2)`` float64 array, NaN where not annotated.

    Args:
        value: ``[x, y]`` pairs (``None`` where not annotated).
        count: the number of landmarks of the anatomy.
        where: the place named first in an error, e.g. ``"labels.csv, line 3"``.
        error: the exception class to raise.
        image_size: ``(W, H)`` of the image: every annotated landmark must lie on it (pixel centres from 0 to
            ``W - 1``, with half a pixel of margin).
        image: the image's path, named when a landmark lies outside it.
        owner: what has ``count`` landmarks, for the message, e.g. ``"anatomy 'head'"``.

    Raises:
        error: a wrong count, inf, half a landmark (one coordinate NaN), no landmark annotated at all, or one
            outside the image.
    """
    pts = as_points(value, where, error)
    if pts.shape[0] != count:
        raise error(f"{where}: {pts.shape[0]} landmarks, but {owner} has {count}.")
    if np.isinf(pts).any():
        raise error(f"{where}: landmark coordinates must be finite (found inf).")
    nan = np.isnan(pts)
    half = nan.any(1) & ~nan.all(1)
    if half.any():
        raise error(
            f"{where}: landmark(s) {(np.flatnonzero(half) + 1).tolist()} have only one coordinate (the other is "
            "NaN or empty); a landmark is annotated fully or not at all."
        )
    if nan.all():
        raise error(f"{where}: every landmark is NaN/missing: no landmark is annotated.")
    if image_size is not None:
        w, h = int(image_size[0]), int(image_size[1])
        x, y = pts[:, 0], pts[:, 1]
        outside = ~nan[:, 0] & ((x < -_EDGE) | (x > w - 1 + _EDGE) | (y < -_EDGE) | (y > h - 1 + _EDGE))
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            raise error(
                f"{where}: landmark {k + 1} at ({x[k]:.2f}, {y[k]:.2f}) is outside the {w}x{h} image"
                + (f" {image}." if image else ".")
            )
    return pts
