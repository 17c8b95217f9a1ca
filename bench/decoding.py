"""Decoding benchmark: argmax vs local mean vs the Gaussian fit, at several window sizes; it sets the default.

Three measurements, each a table (this is a benchmark, not a test: it prints, and writes JSON with --json):

(a) synthetic: Gaussian heatmaps (sigma 3 px) at known sub-pixel centres, exact and with additive noise; error
    in network pixels.
(b) demo: the demo model's heatmaps on the demo's test split (``runs/demo/models/model.pt``; train it first
    with the README's main command), decoded, mapped back to the original images and measured against the
    original annotations, per anatomy in its unit.
(c) ISBI 2015 targets: the training targets the network learns, rendered from the real annotations (mean of
    the two doctors, ``../shared/data/head``) at the paper's 416 x 512 through the bundle's own resize
    mapping, decoded and mapped back to the 1935 x 2400 originals; error in mm (0.1 mm per pixel). This is the
    floor each decoder puts under any model's head MRE.

    python bench/decoding.py                      # all three, where their inputs exist
    python bench/decoding.py --json runs/decoding.json --images 300
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
HEAD = os.path.join(REPO, "..", "shared", "data", "head")
sys.path.insert(0, BUNDLE)

from scripts.heatmaps import DECODERS, LandmarkHeatmap, decode_heatmaps, grid_to_original  # noqa: E402
from scripts.metrics import radial_errors  # noqa: E402

WINDOWS = (3, 5, 7, 9, 11, 13)
NOISE = (0.0, 0.02, 0.05)


def variants() -> list[tuple[str, int]]:
    """Every decoder with every window (argmax has none)."""
    return [("argmax", 1)] + [(m, w) for m in DECODERS if m != "argmax" for w in WINDOWS]


def _label(method: str, window: int) -> str:
    return method if method == "argmax" else f"{method} {window}x{window}"


def _mean_errors(
    heatmap_sets: Iterable[tuple[torch.Tensor, Callable[[torch.Tensor], np.ndarray]]], noise: float, seed: int = 0
) -> dict[str, float]:
    """Mean error per decoder over ``(heatmaps, measure)`` pairs; ``measure(points)`` gives the errors."""
    gen = torch.Generator().manual_seed(seed)
    errors: dict[str, list[np.ndarray]] = {_label(m, w): [] for m, w in variants()}
    for heatmaps, measure in heatmap_sets:
        if noise:
            heatmaps = heatmaps + noise * torch.randn(heatmaps.shape, generator=gen)
        for m, w in variants():
            errors[_label(m, w)].append(measure(decode_heatmaps(heatmaps, m, w)[0]))
    return {k: float(np.nanmean(np.concatenate(v))) for k, v in errors.items()}


def synthetic(count: int = 2000, size: int = 64, sigma: float = 3.0) -> dict[str, dict[str, float]]:
    """(a) exact and noisy Gaussians at uniform sub-pixel centres; mean error in pixels."""
    centres = np.random.default_rng(0).uniform(8, size - 8, (count, 2))
    hm = LandmarkHeatmap(sigma)(torch.as_tensor(centres, dtype=torch.float32), (size, size))

    def measure(p: torch.Tensor) -> np.ndarray:
        return np.linalg.norm(p.numpy() - centres, axis=1)

    return {f"noise {n:g}": _mean_errors([(hm, measure)], n) for n in NOISE}


def demo(ckpt: str, dataset_dir: str) -> dict[str, dict[str, float]]:
    """(b) the demo model on the demo's test split; mean error per anatomy in its unit (mm or px)."""
    from monai.bundle import ConfigParser

    from scripts.checkpoints import read_checkpoint

    os.chdir(BUNDLE)  # train.yaml's macros name the base config relative to the bundle folder
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", f) for f in ("train.yaml", "evaluate.yaml")])
    parser.update({"ckpt_path": ckpt, "dataset_dir": dataset_dir, "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network")
    network.load_state_dict(read_checkpoint(ckpt)["model"])
    network.eval()
    per_anatomy: dict[str, list] = {}
    for item in parser.get_parsed_content("dataset"):
        with torch.no_grad():
            hm = network(item["image"][None].float(), int(item["domain"]))[0]
        image = item["image"]

        def measure(p: torch.Tensor, image=image, item=item) -> np.ndarray:
            original = grid_to_original(p, image.affine, image.meta["original_affine"]).numpy()
            return radial_errors(original, item["landmarks_original"], item["spacing"])

        per_anatomy.setdefault(f"{item['anatomy']} ({item['unit']})", []).append((hm, measure))
    return {a: _mean_errors(sets, 0.0) for a, sets in per_anatomy.items()}


def _read_mm(path: str) -> dict[str, np.ndarray]:
    with open(path) as f:
        return {row[0]: np.asarray(row[1:39], dtype=np.float64).reshape(19, 2) for row in csv.reader(f) if row}


def isbi_targets(count: int, size: tuple[int, int] = (416, 512), sigma: float = 3.0) -> dict[str, dict[str, float]]:
    """(c) targets rendered from real ISBI 2015 annotations, decoded, mapped back; mean error in mm."""
    from monai.data import MetaTensor

    from scripts.landmark_transforms import ResizeToSized

    ann = os.path.join(HEAD, "annotations")
    senior, junior = _read_mm(os.path.join(ann, "all_senior.csv")), _read_mm(os.path.join(ann, "all_junior.csv"))
    ids = [i for i in sorted(senior) if os.path.isfile(os.path.join(HEAD, "images", f"{i}.jpg"))][:count]
    # the bundle's own resize of a 1935 x 2400 original gives the grid mapping (identical for every image)
    original = MetaTensor(torch.zeros(1, 1935, 2400), affine=torch.eye(3, dtype=torch.float64))
    resized = ResizeToSized(keys="image")({"image": original, "size": list(size)})["image"]
    generator = LandmarkHeatmap(sigma)
    sets = []
    for i in ids:
        true = (senior[i] + junior[i]) / 2 / 0.1  # mm -> original pixels
        grid = grid_to_original(torch.as_tensor(true), original.affine, resized.affine)  # original -> network grid

        def measure(p: torch.Tensor, true=true) -> np.ndarray:
            return radial_errors(grid_to_original(p, resized.affine, original.affine).numpy(), true, (0.1, 0.1))

        sets.append((generator(grid, size), measure))
    print(f"ISBI 2015: {len(ids)} images, {len(ids) * 19} landmarks, targets at {size[0]}x{size[1]}, sigma {sigma}", flush=True)
    return {f"noise {n:g}": _mean_errors(sets, n) for n in NOISE}


def print_table(title: str, unit: str, columns: dict[str, dict[str, float]]) -> None:
    names = list(columns)
    print(f"\n{title} (mean error, {unit})")
    print(f"{'decoder':<18}" + "".join(f"{n:>16}" for n in names))
    for m, w in variants():
        label = _label(m, w)
        print(f"{label:<18}" + "".join(f"{columns[n][label]:>16.4f}" for n in names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo_ckpt", default=os.path.join(REPO, "runs", "demo", "models", "model.pt"))
    ap.add_argument("--demo_dir", default=os.path.join(REPO, "data", "demo"))
    ap.add_argument("--images", type=int, default=150, help="ISBI images to use (up to 300)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    out: dict[str, dict] = {}
    t0 = time.time()
    out["synthetic_px"] = synthetic()
    print_table("(a) synthetic Gaussians, sigma 3 px, 2000 sub-pixel centres", "px", out["synthetic_px"])
    if os.path.isfile(args.demo_ckpt):
        out["demo"] = demo(args.demo_ckpt, args.demo_dir)
        print_table(f"(b) demo model {args.demo_ckpt} on the demo test split", "each anatomy's unit", out["demo"])
    else:
        print(f"\n(b) skipped: no demo model at {args.demo_ckpt} (train it with the README's main command)")
    if os.path.isdir(HEAD):
        out["isbi_targets_mm"] = isbi_targets(args.images)
        print_table("(c) ISBI 2015 targets at 416 x 512, mapped back to 1935 x 2400", "mm", out["isbi_targets_mm"])
    else:
        print(f"\n(c) skipped: no ISBI 2015 data at {HEAD}")
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
