"""What inference and validation write per image: the landmark JSON and overlays with the points drawn."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .anatomies import Anatomy, AnatomySet
from .files import image_stem, write_image_atomic, write_json_atomic
from .image_io import read_gray_image, read_image_header
from .landmark_rules import NO_SPACING, parse_spacing, resolve_spacing
from .overlays import REVIEW_THRESHOLD, overlay_image
from .recognition import recognition_fields
from .review import review_fields

__all__ = ["SaveLandmarksd", "SaveOverlayd", "item_spacing", "landmark_result"]


def _source(image: Any) -> str:
    """The file an image was read from (its MetaTensor's ``filename_or_obj``), or ``"image"``."""
    return str(getattr(image, "meta", {}).get("filename_or_obj", "") or "image")


def item_spacing(item: Mapping[Hashable, Any], image_path: str, anatomy: Anatomy) -> tuple[tuple[float, float] | None, str]:
    """The spacing of an item's image and where it came from; ``(None, "none (pixels)")`` where none is known.

    A datalist item (:func:`~scripts.datalist.load_datalist`, :func:`~scripts.datalist.inference_items`) has it
    resolved already (``spacing``, ``unit``, ``spacing_source``); any other follows the same order
    (:func:`~scripts.landmark_rules.resolve_spacing`): its ``spacing``, the image's DICOM header, the anatomy's.
    """
    where = f"image {image_path}"
    if item.get("unit") == "px":
        return None, str(item.get("spacing_source", NO_SPACING))
    if item.get("unit") == "mm":
        return parse_spacing(item["spacing"], where), str(item.get("spacing_source", "datalist item"))
    header = read_image_header(image_path) if os.path.isfile(image_path) else None
    return resolve_spacing(item.get("spacing"), header, anatomy.spacing, where)


class SaveLandmarksd(MapTransform):
    """Write ``<output_dir>/<image stem>.json`` and ``<stem>_overlay.png`` for one decoded item.

    The JSON holds the anatomy, the original image's size, its spacing (mm per pixel ``[sx, sy]``, or null where
    none is known; see :func:`item_spacing`) with ``spacing_source``, and per landmark its name, ``x``, ``y`` in
    the original image's pixels, with a spacing ``x_mm``, ``y_mm`` (the distances from the top-left pixel's
    centre along each axis), and the confidence. The overlay colours points by confidence around
    ``confidence_threshold`` (:func:`~scripts.overlays.confidence_colour`). Where the item was flagged and its
    orientation chosen, each landmark's ``review`` and the image's ``mirrored`` (:func:`~scripts.review.review_fields`).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks",
        anatomies: AnatomySet | None = None,
        output_dir: str = "./outputs",
        original_key: str = "image_original",
        confidence_key: str = "pred_confidence",
        overlay: bool = True,
        confidence_threshold: float = REVIEW_THRESHOLD,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if anatomies is None:
            raise ValueError("SaveLandmarksd needs the anatomies (landmark names).")
        self.anatomies, self.output_dir = anatomies, output_dir
        self.original_key, self.confidence_key, self.overlay = original_key, confidence_key, overlay
        self.confidence_threshold = confidence_threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        original = d[self.original_key]
        stem = str(d.get("output_name") or image_stem(_source(original)))  # unique per input (scripts.inputs.output_names)
        for key in self.key_iterator(d):
            result = landmark_result(d, self.anatomies, key, self.original_key, self.confidence_key)
            write_json_atomic(result, os.path.join(self.output_dir, f"{stem}.json"))
            if self.overlay:
                # colours around the item's review threshold (scripts.review.FlagReviewd) where it was flagged
                threshold = float(d.get("review_threshold", self.confidence_threshold))
                pts = [(m["x"], m["y"]) for m in result["landmarks"]]
                conf = [m["confidence"] for m in result["landmarks"]]
                picture = overlay_image(original, np.asarray(pts), np.asarray(conf), threshold=threshold)
                write_image_atomic(picture, os.path.join(self.output_dir, f"{stem}_overlay.png"))
        return d


def landmark_result(
    data: Mapping[Hashable, Any],
    anatomies: AnatomySet,
    key: str = "pred_landmarks",
    original_key: str = "image_original",
    confidence_key: str = "pred_confidence",
) -> dict[str, Any]:
    """The inference JSON of one decoded item (see :class:`SaveLandmarksd`): what ``run inference`` writes to
    ``<stem>.json``, and what the MLflow model returns per row (:mod:`scripts.mlflow_model`)."""
    original = data[original_key]
    source = _source(original)
    anatomy = anatomies[str(data["anatomy"])]
    spacing, spacing_source = item_spacing(data, source, anatomy)
    w, h = (int(s) for s in original.shape[-2:])
    pts = np.asarray(data[key], dtype=np.float64)
    conf = np.asarray(data.get(confidence_key, np.full(len(pts), np.nan)), dtype=np.float64)
    landmarks = []
    for name, p, c in zip(anatomy.landmarks, pts, conf):
        mark = {"name": name, "x": float(p[0]), "y": float(p[1])}
        if spacing is not None:
            mark.update(x_mm=float(p[0]) * spacing[0], y_mm=float(p[1]) * spacing[1])
        landmarks.append({**mark, "confidence": float(c)})
    result = {
        "image": source,
        "anatomy": anatomy.name,
        **recognition_fields(data),  # anatomy_recognized, anatomy_probability, anatomy_distance when recognised
        "image_size": {"width": w, "height": h},
        "spacing": list(spacing) if spacing is not None else None,
        "spacing_source": spacing_source,
        "coordinates": "x, y: original image pixels, x to the right, y down, pixel centres at integers; "
        "x_mm, y_mm: x, y times the spacing, mm from the top-left pixel's centre",
        "landmarks": landmarks,
    }
    result.update(review_fields(data, result["landmarks"]))
    # moved by the refinement stage (scripts.refinement.RefineLandmarksd keeps the decoded points beside them)
    result["refined"] = f"{key}_coarse" in data
    if f"{key}_refine_scale" in data:  # the anatomy's apparent size against the refiner's training images
        result["refine_scale"] = round(float(data[f"{key}_refine_scale"]), 4)
    return result


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<anatomy>_<stem>.png``: an image with its decoded points, to watch training.

    Used in validation; at most ``max_per_anatomy`` images per anatomy are drawn (the first ones seen,
    overwritten at every validation). Points are coloured by confidence around ``confidence_threshold``.

    Args:
        keys: the points to draw: with ``original``, ``pred_landmarks`` (original-image pixels); else
            ``pred_landmarks_grid`` (pixels of the network-size ``image_key``).
        image_key: the network-size image; its MetaTensor's ``filename_or_obj`` names the original file.
        original: draw on the original image, read again from its file through ITK (as ``load_transforms``),
            rather than on the network-size image.
        path_key: with ``original``, the item key holding the original image's path (default: the image's
            ``filename_or_obj``).
        true_key: with ``original``, the item key of the annotations in original pixels (e.g.
            ``landmarks_original``), drawn as rings joined to their prediction; None: none drawn.
        max_size: with ``original``, the PNG's long side at most (the image is scaled down, points with it).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_landmarks_grid",
        image_key: str = "image",
        output_dir: str = "./overlays",
        confidence_key: str = "pred_confidence",
        max_per_anatomy: int = 2,
        original: bool = False,
        path_key: str | None = None,
        true_key: str | None = None,
        max_size: int = 512,
        confidence_threshold: float = REVIEW_THRESHOLD,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.output_dir, self.confidence_key = image_key, output_dir, confidence_key
        self.max_per_anatomy = max_per_anatomy
        self.original, self.path_key, self.true_key, self.max_size = original, path_key, true_key, max_size
        self.confidence_threshold = confidence_threshold
        self.chosen: dict[str, list[str]] = {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = str(d.get(self.path_key) or "") if self.path_key else ""
        source = source or _source(d[self.image_key])
        anatomy = str(d.get("anatomy", "image"))
        chosen = self.chosen.setdefault(anatomy, [])
        if source not in chosen:
            if len(chosen) >= self.max_per_anatomy:
                return d
            chosen.append(source)
        if self.original:
            if not os.path.isfile(source):
                key = self.path_key or f"{self.image_key}'s filename_or_obj"
                raise FileNotFoundError(f"SaveOverlayd: original image {source!r} (item key {key}) is not a file.")
            image, max_size = read_gray_image(source), self.max_size
            truth = d.get(self.true_key) if self.true_key else None
        else:
            image, max_size, truth = d[self.image_key], None, None
        truth = None if truth is None else np.asarray(torch.as_tensor(truth).cpu(), dtype=np.float64)
        for key in self.key_iterator(d):
            picture = overlay_image(
                image, np.asarray(d[key]), d.get(self.confidence_key), truth, self.confidence_threshold, max_size
            )
            write_image_atomic(picture, os.path.join(self.output_dir, f"{anatomy}_{image_stem(source)}.png"))
        return d
