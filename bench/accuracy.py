"""Accuracy benchmark on real cephalograms (ISBI 2015): GU2Net vs the paper's U-Net vs universal GU2Net.

Everything runs through the bundle's own commands: the prepare command builds the datalists from
``../shared/data``, ``python -m monai.bundle run training`` trains, ``run evaluating`` scores Test1 (151-300,
mean of the two doctors, in mm against the original annotations, sub-pixel decoding).

    python bench/accuracy.py --budget cpu --json runs/accuracy_cpu.json      # ~60 minutes on 2 CPU cores
    python bench/accuracy.py --budget paper --json runs/accuracy_paper.json  # the paper's recipe, for a GPU

Runs: (1) GU2Net on the head set; (2) MONAI's UNet under identical conditions (same pipeline, loss, schedule,
time budget, decoding); (3) GU2Net trained universally on head + hand (wrist-rule mm) + the demo's chest and
pelvis, scored on the head again. This is a benchmark, not a test: it prints its figures and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
DATA = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, BUNDLE)

# the paper's Table 1 head row (GU2Net trained on all four data sets; Test1 + Test2 combined)
PAPER_HEAD = {"MRE": 1.51, "SDR": {"2": 78.67, "4": 94.67}}

BUDGETS = {
    # 2 CPU cores, about 60 minutes in all: 0.31 of the paper's resolution per side, a fixed time per run.
    # sigma 2 px (3 px at 128 x 160 would blur over ~4.5 mm); a gentler cyclic LR than the paper's 1e-4..1e-2
    # over 2000 iterations, which a few hundred iterations would never complete.
    "cpu": {
        "head_size": [128, 160],
        "hand_size": [112, 160],
        "overrides": {
            "sigma": 2.0, "batch_size": 4, "max_epochs": 1000, "time_limit_minutes": 14, "val_interval": 2,
            "lr_min": 0.0005, "lr_max": 0.002, "lr_step_size": 300, "translate_px": 3,
        },
    },
    # a few minutes in all: checks that the benchmark runs end to end; its figures mean nothing
    "smoke": {
        "head_size": [64, 80],
        "hand_size": [48, 64],
        "overrides": {"sigma": 2.0, "batch_size": 4, "max_epochs": 1, "val_interval": 1, "translate_px": 2},
    },
    # the paper's recipe: 416 x 512, sigma 3, batch 4, 100 epochs, cyclic LR 1e-4..1e-2 (train.yaml's defaults)
    "paper": {"head_size": [416, 512], "hand_size": [352, 512], "overrides": {"max_epochs": 100, "val_interval": 2}},
}

TRAIN = ["configs/train.yaml"]
EVALUATE = ["configs/train.yaml", "configs/evaluate.yaml"]
UNET = os.path.join(REPO, "bench", "unet.yaml")


def _run(args: list[str], log: str) -> float:
    """Run a command from the bundle folder, teeing its output to ``log``; return the seconds it took."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(args, cwd=BUNDLE, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"{' '.join(args[:6])} ... failed (log {log}):\n{tail}")
    return time.time() - t0


def _bundle(workflow: str, configs: list[str], overrides: dict, log: str) -> float:
    args = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", repr(configs)]
    for k, v in overrides.items():
        args += [f"--{k}", str(v)]
    return _run(args, log)


def prepare(work: str, budget: dict) -> dict[str, str]:
    """Build the head-only and the universal datalists with the bundle's prepare command."""
    head_dir, uni_dir = os.path.join(work, "head"), os.path.join(work, "universal")
    head = os.path.join(DATA, "head")
    hand = os.path.join(DATA, "hand")
    prep = [sys.executable, "-m", "scripts.prepare"]
    head_path, uni_path = os.path.join(head_dir, "datalist.json"), os.path.join(uni_dir, "datalist.json")
    if os.path.isfile(head_path):  # start afresh: prepare merges into an existing datalist
        os.remove(head_path)
    head_args = ["isbi2015", "--raw", head, "--out", head_dir, "--protocol", "challenge", "--label", "mean"]
    _run(prep + head_args + ["--size", *map(str, budget["head_size"])], os.path.join(work, "prepare_head.log"))
    # the universal set starts as a copy of the head's (its image paths are absolute: the raw data lie outside it)
    os.makedirs(uni_dir, exist_ok=True)
    shutil.copyfile(head_path, uni_path)
    # a second prepare into that folder adds the hand to the head's datalist
    hand_args = ["hand", "--raw", hand, "--out", uni_dir, "--size", *map(str, budget["hand_size"])]
    _run(prep + hand_args, os.path.join(work, "prepare_hand.log"))
    # the demo's synthetic chest and pelvis (no real images of either are available here)
    from scripts.datasets.demo import ensure_demo

    demo_root = os.path.join(REPO, "data", "demo")
    demo = json.load(open(ensure_demo(demo_root)))
    uni = json.load(open(uni_path))
    for name in ("chest", "pelvis"):
        uni["anatomies"][name] = demo["anatomies"][name]
        for split in ("training", "validation", "test"):
            uni.setdefault(split, []).extend(
                dict(it, image=os.path.join(demo_root, it["image"])) for it in demo[split] if it["anatomy"] == name
            )
    from scripts.files import write_json_atomic

    write_json_atomic(uni, uni_path)
    return {"head": head_dir, "universal": uni_dir}


