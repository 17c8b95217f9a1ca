"""Adding an anatomy to a trained model vs training it with everything, on the embedded demo.

Through the bundle's own commands: a head + hand + chest model is trained, gains the pelvis with ``run
add_anatomy`` (only the pelvis' layers train), and is scored on the test split beside a model trained on all four
anatomies at once with the same schedule. The old anatomies' figures must not move; the pelvis' MRE is compared
with the jointly trained model's and with the mean-shape baseline.

    python bench/add_anatomy.py --json runs/add_anatomy.json   # about 15 minutes on 2 idle CPU cores
    python bench/add_anatomy.py --smoke                       # 1 epoch each: runs end to end, figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import BUNDLE, REPO, _bundle  # noqa: E402

sys.path.insert(0, BUNDLE)
from scripts import ensure_demo  # noqa: E402

TRAIN = ["configs/train.yaml", "configs/demo.yaml"]
ADD = ["configs/train.yaml", "configs/demo.yaml", "configs/add_anatomy.yaml"]
EVALUATE = ["configs/train.yaml", "configs/evaluate.yaml"]


def without(datalist: str, anatomy: str, folder: str) -> str:
    """A copy of ``datalist`` without ``anatomy`` (its images stay where they are)."""
    data = json.load(open(datalist))
    root = os.path.dirname(os.path.abspath(datalist))
    del data["anatomies"][anatomy]
    for split in ("training", "validation", "test"):
        data[split] = [
            {**d, "image": os.path.join(root, d["image"])} for d in data[split] if d["anatomy"] != anatomy
        ]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "datalist.json"), "w") as f:
        json.dump(data, f)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(REPO, "runs", "add_anatomy"))
    ap.add_argument("--epochs", type=int, default=30, help="epochs of each training run (the demo's schedule)")
    ap.add_argument("--smoke", action="store_true", help="1 epoch each")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    epochs = 1 if args.smoke else args.epochs
    demo = os.path.dirname(ensure_demo(os.path.join(REPO, "data", "demo")))
    three = without(os.path.join(demo, "datalist.json"), "pelvis", os.path.join(args.work, "three"))
    common = {"max_epochs": epochs, "val_interval": 5 if epochs >= 5 else 1}
    out = {k: os.path.join(args.work, k) for k in ("base", "grown", "joint")}
    seconds = {
        "base": _bundle("training", TRAIN, {**common, "dataset_dir": three, "output_dir": out["base"]},
                        os.path.join(args.work, "base.log")),
        "grown": _bundle("add_anatomy", ADD, {**common, "dataset_dir": demo, "output_dir": out["grown"],
                                              "base_ckpt": os.path.join(out["base"], "models", "model.pt")},
                         os.path.join(args.work, "grown.log")),
        "joint": _bundle("training", TRAIN, {**common, "dataset_dir": demo, "output_dir": out["joint"]},
                         os.path.join(args.work, "joint.log")),
    }  # fmt: skip
    metrics = {}
    for name in ("base", "grown", "joint"):
        ev = os.path.join(out[name], "eval")
        _bundle("evaluating", EVALUATE, {"dataset_dir": demo if name != "base" else three, "output_dir": ev,
                                         "ckpt_path": os.path.join(out[name], "models", "model.pt")},
                os.path.join(args.work, f"{name}_eval.log"))  # fmt: skip
        metrics[name] = json.load(open(os.path.join(ev, "metrics.json")))
    rows = []
    for anatomy in ("head", "hand", "chest", "pelvis"):
        row = {"anatomy": anatomy, "unit": metrics["joint"][anatomy]["unit"]}
        for name in ("base", "grown", "joint"):
            row[name] = metrics[name].get(anatomy, {}).get("MRE")
        row["mean_shape"] = metrics["joint"]["_baseline_mean_shape"][anatomy]["MRE"]
        rows.append(row)
    print(f"{'anatomy':8} {'unit':4} {'3-anatomy':>10} {'+ pelvis':>10} {'all 4':>10} {'mean shape':>10}")
    fmt = lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10}"  # noqa: E731
    for r in rows:
        print(f"{r['anatomy']:8} {r['unit']:4} {fmt(r['base'])} {fmt(r['grown'])} {fmt(r['joint'])} {fmt(r['mean_shape'])}")
    print("training seconds:", {k: round(v) for k, v in seconds.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"epochs": epochs, "rows": rows, "train_seconds": seconds}, f, indent=1)


if __name__ == "__main__":
    main()
