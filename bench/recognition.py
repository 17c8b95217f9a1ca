"""Anatomy recognition benchmark: the recogniser's accuracy, and what it calls "unknown anatomy".

Two sets (a benchmark, not a test):

- ``--set demo``: the bundle's synthetic demo (30 training, 6 validation, 10 test images per anatomy, as generated on
  first use), fitted on its training split, thresholds from its validation split, scored on its test split.
- ``--set real``: the real images in ``../shared/data``: ISBI 2015 cephalograms (head, 300), Digital Hand Atlas
  radiographs (hand, 7) and JSRT chest radiographs (chest, 200), each anatomy split at random (``--seed``) into
  60 % training, 15 % validation, 25 % test (at least 1 validation and 2 test images: the hand has 4 / 1 / 2).

Both then ask the recogniser about images that show none of its anatomies: white noise, a constant image, a made-up
photograph (a colour gradient with a disc, a box and a triangle), a real photograph (matplotlib's sample portrait),
a smooth random field; for ``real`` also the demo's synthetic stand-ins (3 per anatomy), which a model of real
X-rays has never seen. Prints the confusion matrix and every answer; ``--json PATH`` writes them.

    python bench/recognition.py --set demo --json runs/recognition_demo.json
    python bench/recognition.py --set real --seed 0 --json runs/recognition_real_0.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bundle"))

from scripts.datalist import load_datalist  # noqa: E402
from scripts.datasets.demo import ensure_demo  # noqa: E402
from scripts.datasets.outliers import write_no_anatomy_images  # noqa: E402
from scripts.recognition import AnatomyRecognizer, evaluate_recognition, fit_recognizer, format_recognition_table  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")


def real_split(seed: int) -> dict[str, list[dict]]:
    files = {
        "head": sorted(glob.glob(os.path.join(DATA, "head", "images", "*.jpg"))),
        "hand": sorted(glob.glob(os.path.join(DATA, "hand", "images", "*.mha"))),
        "chest": sorted(glob.glob(os.path.join(DATA, "chest", "images", "*.jpg"))),
    }
    if not all(files.values()):
        sys.exit(f"real images missing under {DATA}: {[k for k, v in files.items() if not v]}")
    rng = np.random.default_rng(seed)
    split: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for name, fs in files.items():
        fs = [fs[i] for i in rng.permutation(len(fs))]
        n_va, n_te = max(1, round(0.15 * len(fs))), max(2, round(0.25 * len(fs)))
        for s, part in (("test", fs[:n_te]), ("validation", fs[n_te : n_te + n_va]), ("training", fs[n_te + n_va :])):
            split[s] += [{"image": f, "anatomy": name} for f in part]
    return split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("demo", "real"), default="demo")
    ap.add_argument("--seed", type=int, default=0, help="the real set's split and the fit's seed")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    demo = ensure_demo(os.path.join(ROOT, "data", "demo"))
    if args.set == "demo":
        split = {s: load_datalist(demo, s) for s in ("training", "validation", "test")}
        names = ["head", "hand", "chest", "pelvis"]
    else:
        split = real_split(args.seed)
        names = ["head", "hand", "chest"]
    recognizer = AnatomyRecognizer(names)
    start = time.perf_counter()
    cal = fit_recognizer(recognizer, split["training"], split["validation"], steps=args.steps, seed=args.seed)
    print(f"fitted in {time.perf_counter() - start:.0f} s:", json.dumps(cal), flush=True)
    section = evaluate_recognition(recognizer, split["test"])
    print(format_recognition_table(section))
    for e in section["errors"]:
        print("  wrong:", e["image"], e["true"], "->", e["anatomy"] or "unknown", f"({e['reason'] or e['best']})")
    with tempfile.TemporaryDirectory() as folder:
        probes = list(write_no_anatomy_images(folder).values())
        if args.set == "real":
            probes += sorted(glob.glob(os.path.join(os.path.dirname(demo), "images", "*", "*_00[0-2].png")))
        answers = []
        for path in probes:
            rec = recognizer.recognize_file(path)
            answers.append({"image": os.path.basename(path), "anatomy": rec.anatomy, "best": rec.best,
                            "probability": rec.probability, "distance": rec.distance, "reason": rec.reason})
            print(f"  {os.path.basename(path):<20} -> {rec.anatomy or 'unknown':<8} (best {rec.best}, p={rec.probability:.2f}, "
                  f"distance {rec.distance:.1f} / threshold {rec.distance_threshold:.1f})")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"set": args.set, "seed": args.seed, "steps": args.steps, "calibration": cal, "test": section,
                       "not_anatomies": answers}, f, indent=1)


if __name__ == "__main__":
    main()
