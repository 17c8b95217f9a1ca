"""MONAI Label inference tasks: the bundle's landmarks as a Slicer markups file and a result JSON.

One task per anatomy of the served checkpoint (named after it) and a task ``landmarks`` that takes the anatomy
as a request parameter. Each returns MONAI Label's pair ``(file, result)``:

- the file: a Slicer markups JSON (``.mrk.json``, see :mod:`lib.markups`), or with ``{"result_file": "label"}``
  a label image (NRRD, the input's geometry) with a small disk of value ``k + 1`` at landmark ``k``;
- the result: the landmarks in original-image pixels and in mm (the image's geometry), their confidence and a
  ``review`` flag (confidence below the threshold), the anatomy and the checkpoint that made them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from .bundle import LandmarkModel, Prediction, RequestError
from .geometry import ImageGeometry, read_geometry
from .markups import MARKUPS_SCHEMA, dumps, slicer_markups

__all__ = ["LandmarkInferTask", "label_image", "result_json"]

logger = logging.getLogger(__name__)

RESULT_FILES = ("markups", "label")


def result_json(pred: Prediction, geometry: ImageGeometry, threshold: float, threshold_source: str) -> dict[str, Any]:
    """The result dictionary MONAI Label returns (``output=json``) for one prediction."""
    positions = geometry.index_to_physical(pred.points)
    review = [bool(c < threshold) for c in pred.confidence]
    return {
        "anatomy": pred.anatomy,
        **pred.recognition,  # anatomy_recognized, anatomy_probability, anatomy_distance where none was named
        "image": pred.item["image"],
        "image_size": {"width": int(geometry.size[0]), "height": int(geometry.size[1])},
        "geometry": geometry.to_dict(),
        "coordinates": "x, y: original image pixels (x right, y down, pixel centres at integers); "
        "position: mm in the image's LPS space (origin + direction * spacing * index; z = 0 for 2D), as in the markups",
        "measurement_spacing": {
            "spacing": pred.item["spacing"],
            "unit": pred.item["unit"],
            "source": pred.item["spacing_source"],
        },
        "landmarks": [
            {
                "name": name,
                "x": float(p[0]),
                "y": float(p[1]),
                "position": [float(v) for v in pos],
                "confidence": float(c),
                "review": r,
            }
            for name, p, pos, c, r in zip(pred.landmarks, pred.points, positions, pred.confidence, review)
        ],
        "review_threshold": threshold,
        "review_threshold_source": threshold_source,
        "review_count": int(sum(review)),
        "mirrored": pred.mirrored,  # read as left-right mirrored (points in the image as given, identities kept)
        "refined": pred.refined,  # moved by the refinement stage trained with the checkpoint
        "checkpoint": pred.checkpoint,
        "checkpoint_mtime": pred.checkpoint_mtime,
        "markups_schema": MARKUPS_SCHEMA,
    }


def label_image(points: np.ndarray, geometry: ImageGeometry, path: str, radius: float) -> str:
    """Write a label image with the input's geometry: a disk of ``radius`` px and value ``k + 1`` at landmark ``k``.

    Args:
        points: ``(N, 2)`` ``(x, y)`` original-image pixels (NaN: not drawn).
        geometry: the input image's geometry (size, origin, spacing, direction).
        path: output file; its extension picks ITK's writer (``.nrrd``).
        radius: disk radius in pixels.
    """
    import itk

    w, h = geometry.size[0], geometry.size[1]
    dtype = np.uint8 if len(points) < 255 else np.uint16
    arr = np.zeros((h, w), dtype=dtype)
    yy, xx = np.mgrid[0:h, 0:w]
    for k, (x, y) in enumerate(np.asarray(points, dtype=np.float64)):
        if np.isfinite([x, y]).all():
            arr[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = k + 1
    full = arr.reshape((1,) * (geometry.ndim - 2) + arr.shape)  # a 3D input one slice deep stays 3D
    img = itk.image_from_array(np.ascontiguousarray(full))
    img.SetOrigin([float(v) for v in geometry.origin])
    img.SetSpacing([float(v) for v in geometry.spacing])
    img.SetDirection(itk.matrix_from_array(np.asarray(geometry.direction, dtype=np.float64)))
    itk.imwrite(img, path, compression=True)
    return path


class LandmarkInferTask(InferTask):
    """Landmark detection with the bundle's network, for one anatomy or (``anatomy=None``) any of them: the
    request's ``anatomy``, or without one the anatomy the checkpoint's recogniser sees (an image of none of them
    is refused with the recogniser's message).

    Args:
        model: the served checkpoint, shared by all tasks.
        anatomy: the anatomy this task detects; None for the task that takes it as the request's ``anatomy``.
        anatomies: the checkpoint's anatomy names (shown in the task's info and config).
        landmarks: this task's landmark names (its ``labels``); empty for the generic task.
        review_threshold: confidence below which a landmark is flagged for review, unless the checkpoint holds
            one for the anatomy (chosen on the validation split in training) or the request gives one.
        min_image_size: the smallest image side, in pixels, the task accepts.
        label_radius: disk radius (pixels) of the optional label image; 0: 1 % of the larger side, at least 2.

    Request parameters (MONAI Label's ``params``): ``anatomy`` (the generic task), ``result_file`` (``markups``,
    the default, or ``label``), ``review_threshold``.
    """

    def __init__(
        self,
        model: LandmarkModel,
        anatomy: str | None,
        anatomies: Sequence[str],
        landmarks: Sequence[str] = (),
        review_threshold: float = 0.3,
        min_image_size: int = 32,
        label_radius: float = 0.0,
    ) -> None:
        what = f"the {anatomy}" if anatomy else "any anatomy's (request parameter 'anatomy', else recognised)"
        super().__init__(
            type=InferType.DETECTION,
            labels=list(landmarks),
            dimension=2,
            description=f"GU2Net landmarks of {what}: Slicer markups file + result JSON (pixels, mm, confidence, review)",
            config={
                "anatomy": anatomy if anatomy else list(anatomies),
                "result_file": list(RESULT_FILES),
                "review_threshold": review_threshold,
            },
        )
        self.model, self.anatomy = model, anatomy
        self.review_threshold, self.min_image_size, self.label_radius = review_threshold, min_image_size, label_radius

    def is_valid(self) -> bool:
        return os.path.isfile(self.model.checkpoint)

    def _threshold(self, request: dict[str, Any], pred: Prediction) -> tuple[float, str]:
        if request.get("review_threshold") not in (None, "") and not isinstance(request.get("review_threshold"), list):
            return float(request["review_threshold"]), "request"
        if pred.review_threshold is not None:
            return pred.review_threshold, "checkpoint"
        return float(self.review_threshold), "app config"

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run one request: ``request["image"]`` is the image's path (MONAI Label resolved the datastore id).

        Raises:
            RequestError: an unknown or unrecognisable anatomy, an unknown ``result_file``, or an image that is missing,
                unreadable, 3D or smaller than ``min_image_size``; the message says which.
        """
        anatomy = self.anatomy or request.get("anatomy")
        if isinstance(anatomy, list):  # MONAI Label's clients send the task's config list when nothing was chosen
            anatomy = None
        result_file = request.get("result_file", "markups")
        result_file = result_file[0] if isinstance(result_file, list) else result_file
        if result_file not in RESULT_FILES:
            raise RequestError(f"unknown result_file {result_file!r}; choose one of {list(RESULT_FILES)}.")
        image = str(request.get("image") or "")
        try:
            geometry = read_geometry(image)
        except (FileNotFoundError, ValueError) as e:
            raise RequestError(str(e)) from None
        if geometry.ndim > 2 and any(s > 1 for s in geometry.size[2:]):
            raise RequestError(f"image {image}: a {'x'.join(map(str, geometry.size))} volume; the model takes 2D X-rays.")
        w, h = geometry.size[:2]
        if min(w, h) < self.min_image_size:
            raise RequestError(
                f"image {image}: {w}x{h} pixels is too small; the app accepts images of at least "
                f"{self.min_image_size}x{self.min_image_size} (conf min_image_size)."
            )
        pred = self.model.predict(image, str(anatomy) if anatomy else None)  # None: the recogniser tells
        threshold, source = self._threshold(request, pred)
        result = result_json(pred, geometry, threshold, source)
        stem = os.path.basename(image).split(".")[0]
        if result_file == "label":
            fd, path = tempfile.mkstemp(prefix=f"{stem}_", suffix=".nrrd")
            os.close(fd)
            radius = self.label_radius or max(2.0, round(0.01 * max(w, h)))
            label_image(pred.points, geometry, path, radius)
            result["label_image"] = {"values": "landmark index + 1 (0: background)", "radius_px": radius}
        else:
            doc = slicer_markups(
                pred.anatomy,
                pred.landmarks,
                np.asarray([lm["position"] for lm in result["landmarks"]]),
                pred.confidence,
                [lm["review"] for lm in result["landmarks"]],
            )
            fd, path = tempfile.mkstemp(prefix=f"{stem}_", suffix=".mrk.json")
            with os.fdopen(fd, "w") as f:
                f.write(dumps(doc))
        logger.info(f"{pred.anatomy} landmarks of {image}: {result['review_count']} to review; {result_file} {path}")
        return path, result
