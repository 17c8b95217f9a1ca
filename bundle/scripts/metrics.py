"""Landmark metrics in the original image's space: radial errors, MRE, STD, median, SDR, and their summary file.

Errors are measured between predictions mapped back to the original image and the **original
annotations** (never a point re-read from a target heatmap), in mm with per-axis spacing when the
item has a spacing, else in pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from .anatomies import Anatomy, AnatomySet
from .files import write_json_atomic
from .review import review_figures

__all__ = [
    "radial_errors",
    "summarize_errors",
    "summarize_anatomy",
    "LandmarkErrorMetric",
    "format_metrics_table",
    "write_metrics_json",
]


def radial_errors(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Euclidean distance per landmark, ``(N,)``, scaling x and y by their own spacing; NaN where ``true`` is NaN."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"radial_errors: pred {pred.shape} and true {true.shape} must both be (N, 2).")
    d = (pred - true) * np.asarray(spacing, dtype=np.float64)[None, :]
    return np.sqrt((d**2).sum(1))


def summarize_errors(errors: np.ndarray, radii: Sequence[float]) -> dict[str, Any]:
    """MRE, STD, median and SDR (percent within each radius) of an array of errors; NaNs are skipped."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    e = e[~np.isnan(e)]
    if e.size == 0:
        return {"MRE": float("nan"), "STD": float("nan"), "median": float("nan"), "SDR": {}, "count": 0}
    return {
        "MRE": float(e.mean()),
        "STD": float(e.std()),
        "median": float(np.median(e)),
        "SDR": {f"{r:g}": float((e <= r).mean() * 100.0) for r in radii},
        "count": int(e.size),
    }


