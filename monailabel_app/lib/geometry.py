"""An image's physical geometry as ITK reads it: pixel index <-> position in mm (LPS).

ITK (and so 3D Slicer, and the bundle's reader) puts index ``(i, j[, k])`` of an image at the physical point
``origin + direction @ (spacing * index)``, in the LPS patient coordinate system. The bundle's landmarks are
``(x, y)`` = ``(i, j)`` of that index, so this is all it takes to place them where a viewer shows the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageGeometry", "read_geometry"]


@dataclass(frozen=True)
class ImageGeometry:
    """Size, origin, spacing and direction of an image, in ITK's index order (x first).

    Attributes:
        size: ``(W, H[, D])`` pixels.
        origin: physical position (mm, LPS) of the centre of pixel ``(0, 0[, 0])``.
        spacing: mm per pixel along each index axis.
        direction: ``(n, n)`` matrix whose column ``a`` is the physical direction of index axis ``a``.
    """

    size: tuple[int, ...]
    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]

    @property
    def ndim(self) -> int:
        return len(self.size)

    def _matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64) * np.asarray(self.spacing, dtype=np.float64)[None, :]

    def index_to_physical(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` ``(x, y)`` pixel positions -> ``(N, 3)`` positions in mm (LPS); z = 0 for 2D images.

        Non-finite points (missing landmarks) stay NaN.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        index = np.zeros((len(pts), self.ndim))
        index[:, :2] = pts
        phys = np.asarray(self.origin, dtype=np.float64)[None, :] + index @ self._matrix().T
        out = np.zeros((len(pts), 3))
        out[:, : min(3, self.ndim)] = phys[:, :3]
        return out

    def physical_to_index(self, positions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` positions in mm (LPS) -> ``(N, 2)`` ``(x, y)`` pixel positions (the inverse of the above)."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        phys = pos[:, : self.ndim] if self.ndim <= 3 else np.pad(pos, ((0, 0), (0, self.ndim - 3)))
        index = (phys - np.asarray(self.origin, dtype=np.float64)[None, :]) @ np.linalg.inv(self._matrix()).T
        return index[:, :2]

    def to_dict(self) -> dict:
        """Plain JSON: what the result JSON reports as the image's geometry."""
        return {
            "size": list(self.size),
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "direction": [list(r) for r in self.direction],
            "coordinate_system": "LPS",
        }


def read_geometry(path: str) -> ImageGeometry:
    """Read an image file's geometry through ITK's ImageIO (the header only, not the pixels).

    Args:
        path: any ITK-readable image (PNG, JPG, BMP, DICOM, NIfTI, MHA, NRRD).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ITK cannot read it; the message names the file.
    """
    from scripts.image_io import read_image_io  # the bundle's scripts are on the path (lib.bundle)

    io = read_image_io(path)
    n = io.GetNumberOfDimensions()
    columns = [[float(v) for v in io.GetDirection(a)] for a in range(n)]  # GetDirection(a): index axis a
    return ImageGeometry(
        size=tuple(int(io.GetDimensions(a)) for a in range(n)),
        origin=tuple(float(io.GetOrigin(a)) for a in range(n)),
        spacing=tuple(float(io.GetSpacing(a)) for a in range(n)),
        direction=tuple(tuple(columns[c][r] for c in range(n)) for r in range(n)),
    )
