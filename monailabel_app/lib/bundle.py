"""The GU2Net bundle as this app serves it: its config files, its checkpoint and one inference path built from them.

Nothing of the network, the transforms or the decoding is copied here: :class:`LandmarkModel` asks the bundle's
configs (through ``monai.bundle.ConfigParser``) for the objects of its ``inference`` workflow and runs them on one
image (``scripts.ImagePredictor``: mirroring, decoding, the refinement stage where one was trained, the review
flag), so the landmarks equal those of ``python -m monai.bundle run inference`` on the same image and checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.transforms import Compose

__all__ = [
    "BUNDLE_DIR",
    "bundle_config_files",
    "bundle_parser",
    "import_bundle_scripts",
    "LandmarkModel",
    "Prediction",
    "RequestError",
]

logger = logging.getLogger(__name__)

# the repository's bundle, beside this app (monailabel_app/lib/bundle.py -> bundle/)
BUNDLE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "bundle"))


def bundle_config_files(bundle_dir: str = BUNDLE_DIR, train: bool = False) -> list[str]:
    """The bundle config files the app reads, in the order ``ConfigParser`` layers them.

    This is the one place to change when the bundle's configs are reorganised. Inference reads
    ``configs/inference.yaml`` alone (it runs standalone); training layers ``configs/train.yaml`` on it, as the
    bundle's README does (``"['configs/inference.yaml','configs/train.yaml']"``).

    Args:
        bundle_dir: the bundle folder (holding ``configs/`` and ``scripts/``).
        train: the files of the ``training`` workflow instead of inference's.
    """
    names = ["inference.yaml", "train.yaml"] if train else ["inference.yaml"]
    return [os.path.join(bundle_dir, "configs", n) for n in names]


def import_bundle_scripts(bundle_dir: str = BUNDLE_DIR) -> Any:
    """Put the bundle folder on ``sys.path`` (as running from ``bundle/`` does) and return its ``scripts`` package."""
    if bundle_dir not in sys.path:
        sys.path.insert(0, bundle_dir)
    import scripts

    return scripts


def bundle_parser(bundle_dir: str = BUNDLE_DIR, overrides: Mapping[str, Any] | None = None, train: bool = False) -> Any:
    """A ``monai.bundle.ConfigParser`` of the bundle's configs (:func:`bundle_config_files`) with ``overrides``."""
    from monai.bundle import ConfigParser

    import_bundle_scripts(bundle_dir)
    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle_dir, train=train))
    if overrides:
        parser.update(dict(overrides))
    return parser


class RequestError(ValueError):
    """A request the app cannot serve (unknown anatomy, unreadable or unsuitable image); the message says why."""


@dataclass
class Prediction:
    """One image's landmarks as the bundle decodes them.

    Attributes:
        anatomy: the anatomy's name.
        landmarks: landmark names, in the network's channel order.
        points: ``(N, 2)`` ``(x, y)`` in original-image pixels.
        confidence: ``(N,)`` peak heatmap values.
        item: the bundle's inference item (``image``, ``spacing``, ``unit``, ``spacing_source``...).
        checkpoint: the checkpoint file that made it, and its modification time (seconds since the epoch).
        checkpoint_mtime: see ``checkpoint``.
        review_threshold: the threshold saved with the checkpoint for this anatomy (chosen on validation data), if any.
        recognition: where the request named no anatomy, what the recogniser saw (``anatomy_recognized``,
            ``anatomy_probability``, ``anatomy_distance``); empty otherwise.
        mirrored: the image was read as left-right mirrored (the points are in its own pixels, identities kept).
        refined: the refinement stage moved the points (a refiner lies beside the checkpoint).
    """

    anatomy: str
    landmarks: tuple[str, ...]
    points: np.ndarray
    confidence: np.ndarray
    item: dict[str, Any]
    checkpoint: str
    checkpoint_mtime: float
    review_threshold: float | None
    recognition: dict[str, Any] = field(default_factory=dict)
    mirrored: bool = False
    refined: bool = False


class _Loaded:
    """The pieces of one loaded checkpoint (all from the bundle's configs)."""

    def __init__(self, parser: Any, checkpoint: str, stamp: tuple[int, int]) -> None:
        scripts = sys.modules["scripts"]
        self.checkpoint, self.stamp = checkpoint, stamp
        ckpt = scripts.read_checkpoint(checkpoint, "cpu")
        # the inference workflow's own objects for one image (mirroring, decoding, refinement, review flag)
        self.predictor = scripts.ImagePredictor(parser, checkpoint=ckpt)
        self.anatomies = self.predictor.anatomies  # the checkpoint's own, in its domain order
        # the review thresholds saved with the checkpoint (scripts.ReviewThresholds), as the bundle's inference reads them
        self.review_thresholds = parser.get_parsed_content("review_thresholds")
        self.recognizer = scripts.load_recognizer(checkpoint, required=False, checkpoint=ckpt)
        self.load_image = Compose(parser.get_parsed_content("load_transforms"))

    def recognize(self, image: str) -> tuple[str, dict[str, Any]]:
        """The anatomy ``image`` shows, by the checkpoint's recogniser, and the recognition fields."""
        if self.recognizer is None:
            raise RequestError(
                f"the request parameter 'anatomy' is missing (one of {list(self.anatomies.names)}), and checkpoint "
                f"{self.checkpoint} has no anatomy recogniser to tell it."
            )
        try:
            rec = self.recognizer.recognize_file(image, self.load_image)
        except Exception as e:  # a reader's error with the file's name
            raise RequestError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        if not rec.known:
            raise RequestError(rec.message(self.recognizer.names) + "; name it with the request parameter 'anatomy'.")
        return str(rec.anatomy), rec.fields()