def summarize_anatomy(errors: np.ndarray, anatomy: Anatomy) -> dict[str, Any]:
    """The figures of one anatomy from its ``(images, landmarks)`` errors (NaN = not annotated).

    Overall MRE, STD, median and SDR at the anatomy's radii, the landmark counts (annotated and missing),
    and the same figures per landmark (``per_landmark``; ``per_landmark_MRE`` keeps the short form).
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1, anatomy.num_landmarks)
    out = summarize_errors(errors, anatomy.sdr_radii)
    missing = np.isnan(errors)
    out["missing_landmarks"] = int(missing.sum())
    out["images_with_missing"] = int(missing.any(1).sum())
    out["per_landmark"] = {n: summarize_errors(errors[:, k], anatomy.sdr_radii) for k, n in enumerate(anatomy.landmarks)}
    out["per_landmark_MRE"] = {n: v["MRE"] for n, v in out["per_landmark"].items()}
    return out


def _as_list(x: Any) -> list:
    return x if isinstance(x, (list, tuple)) else [x]


class LandmarkErrorMetric(Metric):
    """Ignite metric: mean radial error in the original image space (lower is better).

    Fed by the engine's decollated output (a list of per-image dicts with ``pred_landmarks``, the original
    ``true_key`` landmarks, ``spacing``, ``unit``, ``anatomy`` and ``image``). ``compute()`` returns the
    geometric mean of the per-anatomy MREs (each in its own unit): no anatomy dominates by image count, and
    the ranking of checkpoints does not depend on the units (an anatomy in px instead of mm scales every
    value by the same factor), nor on which anatomy has the largest errors: a 10 % gain counts the same on
    any anatomy. (An arithmetic mean would let one anatomy that has not converged choose the checkpoint of a
    universal run alone.) With one anatomy it is that anatomy's MRE. The
    per-anatomy and per-landmark figures go to ``engine.state.metrics`` as ``<name>_<anatomy>_MRE`` and
    ``<name>_<anatomy>_SDR_<r>`` and stay available as :attr:`results`.
    """

    def __init__(
        self,
        anatomies: AnatomySet,
        pred_key: str = "pred_landmarks",
        true_key: str = "landmarks_original",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.anatomies = anatomies
        self.pred_key, self.true_key = pred_key, true_key
        self.records: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self.records = []

    def iteration_completed(self, engine: Engine) -> None:
        """Merge each decollated batch item with its output item: the annotations stay in the batch."""
        output = self._output_transform(engine.state.output)
        batch = engine.state.batch
        if isinstance(batch, (list, tuple)) and isinstance(output, (list, tuple)) and len(batch) == len(output):
            output = [{**b, **o} for b, o in zip(batch, output)]
        self.update(output)

    def update(self, output: Sequence[Mapping[str, Any]]) -> None:
        for item in _as_list(output):
            pred = np.asarray(item[self.pred_key], dtype=np.float64)
            true = np.asarray(item[self.true_key], dtype=np.float64).reshape(pred.shape)
            spacing = np.asarray(item["spacing"], dtype=np.float64).ravel()[:2]
            image = item.get("image")
            name = image.meta.get("filename_or_obj") if hasattr(image, "meta") else image
            self.records.append(
                {
                    "image": str(name) if name is not None else "",
                    "anatomy": str(item["anatomy"]),
                    "split": str(item.get("split", "")),
                    "unit": str(item["unit"]),
                    "spacing_source": str(item.get("spacing_source", "")),
                    "pred": pred,
                    "true": true,
                    "spacing": spacing,
                    "confidence": np.asarray(item.get("pred_confidence", np.full(len(pred), np.nan))),
                    "errors": radial_errors(pred, true, spacing),
                    # the review flag (scripts/review.py) and the orientation (scripts/mirroring.py), where decoded
                    "review": None if item.get("pred_review") is None else np.asarray(item["pred_review"], dtype=bool),
                    "review_threshold": float(item.get("review_threshold", np.nan)),
                    "mirrored": bool(item.get("pred_mirrored", False)),
                }
            )

    def summary(self) -> dict[str, Any]:
        """Per anatomy: unit (and the spacing's source), image count, :func:`summarize_anatomy`'s figures and, over
        several splits, ``per_split``."""
        out: dict[str, Any] = {}
        for anatomy in self.anatomies:
            recs = [r for r in self.records if r["anatomy"] == anatomy.name]
            if not recs:
                continue
            units = sorted({r["unit"] for r in recs})
            entry = {"unit": units[0] if len(units) == 1 else "mixed:" + ",".join(units), "images": len(recs)}
            sources = sorted({r["spacing_source"] for r in recs} - {""})
            if sources:
                entry["spacing_source"] = "; ".join(sources)  # which rule gave the mm (e.g. the hand's wrist width)
            entry.update(summarize_anatomy(np.stack([r["errors"] for r in recs]), anatomy))
            entry["mirrored_images"] = sum(r.get("mirrored", False) for r in recs)
            if all(r.get("review") is not None for r in recs):
                entry["review"] = {
                    "threshold": sorted({r["review_threshold"] for r in recs})[-1],
                    **review_figures(np.stack([r["errors"] for r in recs]), np.stack([r["review"] for r in recs]),
                                     max(anatomy.sdr_radii)),
                }  # fmt: skip
            splits = sorted({r["split"] for r in recs})
            if len(splits) > 1:
                entry["per_split"] = {
                    s: {
                        "images": sum(r["split"] == s for r in recs),
                        **summarize_errors(np.stack([r["errors"] for r in recs if r["split"] == s]), anatomy.sdr_radii),
                    }
                    for s in splits
                }
            out[anatomy.name] = entry
        return out

    def compute(self) -> float:
        self.results = self.summary()
        mres = [v["MRE"] for v in self.results.values() if v["count"] > 0]
        if not mres:
            raise RuntimeError("LandmarkErrorMetric: no annotated landmarks were seen.")
        return float(np.exp(np.mean(np.log(np.maximum(mres, 1e-9)))))  # a perfect anatomy (MRE 0) stays finite

    def completed(self, engine: Engine, name: str) -> None:
        engine.state.metrics[name] = self.compute()
        for anatomy, v in self.results.items():
            engine.state.metrics[f"{name}_{anatomy}_MRE"] = v["MRE"]
            for r, s in v["SDR"].items():
                engine.state.metrics[f"{name}_{anatomy}_SDR_{r}"] = s


def format_metrics_table(summary: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """One line per anatomy: images, unit, MRE +- STD, SDR at each radius; the baseline's MRE beside it."""
    lines = []
    head = f"{'anatomy':<10} {'images':>6} {'unit':>4} {'MRE':>8} {'STD':>8}  SDR"
    if baseline:
        head += "   | mean-shape baseline MRE"
    lines.append(head)
    for name, v in summary.items():
        sdr = " ".join(f"{r}:{s:5.1f}%" for r, s in v["SDR"].items())
        line = f"{name:<10} {v.get('images', 0):>6} {v['unit']:>4} {v['MRE']:8.3f} {v['STD']:8.3f}  {sdr}"
        if baseline and name in baseline:
            line += f"   | {baseline[name]['MRE']:8.3f}"
        lines.append(line)
    return "\n".join(lines)


def write_metrics_json(
    metric: LandmarkErrorMetric,
    path: str,
    baseline: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    published: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a metric's per-anatomy summary (and the baseline's, the run's, published figures) to ``path``."""
    summary = metric.summary()
    if not summary:
        raise RuntimeError(f"no metrics to write to {path}: the evaluation saw no annotated images.")
    out: dict[str, Any] = dict(summary)
    if baseline:
        out["_baseline_mean_shape"] = dict(baseline)
    if published:
        out["_published"] = dict(published)
    if extra:
        out["_run"] = dict(extra)
    write_json_atomic(out, path)
    return out
