"""Any other anatomy (the pelvis, a knee, ...): a landmark file a user writes by hand, as CSV or JSON.

CSV: a header row, then one row per image (see ``docs/data.md`` for a worked example)::

    image,<name>_x,<name>_y,...[,spacing_x,spacing_y][,split]

JSON::

    {"landmarks": ["name", ...] or a count, "spacing": [sx, sy], "sdr_radii": [3, 6, 9],
     "items": [{"image": "...", "landmarks": [[x, y] or null, ...], "spacing": [sx, sy], "split": "test"}]}

Coordinates are pixels of the original image (x right, y down); an unannotated landmark is two empty cells
(CSV) or ``null`` (JSON). Image paths are relative to the landmark file's folder, or absolute; any ITK format.
Spacing (mm per pixel, per axis) is optional: per image, or for all images (``spacing`` in JSON, ``--spacing``),
else from a DICOM image's header, else none: the unit is pixels. Every image must then have the same unit.
``split`` is optional: images without one are drawn at random (``--val-fraction``, ``--test-fraction``, ``--seed``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..datalist import SPLITS
from ..image_io import read_image_header
from ..landmark_rules import as_points, parse_spacing
from .common import PreparedAnatomy, PrepareError, checked_landmarks, parse_numbers, random_splits, read_csv_rows

__all__ = ["read_landmark_file", "prepare_generic"]


@dataclass
class _Row:
    where: str
    image: str
    points: np.ndarray  # (N, 2), NaN where not annotated
    spacing: list[float] | None
    split: str | None


def _spacing(value: Any, where: str) -> list[float] | None:
    """A row's or the file's spacing as ``[sx, sy]``; None where it gives none (absent, or empty CSV cells)."""
    if value is None or (isinstance(value, Sequence) and all(v in ("", None) for v in value)):
        return None
    return list(parse_spacing(value, where, PrepareError))


def _read_csv(path: str) -> tuple[list[str], dict[str, Any], list[_Row]]:
    rows = read_csv_rows(path)
    try:
        where, header = next(rows)
    except StopIteration:
        raise PrepareError(f"{path}: empty; expected a header 'image,<name>_x,<name>_y,...'.") from None
    header = [h.strip() for h in header]
    extra = [h for h in ("spacing_x", "spacing_y", "split") if h in header]
    coords = header[1 : len(header) - len(extra)]
    if header[0] != "image" or header[len(header) - len(extra) :] != extra or ("spacing_x" in extra) != ("spacing_y" in extra):
        raise PrepareError(f"{where}: the header must be 'image', then <name>_x,<name>_y pairs, then optionally spacing_x,spacing_y and split.")
    names = [x[:-2] for x in coords[0::2]]
    if not coords or len(coords) % 2 or coords[0::2] != [f"{n}_x" for n in names] or coords[1::2] != [f"{n}_y" for n in names]:
        raise PrepareError(f"{where}: landmark columns must come in pairs <name>_x,<name>_y, got {coords}.")
    out = []
    for where, cells in rows:
        if len(cells) != len(header):
            raise PrepareError(f"{where}: {len(cells)} values, expected {len(header)} ({','.join(header)}).")
        get = dict(zip(header, cells))
        points = parse_numbers(cells[1 : 1 + len(coords)], where).reshape(-1, 2)
        spacing = _spacing([get["spacing_x"], get["spacing_y"]], where) if "spacing_x" in get else None
        out.append(_Row(where, cells[0].strip(), points, spacing, get.get("split", "").strip() or None))
    return names, {}, out


def _read_json(path: str) -> tuple[list[str] | int, dict[str, Any], list[_Row]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise PrepareError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) or "landmarks" not in data:
        raise PrepareError(f"{path}: expected an object with 'landmarks' (names or a count) and 'items' (a list).")
    out = []
    for i, item in enumerate(data["items"]):
        where = f"{path}, items[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not isinstance(item.get("landmarks"), list):
            raise PrepareError(f"{where}: an item needs 'image' (a path) and 'landmarks' (a list of [x, y] or null).")
        points = as_points(item["landmarks"], where, PrepareError)
        given = np.array([p is not None for p in item["landmarks"]])
        if not np.isfinite(points[given]).all():
            raise PrepareError(f"{where}: landmark coordinates must be finite numbers; null marks one not annotated.")
        out.append(_Row(where, item["image"], points, _spacing(item.get("spacing"), where), item.get("split")))
    defaults = {k: data[k] for k in ("spacing", "sdr_radii") if data.get(k) is not None}
    return data["landmarks"], defaults, out


def read_landmark_file(path: str) -> tuple[list[str] | int, dict[str, Any], list[_Row]]:
    """A generic landmark file (``.csv`` or ``.json``): landmark names (or count), anatomy defaults, rows."""
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: file does not exist.")
    if path.lower().endswith(".json"):
        return _read_json(path)
    if path.lower().endswith(".csv"):
        return _read_csv(path)
    raise PrepareError(f"{path}: a landmark file must be .csv or .json.")


def prepare_generic(
    raw: str,
    anatomy: str,
    size: tuple[int, int] = (512, 512),
    spacing: Sequence[float] | None = None,
    sdr_radii: Sequence[float] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> PreparedAnatomy:
    """Check a hand-written landmark file and turn it into an anatomy.

    Args:
        raw: the ``.csv`` or ``.json`` landmark file.
        anatomy: the anatomy's name, e.g. ``"pelvis"``.
        size: the network input size ``(W, H)``, each divisible by 16.
        spacing: mm per pixel ``(sx, sy)`` of every image without its own (overrides the JSON's ``spacing``).
        sdr_radii: radii of the success detection rate in the anatomy's unit (default: 2/2.5/3/4 mm or 3/6/9 px).
        val_fraction, test_fraction, seed: the random draw of images whose file gives no ``split``.
    """
    path = os.path.abspath(raw)
    names, defaults, rows = read_landmark_file(path)
    if isinstance(names, int):
        names = [f"{anatomy}_{k + 1}" for k in range(names)]
    if not isinstance(names, list) or not names or len(set(names)) != len(names):
        raise PrepareError(f"{path}: landmark names must be unique and at least one, got {names!r}.")
    if not rows:
        raise PrepareError(f"{path}: no images.")
    default = _spacing(spacing, "--spacing") if spacing is not None else _spacing(defaults.get("spacing"), f"{path}: 'spacing'")
    folder = os.path.dirname(path)
    items: dict[str, dict[str, Any]] = {}
    given: dict[str, str] = {}  # image -> the split the file names
    seen: dict[str, str] = {}
    units: dict[str, str] = {}  # unit -> the first row with it
    for row in rows:
        image = os.path.normpath(os.path.join(folder, row.image))
        if image in seen:
            raise PrepareError(f"{row.where}: image {row.image} is listed twice (also at {seen[image]}).")
        seen[image] = row.where
        item: dict[str, Any] = {"image": image, "anatomy": anatomy, "id": row.image}
        item["landmarks"] = checked_landmarks(row.points, len(names), image, row.where)
        if row.spacing is not None:
            item["spacing"] = row.spacing
        units.setdefault("mm" if row.spacing or default or read_image_header(image).dicom_spacing else "px", row.where)
        if row.split is not None:
            if row.split not in SPLITS:
                raise PrepareError(f"{row.where}: split must be one of {list(SPLITS)} or empty, got {row.split!r}.")
            given[image] = row.split
        items[image] = item
    if len(units) > 1:
        raise PrepareError(f"{path}: mixed units: {units['mm']} has a spacing (mm), {units['px']} has none (pixels).")
    splits, how = random_splits({k: it for k, it in items.items() if k not in given}, val_fraction, test_fraction, seed)
    for image, split in given.items():
        splits[split].append(items[image])
    spec: dict[str, Any] = {"landmarks": list(names), "size": list(size)}
    if default is not None:
        spec["spacing"] = default
    if sdr_radii or defaults.get("sdr_radii"):
        spec["sdr_radii"] = [float(r) for r in (sdr_radii or defaults["sdr_radii"])]
    report = {
        "source": "generic",
        "labels": path,
        "unit": next(iter(units)),
        "split": f"{len(given)} images by the file's 'split'; the others {how}",
        "counts": {s: len(v) for s, v in splits.items()},
    }
    return PreparedAnatomy(anatomy, spec, splits, report)
