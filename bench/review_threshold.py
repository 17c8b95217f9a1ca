"""How the review flag's threshold, chosen on a small validation split, holds on unseen images, rule by rule.

Training chooses each anatomy's threshold on the validation split (``scripts/review.py``:
``choose_review_threshold``, ``review_target_recall``, ``review_method``). On ISBI 2015 that split has 15 images,
among whose 285 landmarks only 4-7 are off by more than 4 mm, so the rule matters. Two measurements, for each
``--methods`` rule at ``--target``:

- ``--validation VAL.csv``: the threshold the rule chooses on a run's own validation split (``run evaluating``
  with ``--eval_split validation --refine False --mirror_test False``: the coarse network, as training validates
  it), and its recall, precision and share flagged on ``--predictions`` (the test split's ``predictions.csv``).
- ``--draws N``: ``N`` random draws of ``--images`` images of ``--coarse`` (the test split scored without the
  refiner, e.g. ``test1_coarse/predictions.csv``) play the validation split; the rule's threshold is scored on
  the other images of ``--predictions``. Mean, 10th percentile and the share of draws under 90 % recall.

The thresholds only decide which landmarks are flagged, so every figure comes from the CSVs: nothing is re-run.

    run=runs/accuracy/gu2net_head/seed0
    python bench/review_threshold.py --predictions $run/test1/predictions.csv \
        --coarse $run/test1_coarse/predictions.csv --validation $run/validation_coarse/predictions.csv --draws 300
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle"))

from scripts.review import (  # noqa: E402
    DEFAULT_TARGET_RECALL,
    METHODS,
    MIN_POSITIVES,
    choose_review_threshold,
    flagged,
    review_figures,
)


def read_scored(path: str, anatomy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scored rows of ``anatomy`` in a ``predictions.csv``: image names, confidences and errors."""
    rows = [r for r in csv.DictReader(open(path)) if r["anatomy"] == anatomy and r["error"] != ""]
    if not rows:
        sys.exit(f"{path}: no scored {anatomy} landmarks (error and confidence columns)")
    return (np.array([r["image"] for r in rows]), np.array([float(r["confidence"]) for r in rows]),
            np.array([float(r["error"]) for r in rows]))  # fmt: skip


def scored_on(threshold: float | None, confidence: np.ndarray, error: np.ndarray, radius: float) -> dict:
    """Recall, precision and share flagged of ``threshold`` on these landmarks (None: nothing chosen)."""
    if threshold is None:
        return {"recall": np.nan, "precision": np.nan, "flagged_share": np.nan}
    return review_figures(error, flagged(confidence, threshold), radius)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="the test split's predictions.csv (what is scored)")
    ap.add_argument("--validation", help="the run's validation predictions.csv (coarse): the threshold training chose")
    ap.add_argument("--coarse", help="the test split's predictions.csv without the refiner: what the draws sample")
    ap.add_argument("--draws", type=int, default=0, help="random validation draws from --coarse (0: none)")
    ap.add_argument("--images", type=int, default=15, help="images per draw (ISBI's validation split: 15)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET_RECALL, help="review_target_recall")
    ap.add_argument("--min-positives", type=int, default=MIN_POSITIVES, help="the empirical rule's minimum")
    ap.add_argument("--anatomy", default="head")
    ap.add_argument("--radius", type=float, default=4.0, help="off beyond this (the anatomy's largest SDR radius)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.draws and not args.coarse:
        sys.exit("--draws needs --coarse (the test split scored without the refiner)")

    images, confidence, error = read_scored(args.predictions, args.anatomy)
    print(f"{args.predictions}: {confidence.size} {args.anatomy} landmarks, {int((error > args.radius).sum())} off "
          f"by more than {args.radius:g}; target recall {100 * args.target:g} %")  # fmt: skip
    if args.validation:
        _, v_conf, v_err = read_scored(args.validation, args.anatomy)
        print(f"chosen on {args.validation} ({v_conf.size} landmarks, {int((v_err > args.radius).sum())} off):")
        for method in args.methods:
            t, _ = choose_review_threshold(v_conf, v_err, args.radius, args.target, args.min_positives, method)
            f = scored_on(t, confidence, error, args.radius)
            shown = "default" if t is None else f"{t:.3f}"
            print(f"  {method:10} threshold {shown:>7}: recall {f['recall']:5.1f} %  precision {f['precision']:4.1f} %"
                  f"  flagged {f['flagged_share']:5.1f} %")  # fmt: skip
    if args.draws:
        c_images, c_conf, c_err = read_scored(args.coarse, args.anatomy)
        names = np.unique(c_images)
        if args.images >= names.size:
            sys.exit(f"{args.coarse}: {names.size} images, too few to draw {args.images} and score the rest")
        rng = np.random.default_rng(args.seed)
        figures: dict[str, list[tuple[float, float, float]]] = {m: [] for m in args.methods}
        for _ in range(args.draws):
            picked = rng.choice(names, args.images, replace=False)
            val, rest = np.isin(c_images, picked), ~np.isin(images, picked)
            for method in args.methods:
                t, _ = choose_review_threshold(
                    c_conf[val], c_err[val], args.radius, args.target, args.min_positives, method
                )
                f = scored_on(t, confidence[rest], error[rest], args.radius)
                figures[method].append((f["recall"], f["precision"], f["flagged_share"]))
        print(f"{args.draws} draws of {args.images} images as validation, scored on the other "
              f"{names.size - args.images}:")
        for method, rows in figures.items():
            a = np.array(rows)
            chosen = np.isfinite(a[:, 0])
            recall = a[chosen, 0]
            print(f"  {method:10} recall {recall.mean():5.1f} % (10th percentile {np.percentile(recall, 10):5.1f}, "
                  f"under 90 % in {100 * (recall < 90).mean():3.0f} % of draws)  precision {a[chosen, 1].mean():4.1f} %"
                  f"  flagged {a[chosen, 2].mean():5.1f} %  (default kept in {int((~chosen).sum())} draws)")


if __name__ == "__main__":
    main()
