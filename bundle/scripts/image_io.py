"""Reading image headers through ITK, to check inputs before any training or inference starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

import itk

__all__ = ["ImageHeader", "read_image_header"]


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself without reading its pixels."""

    path: str
    size: tuple[int, ...]  # (W, H[, D]) in ITK's index order
    spacing: tuple[float, ...]
    components: int


def read_image_header(path: str) -> ImageHeader:
    """Read size, spacing and channel count of any ITK-readable file (PNG, JPG, BMP, DICOM, NIfTI, MHA).

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
    dims = io.GetNumberOfDimensions()
    size = tuple(int(io.GetDimensions(i)) for i in range(dims))
    spacing = tuple(float(io.GetSpacing(i)) for i in range(dims))
    if any(s <= 0 for s in size):
        raise ValueError(f"image file {path}: empty image (size {size}).")
    return ImageHeader(path=path, size=size, spacing=spacing, components=int(io.GetNumberOfComponents()))
