"""Which per-landmark signal could drive the review flag: the best precision each reaches at a given recall.

Reads an evaluation's ``predictions.csv`` (``run evaluating``: one row per landmark with its error and confidence)
and ranks the landmarks by each candidate signal, most suspect first. For each target recall of the landmarks off
by more than ``--radius`` it prints the precision of the **best threshold chosen on these same landmarks** (an
upper bound: the product chooses its threshold on validation, and does worse on unseen images). Signals:

- ``confidence``: the heatmap's peak, low = suspect (what the bundle's review flag uses);
- ``shape residual``: how far the landmark lies from where the other landmarks put it, by a point-distribution
  model of the training annotations (similarity Procrustes on the other landmarks, then a ridge regression of this
  landmark on them), in the image's unit; large = suspect. Needs ``--datalist`` (its ``training`` split);
- ``residual / confidence`` and ``rank sum``: the two combined;
- ``augmentation disagreement``: the largest distance between the landmark and its prediction on the same image
  under test-time changes (``--tta``: the ``predictions.csv`` of ``bench/robustness.py``'s shifts, mapped back to
  the original image), e.g. gamma 0.6 / 1.6 and noise; large = suspect.

    python bench/review_signals.py --predictions runs/accuracy/gu2net_head/seed0/test1/predictions.csv \
        --datalist runs/accuracy/head/datalist.json
    python bench/review_signals.py --predictions runs/robustness/shifts/none/predictions.csv \
        --tta runs/robustness/shifts/{gamma_0.6,gamma_1.6,noise}/predictions.csv

The issue's target is >= 90 % recall at >= 50 % precision (head: landmarks off by more than 4 mm).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict

import numpy as np


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """The least-squares similarity ``x -> (x - ms) @ R * s + md`` mapping ``src`` (K, 2) onto ``dst``."""
    ms, md = src.mean(0), dst.mean(0)
    u, sv, vt = np.linalg.svd((src - ms).T @ (dst - md))
    r = u @ vt
    return ms, r, float(sv.sum() / ((src - ms) ** 2).sum()), md


def _apply(points: np.ndarray, t: tuple[np.ndarray, np.ndarray, float, np.ndarray]) -> np.ndarray:
    ms, r, s, md = t
    return (points - ms) @ r * s + md


class ShapeResidual:
    """Per landmark, the distance from where the others predict it under a point-distribution model."""

    def __init__(self, shapes: np.ndarray, ridge: float = 1e3) -> None:
        mean = shapes[0]
        for _ in range(5):  # generalised Procrustes: the mean shape
            mean = np.mean([_apply(x, _similarity(x, mean)) for x in shapes], 0)
        self.mean, self.models = mean, []
        n = shapes.shape[1]
        for i in range(n):
            others = [j for j in range(n) if j != i]
            feats, target = [], []
            for x in shapes:
                t = _similarity(x[others], mean[others])
                feats.append(_apply(x[others], t).ravel())
                target.append(_apply(x[i : i + 1], t)[0])
            f, y = np.array(feats), np.array(target)
            fm, ym = f.mean(0), y.mean(0)
            w = np.linalg.solve((f - fm).T @ (f - fm) + ridge * np.eye(f.shape[1]), (f - fm).T @ (y - ym))
            self.models.append((others, fm, ym, w))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        out = np.empty(len(self.models))
        for i, (others, fm, ym, w) in enumerate(self.models):
            t = _similarity(points[others], self.mean[others])
            expected = (_apply(points[others], t).ravel() - fm) @ w + ym
            out[i] = np.linalg.norm(_apply(points[i : i + 1], t)[0] - expected) / t[2]  # back to image pixels
        return out

    def of_rows(self, mine: list[dict], landmarks: list[str]) -> np.ndarray:
        """The residual of ``landmarks`` from an image's whole predicted shape, ``mine`` (its csv rows, scored or
        not: a landmark without an annotation still places the others). inf where the image has no complete
        predicted shape (a missing prediction: most suspect)."""
        shape = np.array([[float(r["pred_x"] or "nan"), float(r["pred_y"] or "nan")] for r in mine])
        if len(mine) != len(self.models) or not np.isfinite(shape).all():
            return np.full(len(landmarks), np.inf)
        residual = self(shape)
        order = {r["landmark"]: k for k, r in enumerate(mine)}
        return residual[[order[name] for name in landmarks]]


def training_shapes(datalist: str, anatomy: str, minimum: int = 10) -> np.ndarray:
    """The ``training`` split's fully annotated ``anatomy`` shapes (a missing landmark is ``null``), as (N, K, 2)."""
    try:
        items = [d for d in json.load(open(datalist))["training"] if d["anatomy"] == anatomy]
        rows = [[[np.nan, np.nan] if p is None else p for p in d["landmarks"]] for d in items]
        shapes = np.array(rows, dtype=np.float64).reshape(len(items), -1, 2)
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{datalist}: cannot read its {anatomy} training landmarks ({e})")
    complete = shapes[np.isfinite(shapes).all(axis=(1, 2))]
    if len(complete) < minimum:
        sys.exit(f"{datalist}: {len(complete)} of {len(shapes)} {anatomy} training shapes have every landmark "
                 f"annotated; the shape model needs at least {minimum}")  # fmt: skip
    return complete


