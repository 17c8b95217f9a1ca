"""The project's datalist: MONAI's ``training``/``validation``/``test`` JSON plus the anatomies.

Format (paths relative to the datalist file's folder unless absolute)::

    {
      "anatomies": {
        "head": {"landmarks": ["sella", "nasion", ...], "size": [416, 512], "spacing": [0.1, 0.1]},
        "chest": {"landmarks": 6, "size": [512, 512]}
      },
      "training":   [{"image": "head/001.bmp", "anatomy": "head", "landmarks": [[x, y], ...],
                      "spacing": [0.1, 0.1]}],
      "validation": [...],
      "test":       [...]
    }

Landmarks are ``(x, y)`` in pixels of the original image (x right, y down, pixel centres at integers);
``null``/NaN marks a landmark that is not annotated. The spacing (mm per pixel, per axis ``[sx, sy]``) of an
item is, in this order: the item's ``spacing``; a DICOM image's header (``PixelSpacing``, else
``ImagerPixelSpacing``; read when images are checked); the anatomy's ``spacing``; else none, and the unit is
pixels. Items say which in ``spacing_source`` (an item may state its own, e.g. the hand's wrist rule).
The landmark and spacing rules are :mod:`scripts.landmark_rules`; every check here names the datalist file,
the split, the item and the image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .anatomies import AnatomySet
from .errors import BundleError
from .image_io import read_image_header
from .landmark_rules import check_landmarks, resolve_spacing

__all__ = ["DatalistError", "load_anatomies", "load_datalist", "inference_items", "read_datalist_json"]

SPLITS = ("training", "validation", "test")


class DatalistError(BundleError, ValueError):
    """A datalist or one of its items is wrong; the message says where and what."""


def read_datalist_json(path: str) -> dict[str, Any]:
    """The datalist file's JSON object, unchecked beyond that."""
    if not os.path.isfile(path):
        raise DatalistError(f"datalist {path}: file does not exist.")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatalistError(f"datalist {path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise DatalistError(f"datalist {path}: the top level must be a JSON object.")
    return data


def _declared_anatomies(data: dict[str, Any], datalist_path: str, required: bool = True) -> AnatomySet | None:
    """The anatomies a datalist's parsed JSON declares; None without an ``anatomies`` section unless ``required``."""
    if "anatomies" not in data:
        if required:
            raise DatalistError(f"datalist {datalist_path}: no 'anatomies' section.")
        return None
    try:
        return AnatomySet.from_dict(data["anatomies"], source=f"datalist {datalist_path}")
    except ValueError as e:
        raise DatalistError(str(e)) from None


def load_anatomies(datalist_path: str) -> AnatomySet:
    """The ordered anatomies (network domains) declared in a datalist."""
    return _declared_anatomies(read_datalist_json(datalist_path), datalist_path)


def workflow_anatomies(workflow: str, ckpt_path: str, datalist_path: str) -> AnatomySet:
    """The anatomies (network domains, in order) a workflow uses: the one rule every config calls.

    - ``training``: the datalist's (a resumed checkpoint with other anatomies is refused when it loads);
    - ``inference``: the checkpoint's when it exists (no datalist needed), else the datalist's;
    - ``evaluation``: the checkpoint's, measured at the SDR radii of the evaluated datalist where it declares
      the same anatomy (the radii are the data's protocol, not the model's);
    - ``add_anatomy``: the checkpoint's, in their order, then those the datalist declares that it lacks.
    """
    if workflow == "training":
        return load_anatomies(datalist_path)
    if workflow == "inference":
        return AnatomySet.from_checkpoint(ckpt_path) if os.path.isfile(ckpt_path) else load_anatomies(datalist_path)
    if workflow == "evaluation":
        own = _declared_anatomies(read_datalist_json(datalist_path), datalist_path, required=False)
        ckpt = AnatomySet.from_checkpoint(ckpt_path)
        return ckpt.with_radii_of(own) if own else ckpt
    if workflow == "add_anatomy":
        if not ckpt_path:
            raise ValueError("add_anatomy needs the trained model to extend: --base_ckpt /path/to/model.pt")
        base = AnatomySet.from_checkpoint(ckpt_path)
        new = [a for a in load_anatomies(datalist_path) if a.name not in base.index]
        if not new:
            raise DatalistError(f"datalist {datalist_path}: declares no anatomy that checkpoint {ckpt_path} lacks.")
        return AnatomySet([*base, *new])
    raise ValueError(
        f"workflow_anatomies: unknown workflow {workflow!r} (training, inference, evaluation or add_anatomy)."
    )


def load_datalist(
    datalist_path: str,
    split: str | Sequence[str] = "training",
    anatomies: AnatomySet | None = None,
    require_landmarks: bool = True,
    check_images: bool = True,
    errors: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Load and validate the items of one split (or several) of a datalist.

    Args:
        datalist_path: path of the datalist JSON.
        split: any list-valued key of the datalist (``"training"``, ``"validation"``, ``"test"``, or e.g. ISBI's
            ``"test1"``/``"test2"``), or a list of them.
        anatomies: the anatomies to map names to domains (e.g. a checkpoint's); default: the datalist's own. An
            anatomy's default spacing is the datalist's own where it declares that anatomy (it describes the images).
        require_landmarks: False for inference lists, whose items need no landmarks.
        check_images: read every image's header (exists, readable, landmarks inside it).
        errors: where given (inference), an item that fails its checks is skipped and its message appended here
            instead of raised; the file's structure (JSON, anatomies, splits) is still checked strictly.

    Returns:
        items with keys ``image`` (absolute path), ``anatomy``, ``domain``, ``size`` (network input ``[W, H]``),
        ``spacing`` (``[sx, sy]``), ``unit`` (``"mm"`` or ``"px"``), ``split`` (the key it was listed under) and,
        when present, ``landmarks`` (float32 ``(N, 2)``, NaN where not annotated).
    """
    data = read_datalist_json(datalist_path)
    own = _declared_anatomies(data, datalist_path, required=anatomies is None)
    anatomies = anatomies or own
    # the data's own spacing, not that of the data a checkpoint was trained on, measures these images
    spacings = {a.name: a.spacing for a in own} if own else {}
    root = os.path.dirname(os.path.abspath(datalist_path))
    splits = [split] if isinstance(split, str) else list(split)
    items: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for s in splits:
        if s not in data:
            have = [k for k, v in data.items() if isinstance(v, list)]
            raise DatalistError(f"datalist {datalist_path}: no split {s!r}; its splits are {have}.")
        if not isinstance(data[s], list):
            raise DatalistError(f"datalist {datalist_path}: split {s!r} must be a list of items.")
        for i, raw in enumerate(data[s]):
            where = f"datalist {datalist_path}, {s}[{i}]"
            try:
                item = _validate_item(raw, where, root, anatomies, require_landmarks, check_images, spacings)
                item["split"] = s
                key = item["image"]
                if key in seen:
                    raise DatalistError(f"{where}: image {key} is listed twice (also at {seen[key]}).")
            except DatalistError as e:
                if errors is None:
                    raise
                errors.append(str(e))
                continue
            seen[key] = f"{s}[{i}]"
            items.append(item)
    return items


def _validate_item(
    raw: Any,
    where: str,
    root: str,
    anatomies: AnatomySet,
    require_landmarks: bool,
    check_images: bool,
    spacings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if not isinstance(raw, dict) or "image" not in raw:
        raise DatalistError(f"{where}: an item must be an object with an 'image' path.")
    image = raw["image"] if os.path.isabs(raw["image"]) else os.path.join(root, raw["image"])
    where = f"{where} (image {image})"
    if "anatomy" not in raw:
        raise DatalistError(f"{where}: no 'anatomy'.")
    try:
        domain = anatomies.domain(str(raw["anatomy"]))
    except ValueError as e:
        raise DatalistError(f"{where}: {e}") from None
    anatomy = anatomies[domain]
    header = None
    if check_images:
        try:
            header = read_image_header(image)
        except (FileNotFoundError, ValueError) as e:
            raise DatalistError(f"{where}: {e}") from None
    default = (spacings or {}).get(anatomy.name, anatomy.spacing)
    spacing, source = resolve_spacing(raw.get("spacing"), header, default, where, DatalistError)
    item: dict[str, Any] = {
        "image": image,
        "anatomy": anatomy.name,
        "domain": domain,
        "size": list(anatomy.size),
        "spacing": list(spacing) if spacing is not None else [1.0, 1.0],
        "unit": "mm" if spacing is not None else "px",
        "spacing_source": str(raw.get("spacing_source", source)),
    }
    if "landmarks" in raw and raw["landmarks"] is not None:
        size = header.size if header is not None else None
        owner = f"anatomy {anatomy.name!r}"
        points = check_landmarks(raw["landmarks"], anatomy.num_landmarks, where, DatalistError, size, owner=owner)
        item["landmarks"] = points.astype(np.float32)
    elif require_landmarks:
        raise DatalistError(f"{where}: no 'landmarks'.")
    return item


def inference_items(
    anatomies: AnatomySet,
    images: Sequence[str] | None = None,
    anatomy: str | None = None,
    datalist_path: str | None = None,
    split: str = "test",
    errors: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Items to run inference on: ``images`` of one ``anatomy``, or else a datalist split (landmarks optional).

    ``errors``: where given, an image that fails its checks is skipped and its message appended (see ``load_datalist``).
    """
    if images:
        if not anatomy:
            raise DatalistError(f"inference on {len(images)} image(s) needs an anatomy (one of {anatomies.names}).")
        items = []
        for i, p in enumerate(images):
            try:
                items.append(
                    _validate_item({"image": os.path.abspath(p), "anatomy": anatomy}, f"input image {i}", "", anatomies, False, True)
                )
            except DatalistError as e:
                if errors is None or "unknown anatomy" in str(e):
                    raise
                errors.append(str(e))
        return items
    if not datalist_path:
        raise DatalistError("inference needs input images (with their anatomy) or a datalist.")
    return load_datalist(datalist_path, split, anatomies=anatomies, require_landmarks=False, errors=errors)
