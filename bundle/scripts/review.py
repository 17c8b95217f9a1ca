"""The review flag: which landmarks a person should check, from a confidence threshold chosen on validation.

A landmark is flagged (``review: true``) when its confidence (the heatmap's peak) is below its anatomy's
threshold. The threshold is chosen on the validation split, each time training validates, and saved with the
checkpoint that validation saves (``model.pt``, under ``review``, as plain floats and strings):

    the smallest threshold that flags at least ``target_recall`` (default 95 %) of the validation landmarks off by
    more than the anatomy's largest SDR radius (e.g. 4 mm for the head),

that is, the most precise threshold that still catches that share; it sits halfway between the confidence of the
last landmark it must catch and the next higher confidence seen. 95 % on validation leaves a margin for the
90 % the product asks on unseen images. With fewer than ``min_positives`` such landmarks on validation (a
model that is rarely that far off, or a small validation split) a count that small says little, and the
documented default :data:`DEFAULT_REVIEW_THRESHOLD` is used instead; a checkpoint saved without thresholds
(older ones) uses it too. Every output says which threshold it used and where it came from.

The evaluation report states, on the evaluated split, the share of landmarks off by more than the largest radius
that are flagged (recall) and the share of flagged landmarks that are that far off (precision):
:func:`review_figures`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .anatomies import AnatomySet

__all__ = [
    "DEFAULT_REVIEW_THRESHOLD",
    "DEFAULT_TARGET_RECALL",
    "choose_review_threshold",
    "review_fields",
    "review_figures",
    "review_sentence",
    "ReviewThresholds",
    "ChooseReviewThresholds",
    "FlagReviewd",
]

# ISBI 2015, CPU budget: landmarks within 2 mm had confidences 0.42-0.51 (quartiles), those more than 10 mm off
# 0.01-0.36 (median 0.02); 0.3 separates most of them
DEFAULT_REVIEW_THRESHOLD = 0.3
DEFAULT_TARGET_RECALL = 0.95
MIN_POSITIVES = 3


def _percent(num: int, den: int) -> float:
    return float(100.0 * num / den) if den else float("nan")


def review_figures(errors: np.ndarray, review: np.ndarray, radius: float) -> dict[str, Any]:
    """How well the flag finds the landmarks off by more than ``radius`` (annotated landmarks only).

    Returns counts (``landmarks``, ``off``: error > radius, ``flagged``, ``flagged_off``) and percentages:
    ``recall`` (flagged among those off), ``precision`` (off among those flagged), ``flagged_share``.
    """
    e = np.asarray(errors, dtype=np.float64).ravel()
    f = np.asarray(review, dtype=bool).ravel()
    valid = np.isfinite(e)
    off, flagged = valid & (e > radius), valid & f
    n_off, n_flagged, hit = int(off.sum()), int(flagged.sum()), int((off & flagged).sum())
    return {
        "radius": float(radius),
        "landmarks": int(valid.sum()),
        "off": n_off,
        "flagged": n_flagged,
        "flagged_off": hit,
        "recall": _percent(hit, n_off),
        "precision": _percent(hit, n_flagged),
        "flagged_share": _percent(n_flagged, int(valid.sum())),
    }


def choose_review_threshold(
    confidence: np.ndarray,
    errors: np.ndarray,
    radius: float,
    target_recall: float = DEFAULT_TARGET_RECALL,
    min_positives: int = MIN_POSITIVES,
) -> tuple[float | None, dict[str, Any]]:
    """The smallest confidence threshold flagging ``target_recall`` of the landmarks off by more than ``radius``.

    Returns ``(threshold, details)``; the threshold is None when fewer than ``min_positives`` landmarks are that
    far off (the caller keeps its default). ``details`` holds the counts and the recall and precision the
    threshold reaches on these landmarks.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must lie in (0, 1], got {target_recall}.")
    c = np.asarray(confidence, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    valid = np.isfinite(c) & np.isfinite(e)
    c, e = c[valid], e[valid]
    positives = np.sort(c[e > radius])
    details: dict[str, Any] = {"radius": float(radius), "target_recall": float(target_recall), "landmarks": int(c.size),
                               "off": int(positives.size)}  # fmt: skip
    if positives.size < max(1, min_positives):
        details["reason"] = f"{positives.size} landmark(s) off by more than {radius:g} on validation (< {min_positives})"
        return None, details
    must_catch = positives[math.ceil(target_recall * positives.size) - 1]
    higher = c[c > must_catch]
    threshold = float((must_catch + higher.min()) / 2 if higher.size else np.nextafter(must_catch, np.inf))
    figures = review_figures(e, c < threshold, radius)
    details.update({k: figures[k] for k in ("recall", "precision", "flagged_share")})
    return threshold, details


class ReviewThresholds:
    """Per anatomy, the confidence below which a landmark is flagged for review; saved with the checkpoint.

    ``state_dict``/``load_state_dict`` make it a checkpoint object for MONAI's ``CheckpointSaver`` (plain
    floats, ints and strings: ``weights_only``-safe). An anatomy without a chosen threshold uses ``default``.
    """

    def __init__(self, default: float = DEFAULT_REVIEW_THRESHOLD, thresholds: Mapping[str, float] | None = None) -> None:
        self.default = float(default)
        self.thresholds: dict[str, float] = {k: float(v) for k, v in (thresholds or {}).items()}
        self.details: dict[str, dict[str, Any]] = {}

    def threshold(self, anatomy: str) -> float:
        return self.thresholds.get(anatomy, self.default)

    def source(self, anatomy: str) -> str:
        if anatomy in self.thresholds:
            return str(self.details.get(anatomy, {}).get("source", "checkpoint"))
        return f"default ({self.default:g})"

    def choose(
        self,
        records: Iterable[Mapping[str, Any]],
        anatomies: AnatomySet,
        target_recall: float = DEFAULT_TARGET_RECALL,
        min_positives: int = MIN_POSITIVES,
        source: str = "validation",
    ) -> dict[str, float]:
        """Choose every anatomy's threshold from evaluated records (``anatomy``, ``confidence``, ``errors``)."""
        records = list(records)
        for anatomy in anatomies:
            recs = [r for r in records if r["anatomy"] == anatomy.name]
            if not recs:
                continue
            conf = np.concatenate([np.asarray(r["confidence"], dtype=np.float64).ravel() for r in recs])
            errors = np.concatenate([np.asarray(r["errors"], dtype=np.float64).ravel() for r in recs])
            t, details = choose_review_threshold(conf, errors, max(anatomy.sdr_radii), target_recall, min_positives)
            if t is None:
                self.thresholds.pop(anatomy.name, None)
                details["source"] = f"default ({self.default:g}): {details.pop('reason')}"
            else:
                self.thresholds[anatomy.name] = t
                details["source"] = f"{source} (recall >= {100 * target_recall:g} % of landmarks off by > {details['radius']:g})"
            details["images"] = len(recs)
            self.details[anatomy.name] = details
        return {a.name: self.threshold(a.name) for a in anatomies}

    def describe(self) -> str:
        """One line for reports: each anatomy's threshold and its source, and the default."""
        own = [f"{name} {t:.3f} ({self.source(name)})" for name, t in self.thresholds.items()]
        return "; ".join(own + [f"default {self.default:g} for any other anatomy"])

    def state_dict(self) -> dict[str, Any]:
        return {"default": self.default, "thresholds": dict(self.thresholds), "details": {k: dict(v) for k, v in self.details.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.default = float(state.get("default", self.default))
        self.thresholds = {str(k): float(v) for k, v in (state.get("thresholds") or {}).items()}
        self.details = {str(k): dict(v) for k, v in (state.get("details") or {}).items()}

    @classmethod
    def from_checkpoint(cls, path: str, default: float = DEFAULT_REVIEW_THRESHOLD, override: float | None = None) -> ReviewThresholds:
        """The thresholds saved in a checkpoint (``review``); the default where it has none or does not exist yet.

        ``override``: one threshold for every anatomy instead (a config's ``review_threshold``).
        """
        import os

        from .checkpoints import read_checkpoint

        if override is not None:
            return cls(default=float(override))
        out = cls(default=default)
        if os.path.isfile(path):
            state = read_checkpoint(path).get("review")
            if isinstance(state, Mapping):
                out.load_state_dict(state)
        return out


class ChooseReviewThresholds:
    """Validation handler: after each validation, choose the thresholds from the validation metric's records.

    Attach it before the ``CheckpointSaver`` that saves ``thresholds`` with the best model, so the saved
    thresholds are those of the saved weights. The thresholds also go to the validator's metrics
    (``review_threshold_<anatomy>``), so MLflow and the logs show them.
    """

    def __init__(
        self,
        metric: Any,
        thresholds: ReviewThresholds,
        target_recall: float = DEFAULT_TARGET_RECALL,
        min_positives: int = MIN_POSITIVES,
    ) -> None:
        self.metric, self.thresholds = metric, thresholds
        self.target_recall, self.min_positives = float(target_recall), int(min_positives)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        chosen = self.thresholds.choose(self.metric.records, self.metric.anatomies, self.target_recall, self.min_positives)
        for name, t in chosen.items():
            engine.state.metrics[f"review_threshold_{name}"] = t


class FlagReviewd(MapTransform):
    """Flag the landmarks whose confidence is below their anatomy's threshold.

    Reads ``d[keys]`` (the ``(C,)`` confidences) and ``d["anatomy"]``; writes ``output_key`` (``(C,)`` booleans)
    and ``threshold_key`` (the threshold used).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred_confidence",
        thresholds: ReviewThresholds | None = None,
        output_key: str = "pred_review",
        threshold_key: str = "review_threshold",
        anatomy_key: str = "anatomy",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.thresholds = thresholds if thresholds is not None else ReviewThresholds()
        self.output_key, self.threshold_key, self.anatomy_key = output_key, threshold_key, anatomy_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        t = self.thresholds.threshold(str(d.get(self.anatomy_key, "")))
        for key in self.key_iterator(d):
            conf = np.asarray(d[key], dtype=np.float64)
            d[self.output_key] = ~(conf >= t)  # an unknown (NaN) confidence is flagged too
            d[self.threshold_key] = t
        return d



def review_sentence(figures: Mapping[str, Any], unit: str) -> str:
    """The report's sentence on the review flag, from :func:`review_figures` (plus ``threshold``)."""

    def pct(v: float) -> str:
        return "–" if not np.isfinite(v) else f"{v:.1f} %"

    r = figures["radius"]
    return (
        f"**Review flag** (confidence below {figures.get('threshold', float('nan')):.3f}): {figures['flagged']} of "
        f"{figures['landmarks']} landmarks flagged ({pct(figures['flagged_share'])}); of the {figures['off']} landmarks "
        f"off by more than {r:g} {unit}, {pct(figures['recall'])} are flagged (recall); of the flagged landmarks, "
        f"{pct(figures['precision'])} are off by more than {r:g} {unit} (precision)."
    )


def review_fields(data: Mapping[Hashable, Any], landmarks: list[dict[str, Any]]) -> dict[str, Any]:
    """The inference JSON's review and orientation fields of a decoded item; sets ``review`` on each landmark.

    Reads ``pred_review`` / ``review_threshold`` (:class:`FlagReviewd`) and ``pred_mirrored`` /
    ``pred_orientation_confidence`` (:class:`~scripts.mirroring.SelectOrientationd`), where present.
    """
    out: dict[str, Any] = {}
    if data.get("pred_review") is not None:
        for mark, flag in zip(landmarks, np.asarray(data["pred_review"], dtype=bool)):
            mark["review"] = bool(flag)
        out["review_threshold"] = float(data.get("review_threshold", np.nan))
        out["landmarks_to_review"] = [m["name"] for m in landmarks if m["review"]]
    if "pred_mirrored" in data:
        out["mirrored"] = bool(data["pred_mirrored"])
        given, mirrored = (float(v) for v in np.asarray(data.get("pred_orientation_confidence", [np.nan, np.nan])))
        out["orientation_confidence"] = {"as_given": given, "mirrored": mirrored if np.isfinite(mirrored) else None}
    return out
