"""The review flag: which landmarks a person should check, from a confidence threshold chosen on validation.

A landmark is flagged (``review: true``) when its confidence (the heatmap's peak) is below its anatomy's
threshold. The threshold is chosen on the validation split, each time training validates, and saved with the
checkpoint that validation saves (``model.pt``, under ``review``, as plain floats and strings):

    the smallest threshold whose expected recall reaches ``target_recall`` (default 90 %, the product's aim) of
    the landmarks off by more than the anatomy's largest SDR radius (e.g. 4 mm for the head).

How the recall is estimated (``method``):

- ``"model"`` (default): from every validation landmark, not only those off. A log-normal model of the error given
  the confidence, ``log e ~ N(a + b x, exp(c + d x)^2)`` with ``x = logit(confidence)``, fitted by maximum
  likelihood on all validation landmarks, gives each one its probability of being off by more than the radius;
  the expected recall of a threshold is the share of that probability mass below it. Why: a 15-image validation
  split of the head holds only 4-7 landmarks off by more than 4 mm, so a quantile of those (the old rule) is the
  confidence of one or two landmarks, and it swung from seed to seed. On 300 random 15-image draws from ISBI
  Test1, scored on the other 135 images, it caught 77-89 % of the far landmarks on the mean (six checkpoints),
  under 90 % in 54-88 % of the draws. The model caught 93-97 % (head) and 93 % (JSRT chest), under 90 % in 0-14 %
  of the draws (``bench/README.md``). Its price: it flags more (71-76 % of the head's landmarks, against
  40-60 %), because the confidence tells the far landmarks from the rest only weakly.
- ``"empirical"``: the ``target_recall`` quantile of the confidences of the landmarks off (the rule before 0.13.0);
  it is reliable only where validation holds many far landmarks.

Either way the threshold sits halfway between the confidence of the last landmark it must catch and the next
higher confidence seen. With no landmark off on validation ("model"), or fewer than ``min_positives``
("empirical"), the documented default :data:`DEFAULT_REVIEW_THRESHOLD` is used instead; a checkpoint saved
without thresholds (older ones) uses it too. Every output says which threshold it used and where it came from.

The evaluation report states, on the evaluated split, the share of landmarks off by more than the largest radius
that are flagged (recall) and the share of flagged landmarks that are that far off (precision):
:func:`review_figures`.
"""

from __future__ import annotations

import logging
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
    "off_probability",
    "choose_review_threshold",
    "review_fields",
    "review_figures",
    "review_sentence",
    "ReviewThresholds",
    "ChooseReviewThresholds",
    "FlagReviewd",
    "flagged",
    "calibrate_checkpoint",
    "CalibrateReviewThresholds",
]

# ISBI 2015, CPU budget: landmarks within 2 mm had confidences 0.42-0.51 (quartiles), those more than 10 mm off
# 0.01-0.36 (median 0.02); 0.3 separates most of them
DEFAULT_REVIEW_THRESHOLD = 0.3
DEFAULT_TARGET_RECALL = 0.90
DEFAULT_METHOD = "model"
METHODS = ("model", "empirical")
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


def _pooled(records: list[Mapping[str, Any]], anatomy: str) -> tuple[int, np.ndarray, np.ndarray]:
    """The number of ``anatomy``'s records and their confidences and errors, pooled over its images."""
    recs = [r for r in records if r["anatomy"] == anatomy]
    if not recs:
        return 0, np.empty(0), np.empty(0)
    conf = np.concatenate([np.asarray(r["confidence"], dtype=np.float64).ravel() for r in recs])
    errors = np.concatenate([np.asarray(r["errors"], dtype=np.float64).ravel() for r in recs])
    return len(recs), conf, errors


