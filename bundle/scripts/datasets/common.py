"""What every data set reader shares: the prepared anatomy, input checks that name file and line, splits,
and the atomic write that merges an anatomy into an existing datalist.

A reader turns a data set, as its owners distribute it, into a :class:`PreparedAnatomy` (the anatomy's spec
plus its items per split) after checking everything; only then does :func:`write_datalist` touch the output,
through a temporary file and a rename, so a failed preparation leaves nothing partial behind.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..anatomies import Anatomy
from ..datalist import SPLITS, read_datalist_json
from ..files import image_stem, image_suffix, write_json_atomic
from ..image_io import read_image_header
from ..landmark_rules import check_landmarks

__all__ = [
    "PrepareError",
    "PreparedAnatomy",
    "checked_landmarks",
    "find_images",
    "read_csv_rows",
    "parse_numbers",
    "split_ids",
    "random_splits",
    "merge_datalist",
    "write_datalist",
]

class PrepareError(ValueError):
    """Bad input to a preparation; the message names the file (and line) and the problem."""


@dataclass
class PreparedAnatomy:
    """One anatomy ready for a datalist.

    Args:
        name: the anatomy's name (its key in ``anatomies``).
        spec: its ``anatomies`` entry (``landmarks``, ``size``, optional ``spacing``, ``sdr_radii``, ...).
        splits: split name -> items (``image`` absolute, ``anatomy``, ``landmarks``, optional ``spacing``).
        report: what was prepared and what was left out and why, recorded in the datalist and printed.
    """

    name: str
    spec: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]]
    report: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {s: len(items) for s, items in self.splits.items()}


def parse_numbers(values: Sequence[str], where: str) -> np.ndarray:
    """Floats from text cells; an empty cell is NaN (not annotated), text that is no number or NaN/inf is an error."""
    out = np.empty(len(values), dtype=np.float64)
    for k, v in enumerate(values):
        v = v.strip()
        if v == "":
            out[k] = np.nan
            continue
        try:
            out[k] = float(v)
        except ValueError:
            raise PrepareError(f"{where}: value {k + 1} ({v!r}) is not a number.") from None
        if not math.isfinite(out[k]):
            raise PrepareError(f"{where}: value {k + 1} is {v!r}; leave both cells of a landmark empty if it is not annotated.")
    return out


def read_csv_rows(path: str, skip_header: bool = False) -> Iterator[tuple[str, list[str]]]:
    """``(where, cells)`` for each non-empty row of a CSV, ``where`` being ``"<file>, line <n>"``."""
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: file does not exist.")
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if (skip_header and n == 1) or not any(c.strip() for c in row):
                continue
            yield f"{path}, line {n}", row


def checked_landmarks(points: Any, count: int, image: str, where: str) -> list[list[float] | None]:
    """Check a label row's ``count`` points ``(x, y)`` in pixels against the image for the datalist.

    ``points`` holds the row's ``2 * count`` coordinates, flat or as pairs. The image must exist and be
    readable; the points obey :func:`~scripts.landmark_rules.check_landmarks` (a fully NaN point is "not
    annotated", ``null`` in the datalist). An error names ``where`` (the label file and line) and the image.
    """
    flat = np.ravel(np.asarray(points, dtype=np.float64))
    if flat.size != 2 * count:
        raise PrepareError(f"{where}: {flat.size} coordinates, expected {2 * count} ({count} landmarks x, y).")
    try:
        header = read_image_header(image)
    except (FileNotFoundError, ValueError) as e:
        raise PrepareError(f"{where}: {e}") from None
    pts = check_landmarks(flat.reshape(count, 2), count, where, PrepareError, header.size, image)
    return [None if np.isnan(p).any() else [round(float(p[0]), 3), round(float(p[1]), 3)] for p in pts]


def find_images(folder: str, pattern: str = "*") -> dict[str, str]:
    """Image files under ``folder`` (recursively) by stem, e.g. ``{"001": "/raw/RawImage/TrainingData/001.bmp"}``.

    Two files with the same stem (``001.bmp`` and ``001.jpg``) are an error: the image id would be ambiguous.
    """
    found: dict[str, str] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            if image_suffix(name) is None or not fnmatch.fnmatch(name, pattern):
                continue
            stem, path = image_stem(name), os.path.join(root, name)
            if stem in found:
                raise PrepareError(f"duplicate image id {stem!r}: {found[stem]} and {path}.")
            found[stem] = path
    return found


def split_ids(ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """A reproducible random split of ``ids`` into training / validation / test (sizes rounded, >= 1 training id).

    The ids are shuffled by ``numpy.random.default_rng(seed)``; each split is returned in sorted order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise PrepareError(f"validation and test fractions must be in [0, 1) with a sum below 1, got {val_fraction}, {test_fraction}.")
    order = [ids[k] for k in np.random.default_rng(seed).permutation(len(ids))]
    n_test = min(round(len(ids) * test_fraction), max(len(ids) - 1, 0))
    n_val = min(round(len(ids) * val_fraction), max(len(ids) - 1 - n_test, 0))
    return {
        "training": sorted(order[n_test + n_val :]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def random_splits(
    items: Mapping[str, dict[str, Any]], val_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Items (by id) of a data set without an official split, drawn by :func:`split_ids`, and how they were drawn."""
    chosen = split_ids(sorted(items), val_fraction, test_fraction, seed)
    how = f"drawn with seed {seed} (val_fraction {val_fraction:.3g}, test_fraction {test_fraction:.3g})"
    return {split: [items[k] for k in ids] for split, ids in chosen.items()}, how


def _relative_to(path: str, folder: str) -> str:
    """``path`` relative to ``folder`` when it lies inside it (the datalist moves with it), else absolute."""
    rel = os.path.relpath(path, folder)
    return path if rel.startswith(os.pardir) else rel


def merge_datalist(existing: Mapping[str, Any], prepared: PreparedAnatomy, out_dir: str) -> dict[str, Any]:
    """``existing`` with ``prepared``'s anatomy added, or replaced (spec and all its items); other anatomies kept."""
    data = {k: (list(v) if isinstance(v, list) else v) for k, v in existing.items()}
    anatomies = dict(data.get("anatomies", {}))
    anatomies[prepared.name] = prepared.spec  # a replaced anatomy keeps its place (its domain index)
    data["anatomies"] = anatomies
    for key in [k for k, v in data.items() if isinstance(v, list)]:
        data[key] = [item for item in data[key] if item.get("anatomy") != prepared.name]
        if not data[key] and key not in SPLITS:
            del data[key]  # an extra split (e.g. test2) that only this anatomy had
    for split, items in prepared.splits.items():
        data.setdefault(split, [])
        data[split] += [{**item, "image": _relative_to(item["image"], out_dir)} for item in items]
    for split in SPLITS:
        data.setdefault(split, [])
    data["prepared"] = {**data.get("prepared", {}), prepared.name: prepared.report}
    return data


def write_datalist(out_dir: str, prepared: PreparedAnatomy) -> str:
    """Merge ``prepared`` into ``out_dir/datalist.json`` (created if absent), atomically; return its path."""
    out_dir = os.path.abspath(out_dir)
    path = os.path.join(out_dir, "datalist.json")
    try:
        Anatomy.from_dict(prepared.name, prepared.spec, source="prepare")
        existing = read_datalist_json(path) if os.path.isfile(path) else {}
    except ValueError as e:  # a bad spec, or an existing datalist that is not a JSON object
        raise PrepareError(f"{e} Nothing was written.") from None
    write_json_atomic(merge_datalist(existing, prepared, out_dir), path, indent=1)
    return path
