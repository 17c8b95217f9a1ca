"""3D Slicer markups JSON: predicted landmarks as a named point list, and annotated ones read back.

The file follows Slicer's markups schema (v1.0.3, the version MONAI Label's own detection writer names): one
``Fiducial`` markup whose control points are the landmarks, each with its name as ``label`` and its ``position``
in mm in the LPS coordinate system, from the image's geometry as ITK reads it (z = 0 for 2D images). Slicer
shows it as a point list named after the anatomy, one labelled point per landmark, on top of the image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .geometry import ImageGeometry

__all__ = ["MARKUPS_SCHEMA", "MarkupsError", "slicer_markups", "read_markups_points", "markups_to_pixels", "dumps"]

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


class MarkupsError(ValueError):
    """A markups file cannot be read as landmarks; the message says which file and why."""


def slicer_markups(
    anatomy: str,
    names: Sequence[str],
    positions: np.ndarray,
    confidence: np.ndarray,
    review: Sequence[bool],
) -> dict[str, Any]:
    """A Slicer markups document with one ``Fiducial`` node holding one control point per landmark.

    Args:
        anatomy: the node's name (Slicer's point list name).
        names: landmark names, used as the control points' labels.
        positions: ``(N, 3)`` positions in mm, LPS.
        confidence: ``(N,)`` confidences, written into each point's description.
        review: per landmark, whether its confidence is below the review threshold (said in the description;
            such points are left unselected, so Slicer draws them in the node's colour, not the selected one).
    """
    points = []
    for k, (name, pos, conf, flag) in enumerate(zip(names, positions, confidence, review)):
        defined = bool(np.isfinite(pos).all())
        points.append(
            {
                "id": str(k + 1),
                "label": str(name),
                "description": f"confidence {float(conf):.3f}" + (" - review" if flag else ""),
                "associatedNodeID": "",
                "position": [float(v) for v in pos] if defined else [0.0, 0.0, 0.0],
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": not flag,
                "locked": False,
                "visibility": True,
                "positionStatus": "defined" if defined else "undefined",
            }
        )
    node = {
        "type": "Fiducial",
        "name": anatomy,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": points,
        "measurements": [],
        "display": {"visibility": True, "pointLabelsVisibility": True, "color": [1.0, 0.9, 0.1], "selectedColor": [0.1, 0.9, 0.3]},
    }
    return {"@schema": MARKUPS_SCHEMA, "markups": [node]}


def read_markups_points(data: Any, source: str = "markups") -> tuple[str | None, dict[str, np.ndarray]]:
    """The named points of a Slicer markups document, in LPS mm.

    Args:
        data: the parsed JSON (``{"markups": [...]}``).
        source: the file's name, for messages.

    Returns:
        the first point node's name (or None) and ``label -> (3,) position`` for every defined control point
        of every ``Fiducial`` node (RAS positions are turned into LPS).

    Raises:
        MarkupsError: not a markups document, or a point without a usable label or position.
    """
    if not isinstance(data, dict) or not isinstance(data.get("markups"), list):
        raise MarkupsError(f"{source}: not a Slicer markups file (no 'markups' list).")
    name: str | None = None
    points: dict[str, np.ndarray] = {}
    for node in data["markups"]:
        if not isinstance(node, dict) or node.get("type") != "Fiducial":
            continue
        name = name if name is not None else node.get("name")
        system = str(node.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise MarkupsError(f"{source}: unknown coordinateSystem {system!r} (LPS or RAS).")
        for cp in node.get("controlPoints", []):
            if cp.get("positionStatus", "defined") != "defined":
                continue  # placed nowhere: a missing landmark
            label, pos = cp.get("label"), cp.get("position")
            if not label or not isinstance(pos, (list, tuple)) or len(pos) != 3:
                raise MarkupsError(f"{source}: control point {cp.get('id')!r} needs a label and a 3-number position.")
            p = np.asarray(pos, dtype=np.float64)
            if system == "RAS":
                p = p * np.array([-1.0, -1.0, 1.0])
            if str(label) in points:
                raise MarkupsError(f"{source}: landmark {label!r} is placed twice.")
            points[str(label)] = p
    if not points:
        raise MarkupsError(f"{source}: no defined Fiducial control points.")
    return name, points


def markups_to_pixels(
    data: Any, geometry: ImageGeometry, landmarks: Sequence[str], source: str = "markups"
) -> list[list[float] | None]:
    """Landmarks of one anatomy, in original-image pixels, from a markups document (None where not placed).

    Raises:
        MarkupsError: a point's label is not one of ``landmarks``.
    """
    _, points = read_markups_points(data, source)
    unknown = sorted(set(points) - set(landmarks))
    if unknown:
        raise MarkupsError(f"{source}: point label(s) {unknown} are not landmarks of this anatomy ({list(landmarks)[:5]}...).")
    out: list[list[float] | None] = []
    for name in landmarks:
        if name in points:
            x, y = geometry.physical_to_index(points[name][None])[0]
            out.append([float(x), float(y)])
        else:
            out.append(None)
    return out


def dumps(doc: dict[str, Any]) -> str:
    """Indented strict JSON."""
    return json.dumps(doc, indent=2, allow_nan=False)