def train_and_evaluate(name: str, dataset_dir: str, extra_configs: list[str], overrides: dict, work: str, device: str) -> dict:
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: training would resume from an earlier run's checkpoints
    common = {"dataset_dir": dataset_dir, "output_dir": out, "experiment_name": f"accuracy_{name}"}
    if device:
        common["device"] = f"$torch.device('{device}')"
    train_s = _bundle("training", TRAIN + extra_configs, {**common, **overrides}, os.path.join(work, f"{name}_train.log"))
    eval_dir = os.path.join(out, "test1")
    _bundle(
        "evaluating", EVALUATE + extra_configs,
        {**common, "output_dir": eval_dir, "ckpt_path": os.path.join(out, "models", "model.pt"), "eval_split": "test1",
         "baseline": False},
        os.path.join(work, f"{name}_eval.log"),
    )
    metrics = json.load(open(os.path.join(eval_dir, "metrics.json")))
    head = metrics["head"]
    with open(os.path.join(work, f"{name}_train.log")) as f:
        epochs = len(re.findall(r"SupervisedTrainer - INFO - Epoch\[\d+\] Complete", f.read()))  # not the evaluator's
    return {"name": name, "train_seconds": round(train_s, 1), "epochs": epochs, "MRE": head["MRE"], "STD": head["STD"], "SDR": head["SDR"],
            "images": head["images"], "unit": head["unit"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "accuracy"), help="folder for datalists, runs and logs")
    parser.add_argument("--json", help="also write the table and settings as JSON here")
    parser.add_argument("--device", default="", help="e.g. cuda:0 (default: the configs' choice)")
    parser.add_argument("--only", nargs="*", help="run only these of: gu2net_head unet_head gu2net_universal "
                        "(with --json, the other rows are kept from that file)")
    parser.add_argument("--minutes", type=float, help="training minutes per run, in place of the budget's")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(DATA, "head")):
        sys.exit(f"the ISBI 2015 data is not at {os.path.join(DATA, 'head')}")
    budget = BUDGETS[args.budget]
    if args.minutes:
        budget = dict(budget, overrides=dict(budget["overrides"], max_epochs=1000, time_limit_minutes=args.minutes))
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    sets = prepare(args.work, budget)
    runs = [
        ("gu2net_head", sets["head"], []),
        ("unet_head", sets["head"], [UNET]),
        ("gu2net_universal", sets["universal"], []),
    ]
    results = []
    for name, dataset_dir, extra in runs:
        if args.only and name not in args.only:
            continue
        print(f"== {name}: training and evaluating ...", flush=True)
        results.append(train_and_evaluate(name, dataset_dir, extra, budget["overrides"], args.work, args.device))
        print(json.dumps(results[-1]), flush=True)

    if args.only and args.json and os.path.isfile(args.json):
        # rerunning some rows: keep the other runs of the earlier JSON, in the benchmark's order
        rerun = {r["name"]: r for r in results}
        earlier = {r["name"]: r for r in json.load(open(args.json))["runs"]}
        results = [rerun.get(name) or earlier[name] for name, _, _ in runs if name in rerun or name in earlier]

    import torch

    radii = ["2", "2.5", "3", "4"]
    lines = [f"{'run':<18} {'Test1 MRE (mm)':>14} {'STD':>6} " + " ".join(f"{'SDR ' + r + 'mm':>10}" for r in radii) + f" {'train s':>8} {'epochs':>6}"]
    for r in results:
        lines.append(f"{r['name']:<18} {r['MRE']:14.2f} {r['STD']:6.2f} " + " ".join(f"{r['SDR'][k]:9.2f}%" for k in radii) + f" {r['train_seconds']:8.0f} {r['epochs']:6d}")
    lines.append(f"{'paper GU2Net (T1+T2)':<18} {PAPER_HEAD['MRE']:14.2f} {'':>6} {PAPER_HEAD['SDR']['2']:9.2f}% {'':>10} {'':>10} {PAPER_HEAD['SDR']['4']:9.2f}%")
    table = "\n".join(lines)
    settings = {
        "budget": args.budget, "head_size_WxH": budget["head_size"], "hand_size_WxH": budget["hand_size"],
        **budget["overrides"], "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "cpu_threads": torch.get_num_threads(), "total_seconds": round(time.time() - t0, 1),
        "label": "mean of senior and junior", "test_set": "ISBI 2015 Test1 (151-300)",
    }
    print(table)
    print(json.dumps(settings))
    if args.json:
        from scripts.files import write_json_atomic

        write_json_atomic({"runs": results, "paper_head": PAPER_HEAD, "settings": settings, "table": table}, args.json)


if __name__ == "__main__":
    main()
