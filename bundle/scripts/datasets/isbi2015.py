"""The head: the ISBI 2015 cephalometric challenge (Wang et al. 2016), 400 images, 19 landmarks, 0.1 mm per pixel.

Two layouts are read, each as distributed:

- official: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` and one text file per image and doctor,
  ``AnnotationsByMD/400_{senior,junior}/NNN.txt`` (19 lines ``x,y`` in pixels, then lines that are ignored);
- Payer et al.'s: ``images/NNN.{jpg,bmp,png}`` and ``annotations/all_{senior,junior}.csv``, one row per image
  ``id,x0,y0,...,x18,y18`` **in mm** (pixel = value / 0.1).

The label is the mean of the two doctors (the paper's), or one of them. The challenge's splits are fixed by
image id: training 001-150, Test1 151-300, Test2 301-400. A split whose images are all absent (e.g. Test2 not
downloaded) is left out and counted; an image missing from a split that is there is an error.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .common import PreparedAnatomy, PrepareError, checked_landmarks, find_images, parse_numbers, random_splits, read_csv_rows

__all__ = ["ISBI2015_LANDMARKS", "ISBI2015_SPACING", "read_isbi2015_labels", "prepare_isbi2015"]

ISBI2015_LANDMARKS = (
    "sella", "nasion", "orbitale", "porion", "subspinale", "supramentale", "pogonion", "menton", "gnathion",
    "gonion", "lower_incisal_incision", "upper_incisal_incision", "upper_lip", "lower_lip", "subnasale",
    "soft_tissue_pogonion", "posterior_nasal_spine", "anterior_nasal_spine", "articulare",
)  # fmt: skip
ISBI2015_SPACING = 0.1  # mm per pixel, both axes, for every image of the set
CHALLENGE_SPLITS = {"training": (1, 150), "test1": (151, 300), "test2": (301, 400)}
DOCTORS = ("senior", "junior")
LABELS = ("mean",) + DOCTORS
PROTOCOLS = ("paper", "challenge")

Labels = dict[str, tuple[np.ndarray, str]]  # image id -> (38 pixel coordinates, "file, line")


def _image_id(value: str, where: str) -> str:
    if not value.strip().isdigit() or not 1 <= int(value) <= 400:
        raise PrepareError(f"{where}: {value!r} is not an ISBI 2015 image id (001-400).")
    return f"{int(value):03d}"


def _read_text_labels(folder: str) -> Labels:
    n = len(ISBI2015_LANDMARKS)
    labels: Labels = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".txt"):
            continue
        path = os.path.join(folder, name)
        with open(path) as f:
            lines = f.read().splitlines()
        if len(lines) < n:
            raise PrepareError(f"{path}: {len(lines)} lines, expected at least {n} lines 'x,y'.")
        coords = []
        for k, line in enumerate(lines[:n]):
            cells = line.split(",")
            if len(cells) != 2:
                raise PrepareError(f"{path}, line {k + 1}: expected 'x,y', got {line!r}.")
            coords.append(parse_numbers(cells, f"{path}, line {k + 1}"))
        labels[_image_id(name[:-4], path)] = (np.concatenate(coords), path)
    return labels


def _read_csv_labels(path: str) -> Labels:
    n = 2 * len(ISBI2015_LANDMARKS)
    labels: Labels = {}
    for where, cells in read_csv_rows(path):
        if len(cells) != n + 1:
            raise PrepareError(f"{where}: {len(cells)} values, expected {n + 1} (id and {n} coordinates in mm).")
        key = _image_id(cells[0], where)
        if key in labels:
            raise PrepareError(f"{where}: duplicate image id {key} (also at {labels[key][1]}).")
        labels[key] = (parse_numbers(cells[1:], where) / ISBI2015_SPACING, where)
    return labels


def read_isbi2015_labels(raw: str, doctor: str) -> tuple[Labels, str]:
    """One doctor's landmarks in pixels by image id, from either layout, and the file or folder they came from."""
    folders = [os.path.join(raw, "AnnotationsByMD", f"400_{doctor}"), os.path.join(raw, f"400_{doctor}")]
    csvs = [os.path.join(raw, "annotations", f"all_{doctor}.csv"), os.path.join(raw, f"all_{doctor}.csv")]
    for folder in folders:
        if os.path.isdir(folder):
            return _read_text_labels(folder), folder
    for path in csvs:
        if os.path.isfile(path):
            return _read_csv_labels(path), path
    raise PrepareError(f"{raw}: no {doctor} annotations: looked for {folders + csvs}.")


