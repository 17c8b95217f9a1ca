"""Robustness benchmark: a checkpoint scored on ISBI 2015 Test1 under controlled shifts of the image.

Each shift (``scripts/shifts.py``) is applied to the original image right after it is read, the annotations moving
along through the image's affine; the bundle's own evaluation (``configs/train.yaml`` + ``configs/evaluate.yaml``,
with mirroring and the review flag as configured) then decodes, maps the predictions back to the original image
and measures them in mm against the **original** annotations. Landmarks that a shift cuts out of the image (the
top-fifth crop, the border of the 130 % zoom) cannot be found: they are left out of the MRE and counted apart,
with the share of them that the review flag caught.

    python bench/robustness.py --ckpt runs/accuracy/gu2net_head/seed0/models/model.pt --json runs/robustness.json
    python bench/robustness.py --ckpt ... --mirror off      # as-given only (the behaviour before mirroring)
    python bench/robustness.py --smoke                      # trains a tiny model; checks that it runs end to end

One table: per shift, MRE (mm) and its ratio to the unshifted MRE, SDR 2 and 4 mm, the review flag's recall and
precision for landmarks off by more than 4 mm, the share flagged, the landmarks out of view, the images read as
mirrored; and the issue's targets (MRE <= 1.3x unshifted under every shift, mirrored within 5 %).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
DATA = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, BUNDLE)

TARGET_RATIO = 1.3
TARGET_MIRRORED = 1.05


def prepare(work: str, size: list[int]) -> str:
    """The ISBI 2015 datalist (challenge protocol: the test1 split = Test1) from ``../shared/data/head``."""
    out = os.path.join(work, "head")
    path = os.path.join(out, "datalist.json")
    if os.path.isfile(path):
        os.remove(path)
    args = [sys.executable, "-m", "scripts.prepare", "isbi2015", "--raw", os.path.join(DATA, "head"), "--out", out,
            "--protocol", "challenge", "--label", "mean", "--size", *map(str, size)]  # fmt: skip
    subprocess.run(args, cwd=BUNDLE, check=True, stdout=subprocess.DEVNULL)
    return out


def train_smoke_model(work: str, dataset_dir: str) -> str:
    """One short epoch on a few images at 64 x 80: a checkpoint to run the benchmark with, nothing more."""
    out = os.path.join(work, "smoke_model")
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
            "--dataset_dir", dataset_dir, "--output_dir", out, "--max_epochs", "1", "--val_interval", "1",
            "--batch_size", "4", "--sigma", "2.0", "--resume", "false",
            "--train#datalist", "$scripts.load_datalist(@datalist, 'training', anatomies=@anatomies)[:8]",
            "--validate#datalist", "$scripts.load_datalist(@datalist, 'validation', anatomies=@anatomies)[:4]"]  # fmt: skip
    with open(os.path.join(work, "smoke_train.log"), "w") as log:
        subprocess.run(args, cwd=BUNDLE, check=True, stdout=log, stderr=subprocess.STDOUT)
    return os.path.join(out, "models", "model.pt")


def evaluate_shift(shift: str, args: argparse.Namespace, dataset_dir: str) -> dict:
    """Run the bundle's evaluation of ``args.ckpt`` on Test1 under ``shift``; return the table row."""
    from monai.bundle import ConfigParser

    cwd = os.getcwd()
    os.chdir(BUNDLE)  # train.yaml's macros name configs/inference.yaml relative to the bundle folder
    try:
        parser = ConfigParser()
        parser.read_config([os.path.join(BUNDLE, "configs", f) for f in ("train.yaml", "evaluate.yaml")])
        base_load = ConfigParser.load_config_file(os.path.join(BUNDLE, "configs", "inference.yaml"))["load_transforms"]
        overrides = {
            "dataset_dir": dataset_dir,
            "ckpt_path": os.path.abspath(args.ckpt),
            "output_dir": os.path.join(args.work, "shifts", shift),
            "eval_split": "test1",
            "baseline": False,
            "worst_cases": 0,
            "shift": {"_target_": "scripts.ImageShiftd", "keys": "image", "name": shift},
            "load_transforms": list(base_load) + ["@shift"],
            "handlers": ["@checkpoint_loader", "@report"],
            "mirror_test": args.mirror != "off",
        }
        if args.mirror_gate is not None:
            overrides["mirror_gate"] = args.mirror_gate
        overrides.update(args.set)
        if args.images:
            overrides["dataset#data"] = f"$scripts.load_datalist(@datalist, @eval_split, anatomies=@anatomies)[:{args.images}]"
        if args.device:
            overrides["device"] = f"$torch.device('{args.device}')"
        parser.update(overrides)
        parser.get_parsed_content("initialize")
        t0 = time.time()
        parser.get_parsed_content("evaluating")
        seconds = time.time() - t0
        metric = parser.get_parsed_content("key_metric#test_mre")
        visible = parser.get_parsed_content("shift").visible
        anatomy = parser.get_parsed_content("anatomies")["head"]
        reframer = parser.get_parsed_content("reframe_inferer")
    finally:
        os.chdir(cwd)
    row = summarize(shift, metric.records, visible, max(anatomy.sdr_radii), seconds)
    # images the network looked at again at their trained size (scripts/reframing.py), and the answers kept
    row["reframed"], row["reframe_kept"] = reframer.reframed, reframer.kept
    return row


def _pct(num: float, den: float) -> float:
    return float(100.0 * num / den) if den else float("nan")


