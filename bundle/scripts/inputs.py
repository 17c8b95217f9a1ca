"""What a run takes in, checked before it starts: inference images (one bad image is skipped, not the batch) and
the training data (no untrained anatomy, no training without validation).

Inference (:func:`inference_inputs`, :func:`finish_inference`): every input is checked before the model is built:
the file exists and ITK reads its header, its pixels decode whole (a truncated PNG or JPEG is refused, not read as
half grey), it is at least ``min_size`` pixels per side (a warning where it is enlarged more than
``ENLARGE_WARNING`` times to the network input). An image that fails is skipped with a warning naming it and
why; the others are processed; the run then ends with exit status 1 and, as its last line, how many were skipped.
``stop_on_error`` stops at the first instead. Images given without their anatomy are recognised first
(:mod:`scripts.recognition`); one of an unknown anatomy is skipped the same way. Output names are unique per
input (:func:`output_names`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .anatomies import AnatomySet
from .datalist import DatalistError, inference_items
from .errors import BundleError, as_flag
from .files import image_stem
from .image_io import read_image_header

if TYPE_CHECKING:
    from .recognition import Recognition

__all__ = [
    "InputError",
    "InputItems",
    "MIN_IMAGE_SIZE",
    "check_image_pixels",
    "check_training_data",
    "finish_inference",
    "inference_inputs",
    "output_names",
]

logger = logging.getLogger(__name__)

MIN_IMAGE_SIZE = 32  # px per side; below it an image is refused (a 1x1 image gave a landmark outside it)
ENLARGE_WARNING = 4.0  # an image enlarged more than this to the network input gets a warning
# what SaveLandmarksd strips from a file name (the longest first: .nii.gz before .gz)


class InputError(BundleError):
    """An input image cannot be used, or the inputs asked for are ambiguous."""


class InputItems(list):
    """The items inference runs on, with the inputs it skipped (``problems``) and how outputs were named."""

    def __init__(self, items: Sequence[dict[str, Any]] = (), problems: Sequence[str] = (), naming: str = "") -> None:
        super().__init__(items)
        self.problems, self.naming = list(problems), naming


def check_image_pixels(path: str) -> None:
    """Decode the whole image once; raise :class:`InputError` naming it if its pixel data is cut or damaged.

    PIL decodes what it knows (PNG, JPEG, BMP, TIFF) and, unlike ITK, refuses a truncated file instead of filling
    the rest with grey; ITK reads the others (DICOM, NIfTI, MHA, NRRD).
    """
    try:
        with Image.open(path) as im:
            im.load()
        return
    except (UnidentifiedImageError, Image.DecompressionBombError):
        pass  # not a PIL format, or too large for PIL's guard: ITK reads it below
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image file {path}: its pixel data cannot be decoded ({e}); the file is truncated or damaged.") from None
    import itk

    try:
        itk.imread(path)
    except (RuntimeError, OSError) as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise InputError(f"image file {path}: its pixel data cannot be read ({last}); the file is truncated or damaged.") from None


def _check_size(item: dict[str, Any], anatomies: AnatomySet, min_size: int) -> None:
    w, h = read_image_header(item["image"]).size[:2]
    if min(w, h) < min_size:
        raise InputError(
            f"image file {item['image']}: {w}x{h} pixels, below the minimum of {min_size} per side (--min_image_size): "
            "too small to place landmarks on."
        )
    size = anatomies[item["anatomy"]].size
    factor = max(size[0] / w, size[1] / h)
    if factor > ENLARGE_WARNING:
        logger.warning(
            f"image file {item['image']}: {w}x{h} pixels, enlarged {factor:.1f}x to the {item['anatomy']} network "
            f"input {size[0]}x{size[1]}: its landmarks are unreliable."
        )


def _strip_extension(name: str) -> tuple[str, str]:
    """``name`` split into its stem and its image suffix (``scripts.files.image_stem``'s rule)."""
    stem = image_stem(name)
    return stem, name[len(stem) :]


def output_names(paths: Sequence[str]) -> tuple[list[str], str]:
    """A unique output name (no extension) per input path, and a sentence saying how they were made.

    The rule: the file name without its extension; where two inputs share it, every output keeps its folder
    relative to the inputs' common folder (``a/scan``, ``b/scan``); where two still collide (the same name with
    another extension, ``full.png`` and ``full.jpg``), the extension is appended (``full_png``, ``full_jpg``).
    """
    split = [_strip_extension(os.path.basename(p)) for p in paths]
    names = [stem for stem, _ in split]
    if len(set(names)) == len(names):
        return names, ""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(folders) if folders else ""
    names = [os.path.normpath(os.path.join(os.path.relpath(f, common), stem)) for f, (stem, _) in zip(folders, split)]
    notes = []
    if any(os.sep in n for n in names):
        notes.append(f"outputs keep the inputs' folders below {common}")
    counts = Counter(names)
    if any(c > 1 for c in counts.values()):
        names = [n + "_" + ext.lstrip(".").replace(".", "_") if counts[n] > 1 else n for n, (_, ext) in zip(names, split)]
        notes.append("where only the extension differs, it is appended to the name (e.g. full_png, full_jpg)")
    return names, "input file names repeat, so " + "; ".join(notes) + "."


def inference_inputs(
    anatomies: AnatomySet,
    images: Sequence[str] | None = None,
    anatomy: str | None = None,
    datalist_path: str | None = None,
    split: str = "test",
    stop_on_error: bool = False,
    min_size: int = MIN_IMAGE_SIZE,
    recognize: Callable[[str], Recognition] | None = None,
) -> InputItems:
    """The checked items inference runs on, each with a unique ``output_name``; skipped inputs in ``.problems``.

    ``images`` of one ``anatomy``, or else (no images, no anatomy) the datalist's ``split``. An ``anatomy`` without
    images is refused (it would otherwise run every anatomy of the split). ``images`` without an ``anatomy`` need
    ``recognize`` (:func:`~scripts.recognition.anatomy_recognition`): each readable image gets the anatomy it
    recognises, and one it calls unknown is skipped like an unreadable one. ``stop_on_error``: raise at the first
    problem found instead of skipping the image (every header is checked before any image's pixels).
    """
    problems: list[str] | None = None if as_flag(stop_on_error, "stop_on_error") else []
    if not images and anatomy:
        raise InputError(
            f"--input_anatomy {anatomy} was given without input images (--input_images is empty): pass the images, "
            f"e.g. --input_images \"['a.png']\", or leave out --input_anatomy to run on the datalist's '{split}' split."
        )
    if images and not anatomy and recognize is not None:
        return _recognized_inputs(anatomies, images, recognize, problems, min_size)
    # first every header (exists, readable, DICOM spacing), then every image's pixels and size
    items = inference_items(anatomies, images, anatomy, datalist_path, split, errors=problems)
    if not images:
        logger.info(f"no input images given: running on the '{split}' split of {datalist_path} ({len(items)} images)")
    checked = []
    for item in items:
        try:
            check_image_pixels(item["image"])
            _check_size(item, anatomies, min_size)
        except (InputError, ValueError, FileNotFoundError) as e:
            if problems is None:
                raise InputError(str(e)) from None
            problems.append(str(e))
            continue
        checked.append(item)
    return _named(checked, problems, f"the '{split}' split of {datalist_path} is empty")


def _recognized_inputs(
    anatomies: AnatomySet,
    images: Sequence[str],
    recognize: Callable[[str], Recognition],
    problems: list[str] | None,
    min_size: int,
) -> InputItems:
    """:func:`inference_inputs` of images without an anatomy: each one's pixels are checked before it is recognised."""
    checked = []
    for path in images:
        try:
            path = os.path.abspath(path)
            if not os.path.isfile(path):
                raise InputError(f"input image {path}: does not exist.")
            check_image_pixels(path)
            rec = recognize(path)
            if not rec.known:
                raise InputError(rec.message(anatomies.names))  # the recogniser is fitted on the checkpoint's anatomies
            (item,) = inference_items(anatomies, [path], rec.anatomy)
            _check_size(item, anatomies, min_size)
        except (InputError, DatalistError, ValueError, FileNotFoundError) as e:
            if problems is None:
                raise InputError(str(e)) from None
            problems.append(str(e))
            continue
        item.update(rec.fields())
        checked.append(item)
    return _named(checked, problems, "no image was given")


def _named(checked: list[dict[str, Any]], problems: list[str] | None, empty: str) -> InputItems:
    """The usable items, each with a unique ``output_name``; an error when none is left."""
    for p in problems or []:
        logger.warning(f"skipped: {p}")
    if not checked:
        why = "; ".join(problems or []) or empty
        raise InputError(f"no input image can be used: {why}")
    names, note = output_names([it["image"] for it in checked])
    for item, name in zip(checked, names):
        item["output_name"] = name
    if note:
        logger.info(note)
    return InputItems(checked, problems or [], note)


def finish_inference(items: Sequence[dict[str, Any]], output_dir: str) -> None:
    """Say what was written; with skipped inputs, list them and exit with status 1, the count as the last line."""
    print(f"wrote landmarks and overlays for {len(items)} image(s) to {output_dir}", flush=True)
    naming = getattr(items, "naming", "")
    if naming:
        print(naming, flush=True)
    problems = getattr(items, "problems", [])
    if problems:
        import sys

        print(file=sys.stderr)  # after the progress bar's line
        for p in problems:
            print(f"skipped: {p}", file=sys.stderr)
        raise SystemExit(
            f"ERROR: {len(problems)} of {len(items) + len(problems)} input image(s) skipped (listed above); the other "
            f"images' landmarks are in {output_dir}."
        )


def check_training_data(
    datalist_path: str,
    anatomies: AnatomySet,
    training: Sequence[dict[str, Any]],
    validation: Sequence[dict[str, Any]],
    require_validation: bool = True,
) -> None:
    """Refuse an anatomy with no training item (the network would answer for it untrained) and, where
    ``require_validation``, an empty validation split (no best model, which evaluation and inference load); warn
    for an anatomy with no validation item."""
    counts = Counter(it["anatomy"] for it in training)
    untrained = [a for a in anatomies.names if not counts[a]]
    if untrained:
        raise DatalistError(
            f"datalist {datalist_path}: anatomy {', '.join(map(repr, untrained))} is declared in 'anatomies' but has "
            "no item in 'training': the network would answer for it untrained. Add training items for it, or remove "
            "it from 'anatomies'."
        )
    if not validation and as_flag(require_validation, "require_validation"):
        raise DatalistError(
            f"datalist {datalist_path}: 'validation' is empty: training chooses the best model (models/model.pt, "
            "which evaluation and inference load) on the validation images. Add validation items (e.g. move a few "
            "training items there)."
        )
    seen = Counter(it["anatomy"] for it in validation)
    unvalidated = [a for a in anatomies.names if not seen[a]]
    if unvalidated:
        logger.warning(
            f"datalist {datalist_path}: no validation item of {unvalidated}: the best model is chosen without them."
        )