def _labels(raw: str, label: str) -> tuple[Labels, list[str]]:
    if label not in LABELS:
        raise PrepareError(f"unknown label {label!r}; choose one of {list(LABELS)}.")
    if label != "mean":
        found, source = read_isbi2015_labels(raw, label)
        return found, [source]
    (senior, s_src), (junior, j_src) = (read_isbi2015_labels(raw, d) for d in DOCTORS)
    for mine, theirs, src in ((senior, junior, j_src), (junior, senior, s_src)):
        for key in mine.keys() - theirs.keys():
            raise PrepareError(f"{mine[key][1]}: image {key} has no label in {src}; the mean needs both doctors.")
    return {k: ((senior[k][0] + junior[k][0]) / 2, senior[k][1]) for k in senior}, [s_src, j_src]


def _images(raw: str) -> tuple[dict[str, str], str]:
    for sub in ("RawImage", "images"):
        folder = os.path.join(raw, sub)
        if os.path.isdir(folder):
            return {_image_id(k, v): v for k, v in find_images(folder).items()}, folder
    raise PrepareError(f"{raw}: no RawImage/ (official layout) or images/ folder.")


def prepare_isbi2015(
    raw: str,
    size: tuple[int, int] = (416, 512),
    protocol: str = "paper",
    label: str = "mean",
    val_fraction: float = 0.1,
    seed: int = 0,
    anatomy: str = "head",
) -> PreparedAnatomy:
    """Read the ISBI 2015 set from ``raw`` into a checked anatomy.

    Args:
        raw: the data set's folder, in the official layout or Payer et al.'s.
        size: the network input size ``(W, H)`` (the paper: 416 x 512).
        protocol: ``"paper"`` (training 001-150 incl. validation; test = Test1 + Test2) or ``"challenge"``
            (the same plus ``test1`` and ``test2`` splits).
        label: ``"mean"`` of the two doctors (the paper), ``"senior"`` or ``"junior"``.
        val_fraction: share of the training images held out for validation, drawn with ``seed``.
        seed: seed of that draw.
        anatomy: the anatomy's name in the datalist.
    """
    if protocol not in PROTOCOLS:
        raise PrepareError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    raw = os.path.abspath(raw)
    labels, sources = _labels(raw, label)
    images, image_folder = _images(raw)
    for key, path in images.items():
        if key not in labels:
            raise PrepareError(f"{path}: image {key} has no label in {sources}.")
    items: dict[str, list[dict[str, Any]]] = {}
    absent: dict[str, int] = {}
    for split, (lo, hi) in CHALLENGE_SPLITS.items():
        ids = [f"{i:03d}" for i in range(lo, hi + 1)]
        if not any(i in images for i in ids):
            absent[split] = sum(i in labels for i in ids)
            continue
        for i in ids:
            if i in labels and i not in images:
                raise PrepareError(f"{labels[i][1]}: a label for image {i}, which is not in {image_folder}.")
        items[split] = [
            {
                "image": images[i],
                "anatomy": anatomy,
                "id": i,
                "landmarks": checked_landmarks(labels[i][0], len(ISBI2015_LANDMARKS), images[i], labels[i][1]),
            }
            for i in ids
            if i in images
        ]
    splits, how = random_splits({it["id"]: it for it in items.pop("training", [])}, val_fraction, 0.0, seed)
    splits["test"] = items.get("test1", []) + items.get("test2", [])
    if protocol == "challenge":
        splits.update(items)
    spec = {"landmarks": list(ISBI2015_LANDMARKS), "size": list(size), "spacing": [ISBI2015_SPACING] * 2}
    report = {
        "source": "isbi2015",
        "raw": raw,
        "images": image_folder,
        "labels": f"{label} of {' and '.join(sources)}" if label == "mean" else sources[0],
        "protocol": protocol,
        "validation": f"{len(splits['validation'])} of the challenge's training images, {how}",
        "counts": {s: len(v) for s, v in splits.items()},
        "absent": {s: f"{n} labelled images absent" for s, n in absent.items()},
    }
    return PreparedAnatomy(anatomy, spec, splits, report)