def flagged(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """The review flag: a confidence below ``threshold``; an unknown (NaN) confidence is flagged too."""
    return ~(np.asarray(confidence, dtype=np.float64) >= threshold)


def off_probability(confidence: np.ndarray, errors: np.ndarray, radius: float) -> np.ndarray:
    """Each landmark's probability of being off by more than ``radius``, from a model fitted on all of them.

    The model: ``log(error) ~ N(a + b x, exp(c + d x)^2)`` with ``x = logit(confidence)``, a log-normal error
    whose median and spread both follow the confidence, fitted by maximum likelihood (``scipy.optimize``; a
    least-squares start, which it keeps if the fit fails). Errors are floored at ``radius / 1000`` (an exact hit
    has no logarithm); inputs must be finite, ``confidence`` in [0, 1].
    """
    from scipy.optimize import minimize
    from scipy.special import logit, ndtr

    c = np.clip(np.asarray(confidence, dtype=np.float64).ravel(), 1e-6, 1 - 1e-6)
    x = logit(c)
    y = np.log(np.maximum(np.asarray(errors, dtype=np.float64).ravel(), radius / 1000.0))
    design = np.stack([np.ones_like(x), x], axis=1) if np.ptp(x) > 1e-9 else np.ones((x.size, 1))
    mean, *_ = np.linalg.lstsq(design, y, rcond=None)
    spread = np.zeros(design.shape[1])
    spread[0] = np.log(max(float(np.std(y - design @ mean)), 1e-6))

    def nll(w: np.ndarray) -> float:
        mu, log_s = design @ w[: design.shape[1]], design @ w[design.shape[1] :]
        return float(np.sum(log_s + 0.5 * ((y - mu) * np.exp(-log_s)) ** 2))

    start = np.concatenate([mean, spread])
    fit = minimize(nll, start, method="BFGS")
    w = fit.x if np.all(np.isfinite(fit.x)) and fit.fun <= nll(start) else start
    mu, log_s = design @ w[: design.shape[1]], design @ w[design.shape[1] :]
    return ndtr((mu - np.log(radius)) * np.exp(-log_s))


def choose_review_threshold(
    confidence: np.ndarray,
    errors: np.ndarray,
    radius: float,
    target_recall: float = DEFAULT_TARGET_RECALL,
    min_positives: int = MIN_POSITIVES,
    method: str = DEFAULT_METHOD,
) -> tuple[float | None, dict[str, Any]]:
    """The smallest confidence threshold whose recall of the landmarks off by more than ``radius`` reaches
    ``target_recall``, the recall estimated by ``method`` (module docstring).

    Returns ``(threshold, details)``; the threshold is None when no landmark is that far off, or fewer than
    ``min_positives`` with ``method="empirical"`` (the caller keeps its default). ``details`` holds the counts,
    the method, and the recall and precision the threshold reaches on these landmarks.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must lie in (0, 1], got {target_recall}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    c = np.asarray(confidence, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=np.float64).ravel()
    valid = np.isfinite(c) & np.isfinite(e)
    c, e = c[valid], e[valid]
    n_off = int(np.count_nonzero(e > radius))
    details: dict[str, Any] = {"radius": float(radius), "target_recall": float(target_recall), "method": method,
                               "landmarks": int(c.size), "off": n_off}  # fmt: skip
    # the quantile of a count that small says little; the model uses every landmark, but needs one past the radius
    # (with none, the tail it would estimate is pure extrapolation)
    needed = max(1, min_positives) if method == "empirical" else 1
    if n_off < needed:
        details["reason"] = f"{n_off} landmark(s) off by more than {radius:g} on validation (< {needed})"
        return None, details
    # the weight of each landmark in the recall: 1 where it is off (empirical), its probability of being off (model)
    weight = (e > radius).astype(np.float64) if method == "empirical" else off_probability(c, e, radius)
    if not weight.sum() > 0:  # a fit so sure that every probability underflows: count the far landmarks instead
        weight = (e > radius).astype(np.float64)
    order = np.argsort(c, kind="stable")
    caught = np.cumsum(weight[order]) / weight.sum()
    # the first landmark (by confidence) whose catching brings the recall to the target; a tiny tolerance so that
    # e.g. 4 of 5 reaches 0.8 despite rounding
    must_catch = c[order][min(int(np.searchsorted(caught, target_recall - 1e-9)), c.size - 1)]
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
        method: str = DEFAULT_METHOD,
        keep: bool = False,
    ) -> dict[str, float]:
        """Choose every anatomy's threshold from evaluated records (``anatomy``, ``confidence``, ``errors``).

        Where none can be chosen (too few landmarks off), the anatomy falls back to the default, since its present
        threshold was chosen for other weights (training); with ``keep`` it keeps its present threshold instead
        (calibration: the weights are the ones it was chosen for).
        """
        records = list(records)
        for anatomy in anatomies:
            images, conf, errors = _pooled(records, anatomy.name)
            if not images:
                continue
            radius = max(anatomy.sdr_radii)
            t, details = choose_review_threshold(conf, errors, radius, target_recall, min_positives, method)
            if t is None and keep and anatomy.name in self.thresholds:
                details["source"] = f"{self.source(anatomy.name)}; kept: {details.pop('reason')}"
            elif t is None:
                self.thresholds.pop(anatomy.name, None)
                details["source"] = f"default ({self.default:g}): {details.pop('reason')}"
            else:
                self.thresholds[anatomy.name] = t
                details["source"] = (f"{source} (recall >= {100 * target_recall:g} % of landmarks off by > "
                                     f"{details['radius']:g}, {method} estimate)")
            details["images"] = images
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
    def from_state(cls, state: Any, default: float = DEFAULT_REVIEW_THRESHOLD) -> ReviewThresholds:
        """Thresholds from a saved ``state_dict`` (a checkpoint's ``review``); the default alone where it is none."""
        out = cls(default=default)
        if isinstance(state, Mapping):
            out.load_state_dict(state)
        return out

    @classmethod
    def from_checkpoint(cls, path: str, default: float = DEFAULT_REVIEW_THRESHOLD, override: float | None = None) -> ReviewThresholds:
        """The thresholds saved in a checkpoint (``review``); the default where it has none or does not exist yet.

        ``override``: one threshold for every anatomy instead (a config's ``review_threshold``).
        """
        import os

        from .checkpoints import read_checkpoint

        if override is not None:
            return cls(default=float(override))
        return cls.from_state(read_checkpoint(path).get("review") if os.path.isfile(path) else None, default)


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
        method: str = DEFAULT_METHOD,
    ) -> None:
        self.metric, self.thresholds = metric, thresholds
        self.target_recall, self.min_positives, self.method = float(target_recall), int(min_positives), method

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        chosen = self.thresholds.choose(
            self.metric.records, self.metric.anatomies, self.target_recall, self.min_positives, method=self.method
        )
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
            d[self.output_key] = flagged(d[key], t)
            d[self.threshold_key] = t
        return d


def calibrate_checkpoint(
    ckpt_path: str,
    output_path: str,
    records: Iterable[Mapping[str, Any]],
    anatomies: AnatomySet,
    target_recall: float = DEFAULT_TARGET_RECALL,
    method: str = DEFAULT_METHOD,
    split: Any = "a labelled split",
    report_path: str | None = None,
) -> dict[str, Any]:
    """Re-choose a checkpoint's review thresholds on evaluated ``records`` and write the checkpoint again.

    Why: the threshold training saved was chosen on its own validation split; a site with labelled images of
    its own (another device, another population) can choose it on those, with the same rule, without
    retraining (``configs/calibrate_review.yaml``). Anatomies absent from ``records``, or with no landmark off by
    more than their largest SDR radius there, keep their thresholds.
    ``output_path`` (``ckpt_path`` itself is allowed) and ``report_path`` (JSON: the thresholds before and
    after, with what each reaches on these images) are written atomically. Returns that report.
    """
    from .checkpoints import read_checkpoint
    from .durable import save_torch_atomic
    from .files import write_json_atomic

    records = list(records)
    ckpt = read_checkpoint(ckpt_path)
    before = ReviewThresholds.from_state(ckpt.get("review"))
    after = ReviewThresholds.from_state(before.state_dict())
    after.choose(records, anatomies, target_recall, source=f"calibration on {split}", method=method, keep=True)
    report: dict[str, Any] = {"checkpoint": ckpt_path, "calibrated_checkpoint": output_path, "split": split,
                              "target_recall": float(target_recall), "method": method, "anatomies": {}}  # fmt: skip
    for anatomy in anatomies:
        images, conf, errors = _pooled(records, anatomy.name)
        if not images:
            continue
        report["anatomies"][anatomy.name] = {"images": images} | {
            when: {"threshold": t.threshold(anatomy.name), "source": t.source(anatomy.name),
                   **review_figures(errors, flagged(conf, t.threshold(anatomy.name)), max(anatomy.sdr_radii))}
            for when, t in (("before", before), ("after", after))
        }  # fmt: skip
    if not report["anatomies"]:
        raise ValueError(f"calibration of {ckpt_path}: no evaluated image of the checkpoint's anatomies in {split}.")
    save_torch_atomic({**ckpt, "review": after.state_dict()}, output_path)
    if report_path:
        write_json_atomic(report, report_path)
    log = logging.getLogger(__name__)
    for name, v in report["anatomies"].items():
        b, a = v["before"], v["after"]
        caught = (f"recall {b['recall']:.1f} -> {a['recall']:.1f} % of {a['off']}" if a["off"]
                  else f"none off by more than {a['radius']:g}: kept")  # fmt: skip
        log.info(f"review threshold of {name} on {v['images']} images of {split}: {b['threshold']:.3f} -> "
                 f"{a['threshold']:.3f} ({caught}, flagged {b['flagged_share']:.1f} -> {a['flagged_share']:.1f} % "
                 f"on these images); written to {output_path}")
    return report


class CalibrateReviewThresholds:
    """Evaluation handler: when the evaluator's epoch completes, :func:`calibrate_checkpoint` on its records.

    Why a handler rather than a step after the run: it runs before the evaluation's MLflow run logs its artifacts
    (at ``COMPLETED``), so the calibration report is logged with the evaluation it was chosen on. Attach it to an
    evaluator whose ``metric`` (a :class:`~scripts.metrics.LandmarkErrorMetric`) is attached too; the remaining
    arguments are :func:`calibrate_checkpoint`'s. :attr:`report` holds the report once it ran.
    """

    def __init__(self, metric: Any, ckpt_path: str, output_path: str, **kwargs: Any) -> None:
        self.metric, self.ckpt_path, self.output_path, self.kwargs = metric, ckpt_path, output_path, kwargs
        self.report: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.report = calibrate_checkpoint(self.ckpt_path, self.output_path, self.metric.records, **self.kwargs)


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
