"""Reading images through ITK: headers, to check inputs before any training or inference starts, and
single images as the workflows load them.

For DICOM, the physical pixel spacing is read from the header's own tags, ``PixelSpacing`` (0028,0030) or else
``ImagerPixelSpacing`` (0018,1164), rather than from ITK's spacing: ITK reports 1.0 when there is none, which
cannot be told apart from a real 1 mm, and for CR/DX it prefers the imager's spacing to the calibrated one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import itk
import torch
from monai.transforms import LoadImage

from .landmark_transforms import ToGray2D

__all__ = ["ImageHeader", "read_image_io", "read_image_header", "read_gray_image", "DICOM_SPACING_TAGS"]

# in order of preference; each holds "row spacing\\column spacing" in mm, i.e. (sy, sx)
DICOM_SPACING_TAGS = {"0028|0030": "PixelSpacing", "0018|1164": "ImagerPixelSpacing"}


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself without reading its pixels."""

    path: str
    size: tuple[int, ...]  # (W, H[, D]) in ITK's index order
    spacing: tuple[float, ...]
    components: int
    dicom_spacing: tuple[float, float] | None = None  # (sx, sy) in mm from a DICOM header, if it states one
    dicom_spacing_tag: str | None = None  # the tag it came from, e.g. "PixelSpacing"


def read_image_io(path: str) -> Any:
    """ITK's ``ImageIO`` for ``path`` with its header read (not the pixels): sizes, spacing, origin, direction.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ITK has no reader for it or its header is broken; the message names the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path}: does not exist.")
    io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError(f"image file {path}: unreadable (not an image format ITK can read, or corrupt).")
    io.SetFileName(path)
    try:
        io.ReadImageInformation()
    except RuntimeError as e:  # ITK raises RuntimeError for broken headers
        raise ValueError(f"image file {path}: unreadable header ({str(e).strip().splitlines()[-1]}).") from None
    return io


def read_image_header(path: str) -> ImageHeader:
    """Read size, spacing and channel count of any ITK-readable file (PNG, JPG, BMP, DICOM, NIfTI, MHA).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ITK has no reader for it or its header is broken; the message names the file.
    """
    io = read_image_io(path)
    dims = io.GetNumberOfDimensions()
    size = tuple(int(io.GetDimensions(i)) for i in range(dims))
    spacing = tuple(float(io.GetSpacing(i)) for i in range(dims))
    if any(s <= 0 for s in size):
        raise ValueError(f"image file {path}: empty image (size {size}).")
    dicom = _dicom_spacing(io, path) if io.GetNameOfClass() == "GDCMImageIO" else None
    return ImageHeader(
        path=path,
        size=size,
        spacing=spacing,
        components=int(io.GetNumberOfComponents()),
        dicom_spacing=dicom[0] if dicom else None,
        dicom_spacing_tag=dicom[1] if dicom else None,
    )


def _dicom_spacing(io, path: str) -> tuple[tuple[float, float], str] | None:
    """``((sx, sy), tag name)`` from the first spacing tag present in a DICOM header, or None."""
    tags = io.GetMetaDataDictionary()
    for tag, name in DICOM_SPACING_TAGS.items():
        if not tags.HasKey(tag):
            continue
        value = str(tags[tag]).strip()
        try:
            row, col = (float(v) for v in value.split("\\"))
        except ValueError:
            raise ValueError(f"image file {path}: DICOM {name} {value!r} is not two numbers 'row\\column'.") from None
        if not (row > 0 and col > 0 and row != float("inf") and col != float("inf")):
            raise ValueError(f"image file {path}: DICOM {name} {value!r} must be two positive numbers.")
        return (col, row), name
    return None


def read_gray_image(path: str) -> torch.Tensor:
    """The image at ``path`` as the workflows' ``load_transforms`` read it: ITK, channel first, one channel,
    2D, i.e. a ``(1, W, H)`` MetaTensor in array-axis order (x first)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path}: does not exist.")
    return ToGray2D()(LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)(path))
