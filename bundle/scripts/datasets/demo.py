"""A small, deterministic, synthetic four-anatomy X-ray set: the bundle's embedded demo.

It is NOT anatomy: each "anatomy" is a geometric stand-in (bright "bones" drawn as thick bars between
landmarks over a soft body, dark lung fields for the chest) with the real landmark counts (head 19, hand
37, chest 6, pelvis 10). Every image draws a random similarity transform and per-landmark shape noise,
so landmarks move with the visible shape; a network that finds them has learnt to read the image, which a
mean-shape guess cannot do. Head and hand carry a made-up mm spacing (to exercise the mm path); chest and
pelvis are in pixels, like their real counterparts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..files import atomic_folder, write_json_atomic

__all__ = ["DEMO_ANATOMIES", "generate_demo", "ensure_demo"]


@dataclass(frozen=True)
class _Template:
    points: np.ndarray  # (N, 2) in [0, 1] x [0, 1] of the image (x, y)
    bones: tuple[tuple[int, int], ...]  # bright bars between landmarks
    fields: tuple[tuple[int, ...], ...] = ()  # dark filled polygons (lungs)
    image_size: tuple[int, int] = (192, 240)  # original (W, H)
    spacing: tuple[float, float] | None = None


def _chain(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def _head() -> _Template:
    t = np.linspace(0.15 * np.pi, 1.35 * np.pi, 10)
    skull = np.stack([0.5 + 0.33 * np.cos(t), 0.42 - 0.3 * np.sin(t)], 1)
    face = np.array(
        [[0.78, 0.55], [0.8, 0.63], [0.76, 0.7], [0.7, 0.78], [0.6, 0.86], [0.48, 0.88], [0.4, 0.8], [0.36, 0.68], [0.55, 0.6]]
    )
    pts = np.concatenate([skull, face])
    bones = _chain(10) + [(10 + a, 10 + b) for a, b in _chain(8)] + [(0, 10), (17, 18), (18, 12), (9, 17)]
    return _Template(pts, tuple(bones), image_size=(192, 240), spacing=(0.8, 0.8))


def _hand() -> _Template:
    wrist = np.stack([np.linspace(0.3, 0.7, 5), np.full(5, 0.9)], 1)
    fingers = []
    bones = _chain(5)
    start = 5
    for f, (angle, length, n) in enumerate([(-0.95, 0.34, 4), (-0.35, 0.62, 7), (-0.1, 0.68, 7), (0.12, 0.64, 7), (0.35, 0.52, 7)]):
        base = np.array([0.3 + 0.1 * f, 0.72]) if f else np.array([0.28, 0.8])
        d = np.array([np.sin(angle), -np.cos(angle)])
        chain = base[None] + np.linspace(0, length, n)[:, None] * d[None] * np.array([0.8, 0.9])
        fingers.append(chain)
        bones += [(start + a, start + b) for a, b in _chain(n)] + [(min(f, 4), start)]
        start += n
    pts = np.concatenate([wrist] + fingers)
    return _Template(pts, tuple(bones), image_size=(176, 256), spacing=(0.6, 0.6))


def _chest() -> _Template:
    pts = np.array([[0.3, 0.18], [0.14, 0.78], [0.44, 0.72], [0.7, 0.18], [0.86, 0.78], [0.56, 0.72]])
    return _Template(pts, (), fields=((0, 1, 2), (3, 4, 5)), image_size=(224, 224))


def _pelvis() -> _Template:
    t = np.linspace(0, 2 * np.pi, 9)[:-1]
    ring = np.stack([0.5 + 0.3 * np.cos(t), 0.5 + 0.22 * np.sin(t)], 1)
    heads = np.array([[0.18, 0.75], [0.82, 0.75]])
    pts = np.concatenate([ring, heads])
    bones = tuple(_chain(8) + [(7, 0), (8, 3), (9, 1)])
    return _Template(pts, bones, image_size=(224, 224))


_TEMPLATES = {"head": _head, "hand": _hand, "chest": _chest, "pelvis": _pelvis}
# network input sizes for the demo (W, H): small so that the demo trains in minutes on a laptop CPU
DEMO_ANATOMIES = {"head": (64, 80), "hand": (48, 64), "chest": (64, 64), "pelvis": (64, 64)}
# the paper's SDR radii where they differ from the defaults (2/2.5/3/4 mm, 3/6/9 px)
DEMO_RADII = {"hand": [2.0, 4.0, 10.0]}


def _segment_distance(xx: np.ndarray, yy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0, 1)
    return np.hypot(xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1]))


def _render(tpl: _Template, pts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w, h = tpl.image_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx, cy = pts.mean(0)
    body = np.exp(-(((xx - cx) / (0.45 * w)) ** 2 + ((yy - cy) / (0.5 * h)) ** 2))
    img = 40 + 70 * body
    width = 0.018 * max(w, h)
    for a, b in tpl.bones:
        d = _segment_distance(xx, yy, pts[a], pts[b])
        img += 90 * np.exp(-((d / width) ** 2))
    for k in range(len(pts)):  # joints are a little denser than the shafts
        img += 40 * np.exp(-(((xx - pts[k, 0]) ** 2 + (yy - pts[k, 1]) ** 2) / (1.2 * width) ** 2))
    for poly in tpl.fields:
        from matplotlib.path import Path

        inside = Path(pts[list(poly)]).contains_points(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w)
        img -= 60 * inside
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _sample(tpl: _Template, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w, h = tpl.image_size
    p = tpl.points + rng.normal(0, 0.012, tpl.points.shape)  # shape variation
    p = (p - 0.5) * np.array([w, h])
    angle = np.deg2rad(rng.uniform(-10, 10))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    p = p @ rot.T * rng.uniform(0.85, 1.1)
    p += np.array([w, h]) / 2 + rng.uniform(-0.08, 0.08, 2) * np.array([w, h])
    p = np.clip(p, 2, np.array([w, h]) - 3)
    return _render(tpl, p, rng), p


def generate_demo(out_dir: str, n_train: int = 30, n_val: int = 6, n_test: int = 10, seed: int = 2026) -> str:
    """Write the demo images and ``datalist.json`` into ``out_dir`` (atomically) and return the datalist path."""
    rng = np.random.default_rng(seed)
    datalist: dict = {
        "name": "GU2Net synthetic four-anatomy demo",
        "description": "Synthetic geometric stand-ins for head, hand, chest and pelvis X-rays; NOT real anatomy. "
        "Generated by scripts/datasets/demo.py (deterministic, seed %d)." % seed,
        "anatomies": {},
        "training": [],
        "validation": [],
        "test": [],
    }
    with atomic_folder(out_dir) as tmp:
        for name, make in _TEMPLATES.items():
            tpl = make()
            spec: dict = {"landmarks": [f"{name}_{k + 1}" for k in range(len(tpl.points))], "size": list(DEMO_ANATOMIES[name])}
            if tpl.spacing:
                spec["spacing"] = list(tpl.spacing)
            if name in DEMO_RADII:
                spec["sdr_radii"] = DEMO_RADII[name]
            datalist["anatomies"][name] = spec
            os.makedirs(os.path.join(tmp, "images", name))
            counts = {"training": n_train, "validation": n_val, "test": n_test}
            k = 0
            for split, n in counts.items():
                for _ in range(n):
                    img, pts = _sample(tpl, rng)
                    rel = f"images/{name}/{name}_{k:03d}.png"
                    Image.fromarray(img).save(os.path.join(tmp, rel))
                    datalist[split].append({"image": rel, "anatomy": name, "landmarks": np.round(pts, 2).tolist()})
                    k += 1
        write_json_atomic(datalist, os.path.join(tmp, "datalist.json"), indent=1)
    return os.path.join(out_dir, "datalist.json")


def ensure_demo(out_dir: str, **kwargs) -> str:
    """Return the demo datalist in ``out_dir``, generating the demo first if it is not there."""
    path = os.path.join(out_dir, "datalist.json")
    if not os.path.isfile(path):
        print(f"Generating the synthetic demo data set in {out_dir} ...", flush=True)
        generate_demo(out_dir, **kwargs)
    return path