class LandmarkModel:
    """The served checkpoint, run through the bundle's inference configs; reloaded when the file changes.

    Args:
        checkpoint: the checkpoint file (``model.pt`` of a ``training`` run: weights and anatomies).
        bundle_dir: the bundle folder.
        overrides: more config overrides (e.g. ``{"inference_engine": "pytorch"}``), applied after ``ckpt_path``.

    Every request compares the file's modification time and size with those of the loaded one and loads it
    again when they differ (a training run publishes a new checkpoint by renaming it over the old one, so a
    half-written file is never seen). Loading and inference hold one lock: requests run one at a time.
    """

    def __init__(self, checkpoint: str, bundle_dir: str = BUNDLE_DIR, overrides: Mapping[str, Any] | None = None) -> None:
        self.checkpoint = os.path.abspath(checkpoint)
        self.bundle_dir = bundle_dir
        self.overrides = dict(overrides or {})
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._initialized = False
        self.loads = 0

    def parser(self, train: bool = False, **overrides: Any) -> Any:
        """The bundle's config parser for this checkpoint (``ckpt_path``) with the app's and these overrides."""
        return bundle_parser(self.bundle_dir, {"ckpt_path": self.checkpoint, **self.overrides, **overrides}, train=train)

    def anatomies(self) -> Any:
        """The anatomies served: the checkpoint's (``AnatomySet.from_checkpoint``), or, while there is no
        checkpoint file yet, those of the bundle's default datalist (the demo's), as its configs choose."""
        scripts = import_bundle_scripts(self.bundle_dir)
        if os.path.isfile(self.checkpoint):
            return scripts.AnatomySet.from_checkpoint(self.checkpoint)
        return self.parser().get_parsed_content("anatomies")

    def _stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.checkpoint)
        except FileNotFoundError:
            raise RequestError(
                f"checkpoint {self.checkpoint} does not exist: train a model first (POST /train/...) or start the "
                "server with --conf checkpoint PATH."
            ) from None
        return st.st_mtime_ns, st.st_size

    def _current(self) -> _Loaded:
        stamp = self._stamp()
        if self._loaded is None or self._loaded.stamp != stamp:
            parser = self.parser()
            if not self._initialized and "initialize" in parser:
                parser.get_parsed_content("initialize")  # the bundle's process settings (seed, allocator)
                self._initialized = True
            self._loaded = _Loaded(parser, self.checkpoint, stamp)
            self.loads += 1
            logger.info(f"loaded checkpoint {self.checkpoint} (load {self.loads}, mtime {stamp[0] / 1e9:.3f})")
        return self._loaded

    def predict(self, image: str, anatomy: str | None) -> Prediction:
        """Landmarks of ``anatomy`` in ``image`` (a file path), as the bundle's ``inference`` decodes them; without
        an ``anatomy``, the one the checkpoint's anatomy recogniser sees in the image (``Prediction.recognition``).

        Raises:
            RequestError: the anatomy is not one of the checkpoint's, the image shows none of them (or the
                checkpoint has no recogniser to tell), or the image cannot be read.
        """
        scripts = import_bundle_scripts(self.bundle_dir)
        with self._lock:
            loaded = self._current()
            recognition: dict[str, Any] = {}
            if not anatomy:
                anatomy, recognition = loaded.recognize(image)
            if anatomy not in loaded.anatomies.names:
                raise RequestError(f"unknown anatomy {anatomy!r}; this checkpoint's anatomies: {loaded.anatomies.names}.")
            try:
                item = scripts.inference_items(loaded.anatomies, [image], anatomy)[0]
                data = loaded.predictor.load(item)
            except Exception as e:  # DatalistError, or a reader's error with the file's name
                raise RequestError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
            out = loaded.predictor.predict(data)
            threshold = loaded.review_thresholds.thresholds.get(anatomy)  # chosen on validation data, if it was
            return Prediction(
                anatomy=anatomy,
                landmarks=loaded.anatomies[anatomy].landmarks,
                points=np.asarray(out["pred_landmarks"], dtype=np.float64),
                confidence=np.asarray(out["pred_confidence"], dtype=np.float64),
                item=item,
                checkpoint=self.checkpoint,
                checkpoint_mtime=loaded.stamp[0] / 1e9,
                review_threshold=None if threshold is None else float(threshold),
                recognition=recognition,
                mirrored=bool(out.get("pred_mirrored", False)),
                refined="pred_landmarks_coarse" in out,
            )
