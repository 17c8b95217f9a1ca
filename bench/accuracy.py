"""Accuracy benchmark on real X-rays: GU2Net vs the paper's U-Net on the head, GU2Net on the chest, universal GU2Net.

Everything runs through the bundle's own commands: the prepare command builds the datalists from
``../shared/data``, ``python -m monai.bundle run training`` trains, ``run refining`` trains the refinement stage
(``--refine off``: not), ``run evaluating`` scores the test images (in mm against the original annotations,
sub-pixel decoding, mirroring, refinement and the review flag as configured), and once more without the refiner, so
each row also shows what the refinement stage added. Every run is
repeated over seeds (``--seeds``; 3 in CPU mode) and every figure is reported as mean +- std over them (sample
standard deviation).

    python bench/accuracy.py --budget cpu --json runs/accuracy_cpu.json      # CPU: 4 runs x 3 seeds, see bench/README.md
    python bench/accuracy.py --budget cpu --augmentation paper --work runs/accuracy_paper --json runs/accuracy_paper.json
    python bench/accuracy.py --budget smoke --seeds 2                        # minutes: checks it runs end to end
    python bench/accuracy.py --only gu2net_head --seeds 1 --first-seed 1 --json runs/s1.json   # one seed per lane,
    python bench/accuracy.py --combine runs/s0.json runs/s1.json runs/s2.json --json runs/all.json  # then joined
    python bench/accuracy.py --only gu2net_head --keep-trained --work runs/accuracy  # add the refiner to earlier runs
    python bench/accuracy.py --budget paper --json runs/accuracy_paper.json  # the paper's recipe, for a GPU

Runs: (1) ``gu2net_head``: GU2Net on ISBI 2015 (training 001-150 with a seeded validation slice), scored on Test1
(151-300, mean of the two doctors); (2) ``unet_head``: MONAI's UNet under identical conditions; (3) ``gu2net_chest``:
GU2Net on the 200 JSRT chest radiographs (166 contour points, 0.35 mm; seeded 70/10/20 % split); (4)
``gu2net_universal``: one GU2Net on head + chest + the 7 real hands (wrist-rule mm), real images only, each anatomy
scored on its own test images; ``gu2net_hand`` (hands alone) runs on request (``--only``). Every run has the same
budget (iterations in CPU mode), so the universal run's rows say per anatomy whether learning together helps or
hurts at that budget. This is a benchmark, not a test: it prints its figures and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
DATA = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, BUNDLE)

# the paper's Table 1 head row (GU2Net trained on all four data sets; Test1 + Test2 combined)
PAPER_HEAD = {"MRE": 1.51, "SDR": {"2": 78.67, "4": 94.67}}
# the targets for gu2net_head in CPU mode (mean of 3 seeds)
TARGETS = {"MRE": 1.50, "SDR2": 78.0, "MRE_std": 0.05, "flag_recall": 90.0, "flag_precision": 50.0}

BUDGETS = {
    # 2 CPU cores: 0.31 of the paper's head resolution per side (a tenth of its pixels). Every run trains the same
    # number of iterations (an epoch count from its datalist, so the run is the same on a busy machine), with one
    # triangular LR cycle over the run (up to lr_max halfway, down to lr_min at the end) and a time limit as a safety
    # net. 544 (16 head epochs): the network and its refiner in about 17 minutes on 2 idle cores, within the issue's
    # 20 per seed (800, before 0.10.0, about 25). sigma 2 px (3 px at 128 x 160 would blur over ~4.5 mm).
    "cpu": {
        "sizes": {"head": [128, 160], "hand": [112, 160], "chest": [128, 128]},
        "iterations": 544,
        "seeds": 3,
        "overrides": {"sigma": 2.0, "batch_size": 4, "val_interval": 2, "lr_min": 0.0005, "lr_max": 0.002,
                      "time_limit_minutes": 20, "translate_px": 3},  # fmt: skip
    },
    # a few minutes: checks that the benchmark runs end to end on a few images per anatomy; its figures mean nothing
    "smoke": {
        "sizes": {"head": [64, 80], "hand": [48, 64], "chest": [64, 64]},
        "iterations": None,
        "seeds": 1,
        "limit": {"training": 8, "validation": 4, "test": 4},
        "overrides": {"sigma": 2.0, "batch_size": 4, "max_epochs": 1, "val_interval": 1, "translate_px": 2},
    },
    # the paper's recipe: 416 x 512, sigma 3, batch 4, 100 epochs, cyclic LR 1e-4..1e-2 (train.yaml's defaults)
    "paper": {
        "sizes": {"head": [416, 512], "hand": [352, 512], "chest": [512, 512]},
        "iterations": None,
        "seeds": 1,
        "overrides": {"max_epochs": 100, "val_interval": 2},
    },
}

TRAIN = ["configs/train.yaml"]
EVALUATE = ["configs/train.yaml", "configs/evaluate.yaml"]
UNET = os.path.join(REPO, "bench", "unet.yaml")
REFINE = "configs/refine.yaml"
# name -> (datalist, extra configs, evaluated split); the head is scored on Test1 (the universal set's "test" holds
# the head's Test1 too: the challenge protocol's test = Test1 + Test2, and Test2 is not here)
RUNS = {
    "gu2net_head": ("head", [], "test1"),
    "unet_head": ("head", [UNET], "test1"),
    "gu2net_chest": ("chest", [], "test"),
    "gu2net_universal": ("universal", [], "test"),
    "gu2net_hand": ("hand", [], "test"),
}
DEFAULT_RUNS = ["gu2net_head", "unet_head", "gu2net_chest", "gu2net_universal"]
ALONE = {"head": "gu2net_head", "chest": "gu2net_chest", "hand": "gu2net_hand"}


def _run(args: list[str], log: str) -> float:
    """Run a command from the bundle folder, writing its output to ``log``; return the seconds it took."""
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


def prepare(work: str, budget: dict, val_fraction: float | None) -> dict[str, str]:
    """Build the head, chest, hand and universal (head + chest + hand) datalists with the bundle's prepare command."""
    prep = [sys.executable, "-m", "scripts.prepare"]
    sizes = budget["sizes"]
    head_args = ["isbi2015", "--raw", os.path.join(DATA, "head"), "--protocol", "challenge", "--label", "mean",
                 "--size", *map(str, sizes["head"])]  # fmt: skip
    if val_fraction is not None:
        head_args += ["--val-fraction", str(val_fraction)]
    # JSRT: mm from the file's per-image spacing; SDR radii 3/6/9 mm stated here (contour points slide along the
    # border, so their errors are partly contour-following; the generic reader's default radii would be these too)
    chest_args = ["generic", "--raw", os.path.join(DATA, "chest", "landmarks.csv"), "--anatomy", "chest",
                  "--size", *map(str, sizes["chest"]), "--val-fraction", "0.1", "--test-fraction", "0.2",
                  "--sdr-radii", "3", "6", "9"]  # fmt: skip
    hand_args = ["hand", "--raw", os.path.join(DATA, "hand"), "--size", *map(str, sizes["hand"])]
    sets = {name: os.path.join(work, name) for name in ("head", "chest", "hand", "universal")}
    for path in sets.values():  # start afresh: prepare merges into an existing datalist
        if os.path.isfile(os.path.join(path, "datalist.json")):
            os.remove(os.path.join(path, "datalist.json"))
    for name, step in {"head": head_args, "chest": chest_args, "hand": hand_args}.items():
        _run(prep + step + ["--out", sets[name]], os.path.join(work, f"prepare_{name}.log"))
    # the universal set: the three datalists in one, anatomies in this order (their image paths are absolute)
    universal: dict = {"anatomies": {}, "prepared": {}}
    for name in ("head", "chest", "hand"):
        data = json.load(open(os.path.join(sets[name], "datalist.json")))
        for key, value in data.items():
            if isinstance(value, list):
                universal.setdefault(key, []).extend(value)
            elif key in ("anatomies", "prepared"):
                universal[key].update(value)
    from scripts.files import write_json_atomic

    write_json_atomic(universal, os.path.join(sets["universal"], "datalist.json"))
    return sets


