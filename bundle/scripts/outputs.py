"""What runs write: per-image landmark JSON, overlays with the points drawn, the metrics JSON."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from PIL import Image, ImageDraw, ImageFont

from .anatomies import AnatomySet
from .review import review_fields

__all__ = ["atomic_path", "overlay_image", "write_json_atomic", "SaveLandmarksd", "SaveOverlayd"]


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only once written whole.

    The temporary name keeps the extension, so writers that infer the format from it (PIL, matplotlib) work.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix="_" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: strict JSON, which every reader accepts."""
    if isinstance(obj, Mapping):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json_atomic(obj: Any, path: str) -> None:
    """Write strict JSON (NaN as null) atomically (see :func:`atomic_path`): readers never see half a file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(_strict(obj), f, indent=2, allow_nan=False)


def _confidence_colour(c: float) -> tuple[int, int, int]:
    """Red (0) -> yellow (0.5) -> green (1); grey when unknown."""
    if not np.isfinite(c):
        return (160, 160, 160)
    c = float(np.clip(c, 0.0, 1.0))
    return (int(255 * min(1.0, 2 * (1 - c))), int(255 * min(1.0, 2 * c)), 0)


def overlay_image(
    image: np.ndarray | torch.Tensor,
    points: np.ndarray,
    confidence: np.ndarray | None = None,
    true_points: np.ndarray | None = None,
) -> Image.Image:
    """Draw ``(N, 2)`` ``(x, y)`` points on a ``(1, W, H)`` (array-axis order) image.

    Predictions are filled dots coloured by confidence (red low, green high; the legend in the top-left
    corner); true points, if given, are cyan rings joined to their prediction by a line.
    """
    a = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    a = a.reshape(a.shape[-2:]).T  # (H, W) for PIL
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip((a - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(a).convert("RGB")
    draw = ImageDraw.Draw(img)
    r = max(2, round(max(img.size) / 200))
    conf = np.full(len(points), np.nan) if confidence is None else np.asarray(confidence)
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        if true_points is not None and np.isfinite(true_points[k]).all():
            tx, ty = true_points[k]
            draw.line([(x, y), (tx, ty)], fill=(0, 200, 255), width=max(1, r // 2))
            draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=(0, 200, 255), width=max(1, r // 2))
        if np.isfinite([x, y]).all():
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_confidence_colour(conf[k]))
    if confidence is not None:
        _draw_confidence_legend(draw, img.size)
    return img


def _draw_confidence_legend(draw: ImageDraw.ImageDraw, size: tuple[int, int]) -> None:
    """A red-to-green bar over the label ``confidence 0 to 1``, on black, in the top-left corner."""
    label = "confidence 0 to 1"
    x0 = y0 = max(2, min(size) // 100)
    font = ImageFont.load_default(size=max(10, min(size) // 50))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    w = max(right - left, size[0] // 6)
    h = max(4, w // 12)
    draw.rectangle([x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 4 + bottom], fill=(0, 0, 0))
    for i in range(w):
        draw.line([(x0 + i, y0), (x0 + i, y0 + h)], fill=_confidence_colour(i / (w - 1)))
    draw.text((x0, y0 + h + 2), label, fill=(255, 255, 255), font=font)


class SaveLandmarksd(MapTransform):
    """Write ``<output_dir>/<image stem>.json`` and ``<stem>_overlay.png`` for one decoded item.

    The JSON holds the anatomy, the original image's size and, per landmark, its name, ``x``, ``y`` in the
    original image's pixels and the confidence; where the item was flagged and its orientation chosen, each
    landmark's ``review`` and the image's ``mirrored`` (:func:`~scripts.review.review_fields`).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        anatomies: AnatomySet | None = None,
        output_dir: str = "./outputs",
        original_key: str = "image_original",
        confidence_key: str = "pred_confidence",
        overlay: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if anatomies is None:
            raise ValueError("SaveLandmarksd needs the anatomies (landmark names).")
        self.anatomies, self.output_dir = anatomies, output_dir
        self.original_key, self.confidence_key, self.overlay = original_key, confidence_key, overlay

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        original = d[self.original_key]
        source = str(original.meta.get("filename_or_obj", "image"))
        stem = os.path.basename(source)
        for ext in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".mha", ".mhd", ".nrrd", ".tif", ".tiff"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        anatomy = self.anatomies[str(d["anatomy"])]
        for key in self.key_iterator(d):
            pts = np.asarray(d[key], dtype=np.float64)
            conf = np.asarray(d.get(self.confidence_key, np.full(len(pts), np.nan)), dtype=np.float64)
            w, h = (int(s) for s in original.shape[-2:])
            result = {
                "image": source,
                "anatomy": anatomy.name,
                "image_size": {"width": w, "height": h},
                "coordinates": "original image pixels; x to the right, y down, pixel centres at integers",
                "landmarks": [
                    {"name": n, "x": float(p[0]), "y": float(p[1]), "confidence": float(c)}
                    for n, p, c in zip(anatomy.landmarks, pts, conf)
                ],
            }
            result.update(review_fields(d, result["landmarks"]))
            write_json_atomic(result, os.path.join(self.output_dir, f"{stem}.json"))
            if self.overlay:
                overlay_image(original, pts, conf).save(os.path.join(self.output_dir, f"{stem}_overlay.png"))
        return d


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<anatomy>_<stem>.png``: the network-space image with its decoded points.

    Used during validation to watch training; at most ``max_per_anatomy`` images per anatomy are written
    (the first ones seen, overwritten at every validation).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks_grid",
        image_key: str = "image",
        output_dir: str = "./overlays",
        confidence_key: str = "pred_confidence",
        max_per_anatomy: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.output_dir, self.confidence_key = image_key, output_dir, confidence_key
        self.max_per_anatomy = max_per_anatomy
        self.chosen: dict[str, list[str]] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        source = str(image.meta.get("filename_or_obj", "image"))
        anatomy = str(d.get("anatomy", "image"))
        chosen = self.chosen.setdefault(anatomy, [])
        if source not in chosen:
            if len(chosen) >= self.max_per_anatomy:
                return d
            chosen.append(source)
        stem = os.path.splitext(os.path.basename(source))[0]
        os.makedirs(self.output_dir, exist_ok=True)
        for key in self.key_iterator(d):
            img = overlay_image(image, np.asarray(d[key]), d.get(self.confidence_key))
            img.save(os.path.join(self.output_dir, f"{anatomy}_{stem}.png"))
        return d
