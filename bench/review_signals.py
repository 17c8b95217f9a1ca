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
- ``per-landmark calibration``: the confidence weighed by the landmark it belongs to (a logistic regression of
  "off" on the landmark and, per landmark, the confidence's logit), fitted on another evaluation's
  ``predictions.csv`` (``--calibrate``: e.g. another seed's, or a validation split's); high = suspect;
- ``knows the senior's / junior's click``: a ceiling, not a signal a product can have (``--doctors``: the ISBI 2015
  folder with both doctors' labels, when the label is their mean). The flag is given exactly where one of the two
  doctors clicked on each scored image; only the other doctor's click is unknown, drawn from how the two differ on
  that landmark in the images not scored. A flag that reads the image alone knows less about the label than one
  of the doctors who made it, so this precision bounds what a review flag can reach against these labels (the
  doctors' difference is drawn per landmark: a flag that foresaw on which images they disagree could do better).

    python bench/review_signals.py --predictions runs/accuracy/gu2net_head/seed0/test1/predictions.csv \
        --datalist runs/accuracy/head/datalist.json
    python bench/review_signals.py --predictions runs/robustness/shifts/none/predictions.csv \
        --tta runs/robustness/shifts/{gamma_0.6,gamma_1.6,noise}/predictions.csv
    python bench/review_signals.py --predictions runs/accuracy/gu2net_head/seed0/test1/predictions.csv \
        --doctors ../shared/data/head

The issue's target is >= 90 % recall at >= 50 % precision (head: landmarks off by more than 4 mm).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import defaultdict

import numpy as np

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")


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


def _calibration_features(landmark: np.ndarray, confidence: np.ndarray, n: int) -> np.ndarray:
    c = np.clip(confidence, 1e-4, 1 - 1e-4)
    x = np.zeros((len(landmark), 2 * n + 1))
    x[np.arange(len(landmark)), landmark] = 1.0  # the landmark's own rate
    x[np.arange(len(landmark)), n + landmark] = np.log(c / (1 - c))  # and its own slope in the confidence
    x[:, -1] = 1.0
    return x


def per_landmark_calibration(train: tuple[np.ndarray, np.ndarray, np.ndarray], landmark: np.ndarray,
                             confidence: np.ndarray, n: int, l2: float = 1.0) -> np.ndarray:
    """The log-odds of "off" for (``landmark``, ``confidence``) by a ridge logistic regression fitted (Newton) on
    ``train`` = (landmark, confidence, off) of another evaluation. Landmarks are indices below ``n``."""
    x, y = _calibration_features(train[0], train[1], n), train[2].astype(np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, x.T @ (p - y) + l2 * w)
    return _calibration_features(landmark, confidence, n) @ w


def off_given_one_doctor(predicted: np.ndarray, known: np.ndarray, landmark: np.ndarray, half_gap: np.ndarray,
                         radius: float) -> np.ndarray:
    """Per landmark, the probability that ``predicted`` is off by more than ``radius`` from the two doctors' mean
    when one doctor's click (``known``) is given: the mean is ``known + n`` with ``n = (other - known) / 2`` drawn
    from ``half_gap[:, landmark]`` (that difference on other images, (M, K, 2)). Points are (N, 2) in one unit."""
    q = np.empty(len(predicted))
    for k in np.unique(landmark):
        at = np.flatnonzero(landmark == k)
        shifted = (predicted[at] - known[at])[:, None, :] - half_gap[None, :, k, :]  # (n, M, 2)
        q[at] = (np.linalg.norm(shifted, axis=2) > radius).mean(axis=1)
    return q


def doctor_ceilings(raw: str, rows: list[dict], predicted: np.ndarray, spacing: np.ndarray,
                    radius: float) -> dict[str, np.ndarray]:
    """The ``knows the senior's / junior's click`` ceilings (see the module's docstring) for ISBI 2015 ``rows``."""
    sys.path.insert(0, BUNDLE)
    from scripts.datasets.isbi2015 import DOCTORS, ISBI2015_LANDMARKS, read_isbi2015_labels
    from scripts.datasets import PrepareError

    try:
        labels = {d: {k: v[0].reshape(-1, 2) for k, v in read_isbi2015_labels(raw, d)[0].items()} for d in DOCTORS}
    except PrepareError as e:
        sys.exit(str(e))
    ids = [f"{int(os.path.splitext(os.path.basename(r['image']))[0]):03d}" for r in rows]
    scored = set(ids)
    others = sorted(k for k in labels["senior"].keys() & labels["junior"].keys() if k not in scored)
    landmark = np.array([ISBI2015_LANDMARKS.index(r["landmark"]) for r in rows])
    doctor = {d: np.array([labels[d][i][k] for i, k in zip(ids, landmark)]) for d in DOCTORS}
    truth = np.array([[float(r["true_x"]), float(r["true_y"])] for r in rows])
    worst = float(np.abs((doctor["senior"] + doctor["junior"]) / 2 - truth).max())
    if worst > 0.01:
        sys.exit(f"{raw}: the predictions' labels are not the two doctors' mean (up to {worst:.2f} px apart); "
                 "the ceiling assumes they are")  # fmt: skip
    unit = spacing[:, None]
    out = {}
    for known, other in (DOCTORS, DOCTORS[::-1]):
        half_gap = np.array([(labels[other][i] - labels[known][i]) / 2 for i in others]) * spacing[0]
        out[f"knows the {known}'s click"] = off_given_one_doctor(
            predicted * unit, doctor[known] * unit, landmark, half_gap, radius)
    apart = np.linalg.norm(doctor["senior"] - doctor["junior"], axis=1) * spacing
    print(f"the doctors: {int((apart > radius).sum())} of {len(rows)} scored landmarks more than {radius:g} apart "
          f"(mean {apart.mean():.2f}); ceilings drawn from their difference on {len(others)} images not scored")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="an evaluation's predictions.csv")
    ap.add_argument("--datalist", help="the training datalist (its training split fits the shape model)")
    ap.add_argument("--tta", nargs="*", default=[], help="predictions.csv of the same images under test-time changes")
    ap.add_argument("--calibrate", help="another evaluation's predictions.csv: fits the per-landmark calibration")
    ap.add_argument("--doctors", help="ISBI 2015 folder with both doctors' labels: print the ceilings")
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
    if args.calibrate:
        names = sorted({r["landmark"] for r in rows})
        other = [r for r in csv.DictReader(open(args.calibrate)) if r["anatomy"] == args.anatomy and r["error"] != ""]
        if {r["landmark"] for r in other} != set(names):
            sys.exit(f"{args.calibrate}: its {args.anatomy} landmarks are not those of {args.predictions}")
        train = (np.array([names.index(r["landmark"]) for r in other]),
                 np.array([float(r["confidence"]) for r in other]),
                 np.array([float(r["error"]) > args.radius for r in other]))  # fmt: skip
        index = np.array([names.index(r["landmark"]) for r in rows])
        signals["per-landmark calibration"] = per_landmark_calibration(train, index, confidence, len(names))
    if args.doctors:
        signals.update(doctor_ceilings(args.doctors, rows, predicted, spacing, args.radius))
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