def best_precision(suspicion: np.ndarray, off: np.ndarray, recall: float) -> tuple[float, int]:
    """Precision and flagged count of the best threshold on ``suspicion`` reaching ``recall`` of ``off``."""
    hits = np.cumsum(off[np.argsort(-suspicion, kind="stable")])
    k = int(np.searchsorted(hits, np.ceil(recall * off.sum())))
    return float(100.0 * hits[k] / (k + 1)), k + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="an evaluation's predictions.csv")
    ap.add_argument("--datalist", help="the training datalist (its training split fits the shape model)")
    ap.add_argument("--tta", nargs="*", default=[], help="predictions.csv of the same images under test-time changes")
    ap.add_argument("--anatomy", default="head")
    ap.add_argument("--radius", type=float, default=4.0, help="a landmark is off beyond this (the unit of the csv)")
    ap.add_argument("--recalls", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    args = ap.parse_args()

    every = [r for r in csv.DictReader(open(args.predictions)) if r["anatomy"] == args.anatomy]
    rows = [r for r in every if r["error"] != ""]  # scored: annotated and predicted
    error = np.array([float(r["error"]) for r in rows])
    confidence = np.array([float(r["confidence"]) for r in rows])
    predicted = np.array([[float(r["pred_x"]), float(r["pred_y"])] for r in rows])
    spacing = np.array([float(r["spacing_x"]) for r in rows])  # px -> the csv's unit (isotropic here)
    off = error > args.radius
    print(f"{args.predictions}: {len(rows)} {args.anatomy} landmarks, {int(off.sum())} off by more than {args.radius:g}")
    signals = {"confidence": -confidence}
    if args.datalist:
        model = ShapeResidual(training_shapes(args.datalist, args.anatomy))
        whole: dict[str, list[dict]] = defaultdict(list)  # image -> all its rows (its predicted shape)
        for r in every:
            whole[r["image"]].append(r)
        by_image: dict[str, list[int]] = defaultdict(list)  # image -> the indices of its scored rows
        for i, r in enumerate(rows):
            by_image[r["image"]].append(i)
        residual = np.empty(len(rows))
        for image, index in by_image.items():
            residual[index] = model.of_rows(whole[image], [rows[i]["landmark"] for i in index]) * spacing[index]
        signals["shape residual"] = residual
        signals["residual / confidence"] = residual / np.maximum(confidence, 1e-3)
        signals["rank sum"] = np.argsort(np.argsort(-confidence)) + np.argsort(np.argsort(residual)).astype(float)
    if args.tta:
        keys = [(r["image"], r["landmark"]) for r in rows]
        spread = np.zeros(len(rows))
        for path in args.tta:
            other = {(r["image"], r["landmark"]): r for r in csv.DictReader(open(path))}
            moved = np.array([[float(other[k]["pred_x"] or "nan"), float(other[k]["pred_y"] or "nan")]
                              if k in other else [np.nan, np.nan] for k in keys])  # fmt: skip
            distance = np.linalg.norm(moved - predicted, axis=1) * spacing
            spread = np.maximum(spread, np.nan_to_num(distance, nan=np.inf))  # no answer: most suspect
        signals["augmentation disagreement"] = spread
    print(f"{'signal (precision at)':27}" + "".join(f"{f'recall {100 * r:g} %':>28}" for r in args.recalls))
    for name, s in signals.items():
        cells = [best_precision(s, off, r) for r in args.recalls]
        print(f"{name:27}" + "".join(f"{f'{p:5.1f} % ({k} flagged)':>28}" for p, k in cells))
    per_landmark: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, o in zip(rows, off):
        per_landmark[r["landmark"]][0] += int(o)
        per_landmark[r["landmark"]][1] += 1
    worst = sorted(per_landmark.items(), key=lambda kv: -kv[1][0])[:5]
    print("landmarks most often off:", ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in worst))


if __name__ == "__main__":
    main()