def summarize(shift: str, records: list[dict], visible: dict, radius: float, seconds: float) -> dict:
    """One row: figures over the landmarks still in view; those out of view counted with their flag share."""
    errors = np.concatenate([r["errors"] for r in records])
    review = np.concatenate([r["review"] if r.get("review") is not None else np.zeros(len(r["errors"]), bool) for r in records])
    seen = np.concatenate([visible.get(r["image"], np.ones(len(r["errors"]), bool)) for r in records])
    annotated = np.isfinite(errors)
    use = annotated & seen
    e, f = errors[use], review[use]
    off = e > radius
    gone = annotated & ~seen
    return {
        "shift": shift,
        "images": len(records),
        "landmarks": int(use.sum()),
        "MRE": float(e.mean()) if e.size else float("nan"),
        "STD": float(e.std()) if e.size else float("nan"),
        "SDR": {"2": _pct((e <= 2.0).sum(), e.size), "4": _pct((e <= 4.0).sum(), e.size)},
        "radius": radius,
        "off": int(off.sum()),
        "flag_recall": _pct((off & f).sum(), off.sum()),
        "flag_precision": _pct((off & f).sum(), f.sum()),
        "flagged_share": _pct(f.sum(), e.size),
        "out_of_view": int(gone.sum()),
        "out_of_view_flagged": _pct((gone & review).sum(), gone.sum()),
        "read_as_mirrored": int(sum(bool(r.get("mirrored")) for r in records)),
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    base = next((r["MRE"] for r in rows if r["shift"] == "none"), float("nan"))

    def f(v: float, fmt: str = "6.2f") -> str:
        return format(v, fmt) if np.isfinite(v) else "   –  "

    head = (f"{'shift':<15} {'MRE mm':>7} {'x none':>7} {'SDR2mm':>7} {'SDR4mm':>7} {'recall':>7} {'precis.':>7} "
            f"{'flagged':>7} {'out of view (flagged)':>22} {'mirrored':>9} {'reframed':>9} {'target':>7}")  # fmt: skip
    lines = [head]
    for r in rows:
        ratio = r["MRE"] / base if np.isfinite(base) and base > 0 else float("nan")
        limit = TARGET_MIRRORED if r["shift"] == "mirrored" else TARGET_RATIO
        target = "" if r["shift"] == "none" else ("ok" if ratio <= limit else "MISS")
        gone = f"{r['out_of_view']} ({f(r['out_of_view_flagged'], '.0f')} %)" if r["out_of_view"] else "0"
        lines.append(
            f"{r['shift']:<15} {f(r['MRE']):>7} {f(ratio):>7} {f(r['SDR']['2'], '6.1f'):>6}% {f(r['SDR']['4'], '6.1f'):>6}% "
            f"{f(r['flag_recall'], '6.1f'):>6}% {f(r['flag_precision'], '6.1f'):>6}% {f(r['flagged_share'], '6.1f'):>6}% "
            f"{gone:>22} {r['read_as_mirrored']:>4}/{r['images']:<4} {r.get('reframed', 0):>4}/{r['images']:<4} {target:>7}"
        )
    lines.append(f"recall / precision: of landmarks off by more than {rows[0]['radius']:g} mm (in view); "
                 f"targets: MRE <= {TARGET_RATIO}x unshifted, mirrored <= {TARGET_MIRRORED}x")  # fmt: skip
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def main() -> None:
    from scripts.shifts import SHIFTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="the checkpoint to score (model.pt of a head or universal training run)")
    parser.add_argument("--work", default=os.path.join(REPO, "runs", "robustness"), help="datalist, reports, logs")
    parser.add_argument("--json", help="also write the table and settings as JSON here")
    parser.add_argument("--shifts", nargs="*", choices=list(SHIFTS), help="only these shifts (default: all)")
    parser.add_argument("--mirror", choices=["auto", "off"], default="auto", help="mirroring at test time (default auto)")
    parser.add_argument("--mirror-gate", type=float, help="mean confidence under which the mirror is tried (config's)")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="any config override, its value read as YAML, e.g. --set reframe=false")  # fmt: skip
    parser.add_argument("--images", type=int, help="only the first N Test1 images")
    parser.add_argument("--device", default="", help="e.g. cuda:0 (default: the configs' choice)")
    parser.add_argument("--smoke", action="store_true", help="train a tiny model if no --ckpt, 4 images: checks it runs")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(DATA, "head")):
        sys.exit(f"the ISBI 2015 data is not at {os.path.join(DATA, 'head')}")
    if not args.ckpt and not args.smoke:
        parser.error("--ckpt is required (or --smoke)")
    args.work = os.path.abspath(args.work)
    args.ckpt = os.path.abspath(args.ckpt) if args.ckpt else None  # evaluations run from the bundle folder
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    dataset_dir = prepare(args.work, [64, 80] if args.smoke else [128, 160])  # the checkpoint's size is used
    if args.smoke:
        args.images = args.images or 4
        args.ckpt = args.ckpt or train_smoke_model(args.work, dataset_dir)
    rows = []
    for shift in args.shifts or list(SHIFTS):
        print(f"== {shift}: {SHIFTS[shift]} ...", flush=True)
        rows.append(evaluate_shift(shift, args, dataset_dir))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    import torch

    settings = {
        "checkpoint": os.path.abspath(args.ckpt), "mirror": args.mirror, "mirror_gate": args.mirror_gate,
        "images": rows[0]["images"], "test_set": "ISBI 2015 Test1 (151-300), mean of the two doctors, mm",
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "cpu_threads": torch.get_num_threads(),
        "total_seconds": round(time.time() - t0, 1), "smoke": args.smoke,
        "shifts": {s: SHIFTS[s] for s in (args.shifts or SHIFTS)}, "overrides": dict(args.set),
    }  # fmt: skip
    print(text)
    print(json.dumps(settings))
    if args.json:
        from scripts.files import write_json_atomic

        write_json_atomic({"rows": rows, "settings": settings, "table": text}, args.json)


if __name__ == "__main__":
    main()
