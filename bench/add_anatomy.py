"""Adding an anatomy to a trained model vs training it with everything, on the demo or on real X-rays.

Through the bundle's own commands: a model of every anatomy but one is trained, gains the missing one with ``run
add_anatomy`` (only its layers train), and is scored on the test split beside a model trained on all anatomies at
once with the same schedule. The old anatomies' figures must not move; the new anatomy's MRE is compared with the
jointly trained model's and with the mean-shape baseline.

    python bench/add_anatomy.py --json runs/add_anatomy.json   # demo: head + hand + chest gain the pelvis, ~15 min
    python bench/add_anatomy.py --smoke                       # 1 epoch each: runs end to end, figures mean nothing
    # real X-rays: the universal set of bench/accuracy.py (ISBI heads, JSRT chests, 7 hands; run it first, or its
    # prepare step), head + chest gaining the hand, at the accuracy benchmark's CPU budget (iterations per run)
    python bench/add_anatomy.py --datalist runs/accuracy/universal/datalist.json --new hand --iterations 800 \
        --add-iterations 200 --work runs/add_anatomy_real --json runs/add_anatomy_real.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import BUDGETS, BUNDLE, REPO, _batches_per_epoch, _bundle  # noqa: E402

sys.path.insert(0, BUNDLE)
from scripts import ensure_demo  # noqa: E402

EVALUATE = ["configs/train.yaml", "configs/evaluate.yaml"]


def subset(datalist: str, keep: list[str], folder: str) -> str:
    """A copy of ``datalist`` with only the anatomies ``keep`` (its images stay where they are); returns its folder."""
    data = json.load(open(datalist))
    root = os.path.dirname(os.path.abspath(datalist))
    data["anatomies"] = {k: v for k, v in data["anatomies"].items() if k in keep}
    for split in ("training", "validation", "test"):
        data[split] = [{**d, "image": os.path.join(root, d["image"])} for d in data.get(split, []) if d["anatomy"] in keep]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "datalist.json"), "w") as f:
        json.dump(data, f)
    return folder


def _schedule(dataset_dir: str, iterations: int, batch_size: int) -> dict:
    """Epochs for ``iterations`` training steps on a datalist, one triangular LR cycle over them (accuracy.py's)."""
    batches = _batches_per_epoch(dataset_dir, batch_size)
    epochs = max(1, round(iterations / batches))
    return {"max_epochs": epochs, "lr_step_size": max(1, epochs * batches // 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(REPO, "runs", "add_anatomy"))
    ap.add_argument("--datalist", help="a prepared datalist of every anatomy (default: the embedded demo)")
    ap.add_argument("--new", default="pelvis", help="the anatomy the trained model gains")
    ap.add_argument("--epochs", type=int, default=30, help="epochs of each training run (the demo's schedule)")
    ap.add_argument("--iterations", type=int, help="training steps of the base and joint runs (real data: CPU budget)")
    ap.add_argument("--add-iterations", type=int, help="training steps of add_anatomy (default: --iterations)")
    ap.add_argument("--minutes", type=float, help="training time limit per run, in place of the CPU budget's 20 minutes "
                    "(a busy machine: a run the limit cuts is resumed by the same command, from its last epoch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="1 epoch each")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)  # the bundle's commands run in bundle/: a relative folder would move
    if args.datalist:  # real data: train.yaml at the accuracy benchmark's CPU settings
        full = os.path.dirname(os.path.abspath(args.datalist))
        configs, common = ["configs/train.yaml"], dict(BUDGETS["cpu"]["overrides"])
    else:
        full = os.path.dirname(ensure_demo(os.path.join(REPO, "data", "demo")))
        configs, common = ["configs/train.yaml", "configs/demo.yaml"], {}
    anatomies = list(json.load(open(os.path.join(full, "datalist.json")))["anatomies"])
    if args.new not in anatomies:
        raise SystemExit(f"{args.new!r} is not an anatomy of {full}/datalist.json ({anatomies})")
    old = [a for a in anatomies if a != args.new]
    base_set = subset(os.path.join(full, "datalist.json"), old, os.path.join(args.work, "base_set"))
    common.update(seed=args.seed, val_interval=5 if args.epochs >= 5 else 1)
    if args.minutes:
        common["time_limit_minutes"] = args.minutes
    epochs = 1 if args.smoke else args.epochs
    schedule = {name: {"max_epochs": epochs} for name in ("base", "grown", "joint")}
    if args.iterations and not args.smoke:
        new_only = subset(os.path.join(full, "datalist.json"), [args.new], os.path.join(args.work, "new_set"))
        batch = int(common.get("batch_size", 4))
        schedule = {
            "base": _schedule(base_set, args.iterations, batch),
            "grown": _schedule(new_only, args.add_iterations or args.iterations, batch),
            "joint": _schedule(full, args.iterations, batch),
        }
        common["val_interval"] = 2
    out = {k: os.path.join(args.work, k) for k in ("base", "grown", "joint")}
    log = lambda name: os.path.join(args.work, f"{name}.log")  # noqa: E731
    seconds = {
        "base": _bundle("training", configs, {**common, **schedule["base"], "dataset_dir": base_set,
                                              "output_dir": out["base"]}, log("base")),
        "grown": _bundle("add_anatomy", configs + ["configs/add_anatomy.yaml"],
                         {**common, **schedule["grown"], "dataset_dir": full, "output_dir": out["grown"],
                          "base_ckpt": os.path.join(out["base"], "models", "model.pt")}, log("grown")),
        "joint": _bundle("training", configs, {**common, **schedule["joint"], "dataset_dir": full,
                                               "output_dir": out["joint"]}, log("joint")),
    }  # fmt: skip
    metrics = {}
    for name in ("base", "grown", "joint"):
        ev = os.path.join(out[name], "eval")
        _bundle("evaluating", EVALUATE, {"dataset_dir": full if name != "base" else base_set, "output_dir": ev,
                                         "ckpt_path": os.path.join(out[name], "models", "model.pt")},
                os.path.join(args.work, f"{name}_eval.log"))  # fmt: skip
        metrics[name] = json.load(open(os.path.join(ev, "metrics.json")))
    rows = []
    for anatomy in anatomies:
        row = {"anatomy": anatomy, "unit": metrics["joint"][anatomy]["unit"]}
        for name in ("base", "grown", "joint"):
            row[name] = metrics[name].get(anatomy, {}).get("MRE")
        row["mean_shape"] = metrics["joint"]["_baseline_mean_shape"][anatomy]["MRE"]
        rows.append(row)
    n = len(anatomies)
    print(f"{'anatomy':8} {'unit':4} {f'{n - 1}-anatomy':>10} {'+ ' + args.new:>10} {f'all {n}':>10} {'mean shape':>10}")
    fmt = lambda v: f"{v:10.2f}" if v is not None else f"{'-':>10}"  # noqa: E731
    for r in rows:
        print(f"{r['anatomy']:8} {r['unit']:4} {fmt(r['base'])} {fmt(r['grown'])} {fmt(r['joint'])} {fmt(r['mean_shape'])}")
    print("training seconds:", {k: round(v) for k, v in seconds.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"datalist": full, "new": args.new, "seed": args.seed, "schedule": schedule, "settings": common,
                       "rows": rows, "train_seconds": seconds}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