def _limited(split: str, n: int) -> str:
    """A datalist expression: the first ``n`` items of each anatomy of ``split`` (smoke runs)."""
    items = f"scripts.load_datalist(@datalist, {split}, anatomies=@anatomies)"
    return f"$[d for a in @anatomies.names for d in [x for x in {items} if x['anatomy'] == a][:{n}]]"


def _batches_per_epoch(dataset_dir: str, batch_size: int) -> int:
    data = json.load(open(os.path.join(dataset_dir, "datalist.json")))
    counts: dict[str, int] = {}
    for item in data["training"]:
        counts[item["anatomy"]] = counts.get(item["anatomy"], 0) + 1
    return sum(math.ceil(n / batch_size) for n in counts.values())


def train_and_evaluate(name: str, seed: int, dataset_dir: str, args: argparse.Namespace, budget: dict) -> dict:
    _, extra, split = RUNS[name]
    out = os.path.join(args.work, name, f"seed{seed}")
    model = os.path.join(out, "models", "model.pt")
    reuse = args.keep_trained and os.path.isfile(model)
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: training would resume from an earlier run's checkpoints
    common = {"dataset_dir": dataset_dir, "output_dir": out, "experiment_name": f"accuracy_{name}", "seed": seed}
    if args.device:
        common["device"] = f"$torch.device('{args.device}')"
    overrides = dict(budget["overrides"])
    if args.augmentation:
        overrides["augmentation"] = args.augmentation
    if args.ema_decay is not None:
        overrides["ema_decay"] = args.ema_decay
    if budget.get("iterations"):
        batches = _batches_per_epoch(dataset_dir, int(overrides["batch_size"]))
        epochs = max(1, round(budget["iterations"] / batches))
        overrides.update(max_epochs=epochs, lr_step_size=max(1, epochs * batches // 2))
    if args.minutes:
        overrides["time_limit_minutes"] = args.minutes
    limit = budget.get("limit")
    if limit:
        overrides["train#datalist"] = _limited("'training'", limit["training"])
        overrides["validate#datalist"] = _limited("'validation'", limit["validation"])
    overrides.update(args.set)
    logs = {k: os.path.join(args.work, f"{name}_seed{seed}_{k}.log") for k in ("train", "refine", "eval", "eval_coarse")}
    train_s = None if reuse else _bundle("training", TRAIN + extra, {**common, **overrides}, logs["train"])
    refine_s = None
    if args.refine == "on":
        # the refinement stage (configs/refine.yaml) on the same training images, under the same time limit; the
        # smoke budget: its few training images, one epoch
        refine = {**common, **{k: v for k, v in overrides.items() if k == "time_limit_minutes"}}
        if limit:
            refine.update({"refine#datalist": overrides["train#datalist"], "refine_epochs": 1})
        refine_s = _bundle("refining", TRAIN + extra + [REFINE], {**refine, **args.set}, logs["refine"])
    evaluation = {**common, "output_dir": os.path.join(out, split), "ckpt_path": model, "eval_split": split,
                  "baseline": False, "mirror_test": args.mirror != "off", "refine": args.refine == "on"}  # fmt: skip
    if limit:
        evaluation["dataset#data"] = _limited("@eval_split", limit["test"])
    _bundle("evaluating", EVALUATE + extra, {**evaluation, **args.set}, logs["eval"])
    metrics = json.load(open(os.path.join(out, split, "metrics.json")))
    coarse = {}
    if args.refine == "on":
        # the same checkpoint without the refiner: what the second stage adds, image for image
        evaluation.update(output_dir=os.path.join(out, f"{split}_coarse"), refine=False)
        _bundle("evaluating", EVALUATE + extra, {**evaluation, **args.set}, logs["eval_coarse"])
        before = json.load(open(os.path.join(out, f"{split}_coarse", "metrics.json")))
        coarse = {a: {"MRE": v["MRE"], "SDR": v["SDR"]} for a, v in before.items() if not a.startswith("_")}
    epochs = None
    if os.path.isfile(logs["train"]):  # a reused run (--keep-trained) may have left none here
        with open(logs["train"]) as f:
            epochs = len(re.findall(r"SupervisedTrainer - INFO - Epoch\[\d+\] Complete", f.read()))  # not the evaluator's
    anatomies = {}
    for anatomy, v in metrics.items():
        if anatomy.startswith("_"):
            continue
        review = v.get("review", {})
        anatomies[anatomy] = {
            "images": v["images"], "unit": v["unit"], "MRE": v["MRE"], "STD": v["STD"], "median": v["median"],
            "SDR": v["SDR"], "flag_recall": review.get("recall"), "flag_precision": review.get("precision"),
            "flag_threshold": review.get("threshold"), "flagged_share": review.get("flagged_share"),
            "mirrored_images": v.get("mirrored_images", 0), "coarse": coarse.get(anatomy),
        }  # fmt: skip
    return {"name": name, "seed": seed, "split": split, "epochs": epochs, "anatomies": anatomies,
            "train_seconds": None if train_s is None else round(train_s, 1),  # None: --keep-trained reused the run
            "refine_seconds": None if refine_s is None else round(refine_s, 1)}  # fmt: skip


def _mean_std(values: list) -> dict:
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def aggregate(seeds: list[dict]) -> dict:
    """Per anatomy, mean and sample std over the seeds of every figure; the run's epochs and training time."""
    out: dict = {"epochs": _mean_std([s["epochs"] for s in seeds]), "train_seconds": _mean_std([s["train_seconds"] for s in seeds]),
                 "refine_seconds": _mean_std([s.get("refine_seconds") for s in seeds]), "anatomies": {}}  # fmt: skip
    for anatomy in seeds[0]["anatomies"]:
        runs = [s["anatomies"][anatomy] for s in seeds if anatomy in s["anatomies"]]
        entry = {"images": runs[0]["images"], "unit": runs[0]["unit"]}
        for key in ("MRE", "STD", "median", "flag_recall", "flag_precision", "flag_threshold", "flagged_share"):
            entry[key] = _mean_std([r[key] for r in runs])
        entry["SDR"] = {r: _mean_std([x["SDR"].get(r) for x in runs]) for r in runs[0]["SDR"]}
        if all(r.get("coarse") for r in runs):  # scored without the refinement stage too
            entry["coarse"] = {"MRE": _mean_std([r["coarse"]["MRE"] for r in runs]),
                               "SDR": {k: _mean_std([r["coarse"]["SDR"].get(k) for r in runs]) for k in runs[0]["SDR"]}}  # fmt: skip
        out["anatomies"][anatomy] = entry
    return out


def _ms(s: dict, digits: int = 2, pct: bool = False) -> str:
    if s is None or s.get("mean") is None:
        return "–"
    unit = " %" if pct else ""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{unit}"


def together_vs_alone(runs: dict) -> list[dict]:
    """Per anatomy of the universal run: its MRE minus the MRE of GU2Net trained on that anatomy alone."""
    rows = []
    uni = runs.get("gu2net_universal", {}).get("aggregate", {}).get("anatomies", {})
    for anatomy, u in uni.items():
        alone_name = ALONE.get(anatomy)
        a = runs.get(alone_name, {}).get("aggregate", {}).get("anatomies", {}).get(anatomy) if alone_name else None
        if not a or u["MRE"]["mean"] is None or a["MRE"]["mean"] is None:
            rows.append({"anatomy": anatomy, "verdict": f"no {alone_name or 'single-anatomy'} run to compare"})
            continue
        diff = u["MRE"]["mean"] - a["MRE"]["mean"]
        se = math.sqrt(u["MRE"]["std"] ** 2 / u["MRE"]["n"] + a["MRE"]["std"] ** 2 / a["MRE"]["n"])
        if se == 0:
            verdict = ("helps" if diff < 0 else "hurts") + " (one seed: no noise estimate)"
        elif abs(diff) <= 2 * se:
            verdict = "no clear difference (within 2 standard errors)"
        else:
            verdict = "helps" if diff < 0 else "hurts"
        rows.append({"anatomy": anatomy, "alone": a["MRE"]["mean"], "together": u["MRE"]["mean"], "difference": diff,
                     "standard_error": se, "unit": u["unit"], "verdict": verdict})  # fmt: skip
    return rows


def format_table(runs: dict) -> str:
    lines = [f"{'run':<17} {'anatomy':<7} {'MRE':>13} {'STD':>6}  {'SDR (radius: mean ± std %)':<58} "
             f"{'flag recall':>16} {'flag precision':>16} {'epochs':>6} {'train min':>9} {'refine min':>10}"]  # fmt: skip
    for name, run in runs.items():
        agg = run["aggregate"]
        for anatomy, v in agg["anatomies"].items():
            sdr = "  ".join(f"{r}: {_ms(s, 1)}" for r, s in v["SDR"].items())
            minutes = [(agg.get(k) or {}).get("mean") for k in ("train_seconds", "refine_seconds")]
            minutes = [m / 60 if m else float("nan") for m in minutes]
            lines.append(
                f"{name:<17} {anatomy:<7} {_ms(v['MRE']):>13} {v['STD']['mean'] or float('nan'):6.2f}  {sdr:<58} "
                f"{_ms(v['flag_recall'], 1, True):>16} {_ms(v['flag_precision'], 1, True):>16} "
                f"{agg['epochs']['mean'] or 0:6.1f} {minutes[0]:9.1f} {minutes[1]:10.1f}"
            )
            if v.get("coarse"):
                sdr = "  ".join(f"{r}: {_ms(s, 1)}" for r, s in v["coarse"]["SDR"].items())
                lines.append(f"{'  without refiner':<17} {anatomy:<7} {_ms(v['coarse']['MRE']):>13} {'':6}  {sdr:<58}")
    lines.append(f"{'paper GU2Net (T1+T2)':<25} {PAPER_HEAD['MRE']:>13.2f} {'':>6}  2: {PAPER_HEAD['SDR']['2']:.2f}  4: {PAPER_HEAD['SDR']['4']:.2f}")
    lines.append(f"(mean ± sample std over {max(r['aggregate']['anatomies'][a]['MRE']['n'] for r in runs.values() for a in r['aggregate']['anatomies'])} "
                 "seed(s); unit mm; flag = review flag, recall/precision of landmarks off by more than the largest SDR radius)")  # fmt: skip
    comparison = together_vs_alone(runs)
    if comparison:
        lines += ["", "universal vs alone, same budget (MRE, together minus alone):"]
        for c in comparison:
            if "difference" in c:
                lines.append(f"  {c['anatomy']:<6} alone {c['alone']:.2f}, together {c['together']:.2f} {c['unit']}: "
                             f"{c['difference']:+.2f} ± {c['standard_error']:.2f} -> {c['verdict']}")  # fmt: skip
            else:
                lines.append(f"  {c['anatomy']:<6} {c['verdict']}")
    head = runs.get("gu2net_head", {}).get("aggregate", {}).get("anatomies", {}).get("head")
    if head and head["MRE"]["mean"] is not None:
        checks = [
            ("MRE <= 1.50 mm", head["MRE"]["mean"] <= TARGETS["MRE"]),
            ("SDR 2 mm >= 78 %", (head["SDR"].get("2", {}).get("mean") or 0) >= TARGETS["SDR2"]),
            ("std over seeds <= 0.05 mm", head["MRE"]["n"] > 1 and head["MRE"]["std"] <= TARGETS["MRE_std"]),
            ("flag recall >= 90 %", (head["flag_recall"]["mean"] or 0) >= TARGETS["flag_recall"]),
            ("flag precision >= 50 %", (head["flag_precision"]["mean"] or 0) >= TARGETS["flag_precision"]),
        ]
        lines += ["", "gu2net_head targets: " + ", ".join(f"{label}: {'ok' if ok else 'MISS'}" for label, ok in checks)]
    return "\n".join(lines)


def combine(paths: list[str], json_out: str | None) -> None:
    """Join the seeds of several benchmark JSONs (e.g. one per parallel lane) run by run and aggregate them again.

    Refuses a seed that appears twice in one run, and files whose training settings differ (other than the seeds and
    timings), since their mean would mix two recipes."""
    runs: dict = {}
    settings: dict | None = None
    # the time limit is a safety net (a run it cut shows in its epochs), not part of the recipe
    volatile = ("seeds", "total_seconds", "cpu_threads", "first_seed", "time_limit_minutes", "kept_trained")
    for path in paths:
        try:
            data = json.load(open(path))
            file_runs, file_settings = data["runs"], data["settings"]
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"{path}: not a benchmark JSON written with --json ({e})")
        fixed = {k: v for k, v in file_settings.items() if k not in volatile}
        if settings is None:
            settings = fixed
        elif fixed != settings:
            diff = sorted(k for k in set(fixed) | set(settings) if fixed.get(k) != settings.get(k))
            sys.exit(f"{path}: its settings differ from {paths[0]}'s in {', '.join(diff)}; not joining two recipes")
        for name, run in file_runs.items():
            joined = runs.setdefault(name, [])
            taken = {s["seed"] for s in joined}
            for s in run["seeds"]:
                if s["seed"] in taken:
                    sys.exit(f"{path}: {name} seed {s['seed']} is already in an earlier file; not counting it twice")
                joined.append(s)
    runs = {name: {"seeds": sorted(seeds, key=lambda s: s["seed"]), "aggregate": aggregate(seeds)}
            for name, seeds in runs.items()}  # fmt: skip
    settings = dict(settings or {}, seeds=max(len(r["seeds"]) for r in runs.values()), combined_from=paths)
    print(report(runs, settings, json_out))


def report(runs: dict, settings: dict, json_out: str | None) -> str:
    """The mean ± std table of ``runs``; with ``json_out``, also every seed's figures and the settings as JSON."""
    table = format_table(runs)
    if json_out:
        from scripts.files import write_json_atomic

        write_json_atomic({"runs": runs, "together_vs_alone": together_vs_alone(runs), "paper_head": PAPER_HEAD,
                           "settings": settings, "table": table}, json_out)  # fmt: skip
    return table


def train_defaults() -> dict:
    """``configs/train.yaml``'s values (what a run trained with where it did not override them)."""
    import yaml

    with open(os.path.join(BUNDLE, TRAIN[0])) as f:
        return yaml.safe_load(f)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "accuracy"), help="folder for datalists, runs and logs")
    parser.add_argument("--json", help="also write the table, every seed's figures and the settings as JSON here")
    parser.add_argument("--device", default="", help="e.g. cuda:0 (default: the configs' choice)")
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="run only these (with --json, the other runs are "
                        f"kept from that file); default: {' '.join(DEFAULT_RUNS)}")  # fmt: skip
    parser.add_argument("--seeds", type=int, help="seeds per run, 0..N-1 (default: 3 in CPU mode, else 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..FIRST+N-1 instead (seeds in "
                        "parallel lanes, each with its own --work and --json; --combine joins them)")  # fmt: skip
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="train nothing: join the seeds of these earlier "
                        "--json files run by run, then print (and with --json write) the mean ± std table")  # fmt: skip
    parser.add_argument("--augmentation", choices=["robust", "paper"], help="the training augmentation (default: "
                        "train.yaml's, robust with only its framing lever on; paper: the paper's recipe)")  # fmt: skip
    parser.add_argument("--ema-decay", type=float, help="the weights' moving average (0: off; default: the config's)")
    parser.add_argument("--mirror", choices=["auto", "off"], default="auto", help="mirroring at test time")
    parser.add_argument("--refine", choices=["on", "off"], default="on", help="train the refinement stage after "
                        "each run and score with it, and without it for comparison (default on)")  # fmt: skip
    parser.add_argument("--keep-trained", action="store_true", help="reuse a finished training run found in --work "
                        "(its models/model.pt) instead of training again: e.g. to add the refiner to earlier runs")  # fmt: skip
    parser.add_argument("--val-fraction", type=float, help="share of ISBI's training images for validation (default 0.1)")
    parser.add_argument("--minutes", type=float, help="training time limit per run, in place of the budget's")
    parser.add_argument("--iterations", type=int, help="training iterations per run, in place of the budget's (CPU mode)")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="any config override for every run, e.g. --set crop_prob=0 (ablations)")  # fmt: skip
    args = parser.parse_args()
    args.set = dict(args.set)
    if args.combine:
        combine(args.combine, args.json)
        return
    for folder in ("head", "chest", "hand"):
        if not os.path.isdir(os.path.join(DATA, folder)):
            sys.exit(f"the real data is not at {os.path.join(DATA, folder)}")
    budget = BUDGETS[args.budget]
    if args.iterations:
        budget = dict(budget, iterations=args.iterations)
    seeds = args.seeds or budget["seeds"]
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    sets = prepare(args.work, budget, args.val_fraction)
    runs: dict = {}
    for name in args.only or DEFAULT_RUNS:
        results = []
        for seed in range(args.first_seed, args.first_seed + seeds):
            print(f"== {name}, seed {seed}: training and evaluating ...", flush=True)
            results.append(train_and_evaluate(name, seed, sets[RUNS[name][0]], args, budget))
            print(json.dumps(results[-1]), flush=True)
        runs[name] = {"seeds": results, "aggregate": aggregate(results)}

    if args.only and args.json and os.path.isfile(args.json):
        # rerunning some runs: keep the others of the earlier JSON, in the benchmark's order
        earlier = json.load(open(args.json)).get("runs", {})
        if isinstance(earlier, dict):
            runs = {n: runs.get(n) or earlier[n] for n in RUNS if n in runs or n in earlier}

    import torch

    defaults = train_defaults()
    settings = {
        "budget": args.budget, "sizes_WxH": budget["sizes"], "iterations_per_run": budget.get("iterations"),
        **budget["overrides"], "time_limit_minutes": args.minutes or budget["overrides"].get("time_limit_minutes"),
        "seeds": seeds, "first_seed": args.first_seed, "augmentation": args.augmentation or defaults["augmentation"],
        "ema_decay": args.ema_decay if args.ema_decay is not None else defaults["ema_decay"],
        "mirror": args.mirror, "refine": args.refine, "kept_trained": args.keep_trained, "val_fraction": args.val_fraction, "set": args.set,
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "cpu_threads": torch.get_num_threads(), "total_seconds": round(time.time() - t0, 1),
        "label": "head: mean of senior and junior", "test_sets": "head: ISBI 2015 Test1 (151-300); chest: JSRT, seeded 20 %; "
        "hand: Payer et al.'s labels, seeded third",
    }  # fmt: skip
    print(report(runs, settings, args.json))
    print(json.dumps(settings))


if __name__ == "__main__":
    main()
