"""Anatomy recognition: which anatomy an image shows, or that it shows none of them ("unknown anatomy").

Inference without ``--input_anatomy`` asks this module which anatomy each image shows; evaluation reports the
recogniser's confusion matrix. The recogniser is trained with the landmark model (at the start of its first
epoch, seconds) and saved in every checkpoint under ``recognizer``; checkpoints without one still load everywhere
(inference with an explicit anatomy never needs it).

Design, and why:

- **A tiny separate network, not GU2Net's encoder.** GU2Net's encoder features depend on the domain (per-anatomy
  depth-wise convolutions), so a classifier on them would need the anatomy it is asked to find. A separate
  network also trains in seconds and leaves the landmark model untouched.
- **Input**: the image read like every other one (the bundle's load transforms: ITK, one grey channel), resized
  to 64 x 64 with anti-aliasing (aspect ratio ignored), histogram-equalised and z-scored (so exposure, window and
  gamma, which vary between X-ray machines, do not matter), plus the original aspect ratio ``log(W / H)`` as an
  extra scalar: radiographs of one anatomy come in few shapes, and the shape tells anatomies apart cheaply.
- **A distance-based classifier.** A strided conv and three conv blocks -> a 16-d embedding; each anatomy has a
  learnt centre and the logits are minus half the squared distances to the centres (a prototype classifier),
  plus a pull of each image towards its centre. A softmax alone happily gives p = 1.0 to noise; distances in the
  embedding tell "like the training images" from "like nothing seen".
- **Outlier exposure.** Each batch also holds synthetic images that are no anatomy (blurred white noise, smooth
  random fields, gradients with random boxes and ellipses, training images with their tiles shuffled), pushed
  beyond 4 times the distance between the two nearest centres from every centre. Without it, noise and photographs
  landed as close to the centres as real images did (with 2 times, a photograph came within 1 % of the threshold
  on real data).
- **Unknown anatomy.** After training, each anatomy's mean embedding and a tied covariance (the training images
  and 4 augmented copies of each, shrunk 10 % towards a multiple of the identity) give the Mahalanobis distance
  of an image to each anatomy. An image is **unknown** when
  (a) it is constant (no contrast: nothing to recognise), or
  (b) its Mahalanobis distance to the best anatomy exceeds ``distance_threshold``: ``margin`` (2) times the
      99th percentile of the validation images' distances to their own anatomy (never below that of the training
      images), or
  (c) the probability of the best anatomy is below ``probability_threshold``: half-way between chance (1/N) and
      the 1st percentile of the probabilities of the correctly recognised validation images (an image between
      two anatomies).
  Both thresholds come from the validation split (the training split when it is empty, said in
  ``calibration``) and are saved in the checkpoint.
- **Training**: class-balanced batches (real sets are unbalanced: 300 heads, 7 hands); random flips, rotations,
  scalings, shifts, intensity windows and noise; Adam with a one-cycle schedule for a fixed number of
  steps; its own random generator, under ``torch.random.fork_rng``, so the landmark model's training draws the
  same random numbers as without it.

Everything in the checkpoint is tensors, strings, lists and numbers (``weights_only``-safe).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.pool import ThreadPool
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from .anatomies import AnatomySet
from .checkpoints import read_checkpoint
from .durable import save_torch_atomic
from .files import write_json_atomic, write_text_atomic

__all__ = [
    "AnatomyRecognizer",
    "FitAnatomyRecognizer",
    "Recognition",
    "RecognitionReportHandler",
    "anatomy_recognition",
    "default_image_loader",
    "evaluate_recognition",
    "fit_recognizer",
    "format_recognition_table",
    "load_recognizer",
    "recognition_fields",
    "train_recognizer",
]

logger = logging.getLogger(__name__)

# item keys inference copies into the landmark JSON (see recognition_fields)
RECOGNITION_KEYS = ("anatomy_recognized", "anatomy_probability", "anatomy_distance")


def default_image_loader() -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """The bundle's ``load_transforms`` (configs/inference.yaml): ITK -> channel first -> one grey channel."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from .landmark_transforms import ToGray2Dd

    return Compose(
        [LoadImaged("image", reader="ITKReader", image_only=True), EnsureChannelFirstd("image"), ToGray2Dd("image")]
    )


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class AnatomyRecognizer(nn.Module):
    """The recogniser: a small CNN embedding, a centre per anatomy, and the calibrated "unknown" thresholds.

    Args:
        anatomies: the anatomies (an :class:`AnatomySet` or their names), in domain order.
        size: the square side images are resized to.
        width: channels of the first conv (doubled twice).
        embedding_dim: size of the embedding the distances are measured in.

    ``state_dict`` holds the weights, the centres, the mean embeddings and precision matrix of the Mahalanobis
    distance, both thresholds, ``fitted`` and (extra state) the anatomy names, sizes and the calibration's figures;
    loading one of other anatomies is an error.
    """

    #: a checkpoint written before recognition existed has no ``recognizer``: loaders skip it (checkpoints.py)
    optional_in_checkpoint = True

    def __init__(self, anatomies: AnatomySet | Sequence[str], size: int = 64, width: int = 8, embedding_dim: int = 16) -> None:
        super().__init__()
        self.names = list(anatomies.names if isinstance(anatomies, AnatomySet) else anatomies)
        if not self.names:
            raise ValueError("AnatomyRecognizer: at least one anatomy is needed.")
        if size % 16:
            raise ValueError(f"AnatomyRecognizer: size must be divisible by 16, got {size}.")
        self.size, self.width, self.embedding_dim = int(size), int(width), int(embedding_dim)
        w = self.width
        stem = nn.Sequential(nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.features = nn.Sequential(stem, _conv_block(w, 2 * w), _conv_block(2 * w, 4 * w), _conv_block(4 * w, 4 * w))
        self.embed = nn.Linear(4 * w * (self.size // 16) ** 2 + 1, self.embedding_dim)
        n = len(self.names)
        self.centers = nn.Parameter(torch.randn(n, self.embedding_dim))
        self.register_buffer("means", torch.zeros(n, self.embedding_dim))
        self.register_buffer("precision", torch.eye(self.embedding_dim))
        self.register_buffer("distance_threshold", torch.tensor(float("inf")))
        self.register_buffer("probability_threshold", torch.tensor(0.0))
        self.register_buffer("fitted", torch.tensor(False))
        self.calibration: dict[str, Any] = {}

    # -- checkpoint state -------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"names": list(self.names), "size": self.size, "width": self.width, "embedding_dim": self.embedding_dim,
                "calibration": dict(self.calibration)}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        names = list(state.get("names", []))
        if names != self.names:
            raise ValueError(f"the checkpoint's anatomy recogniser knows {names}, this configuration's anatomies are {self.names}.")
        self.calibration = dict(state.get("calibration", {}))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AnatomyRecognizer:
        """A recogniser rebuilt from its ``state_dict`` alone (names and sizes are in the extra state)."""
        extra = state.get("_extra_state", {})
        if not extra.get("names"):
            raise ValueError("not an anatomy recogniser's state (no anatomy names).")
        rec = cls(extra["names"], size=extra.get("size", 64), width=extra.get("width", 8), embedding_dim=extra.get("embedding_dim", 16))
        rec.load_state_dict(state)
        return rec.eval()

    # -- inputs -----------------------------------------------------------------------------------------------
    def prepare(self, image: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, float, bool]:
        """A ``(1, W, H)`` grey image -> its ``(1, size, size)`` thumbnail in [0, 1], ``log(W / H)``, and whether it is
        constant. (The network normalises it, after augmentation in training.)"""
        a = torch.as_tensor(np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image), dtype=torch.float32)
        a = a.reshape(a.shape[-2:])  # (W, H), ITK's axis order; the network only has to see them consistently
        aspect = math.log(a.shape[0] / a.shape[1])
        lo, hi = float(a.min()), float(a.max())
        constant = not math.isfinite(hi - lo) or hi - lo <= 1e-6 * max(1.0, abs(hi), abs(lo))
        a = (a - lo) / (hi - lo) if not constant else torch.zeros_like(a)
        thumb = F.interpolate(a[None, None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return thumb[0].clamp(0, 1), aspect, constant

    @staticmethod
    def _normalize(x: torch.Tensor) -> torch.Tensor:
        """Histogram-equalise each image (a pixel becomes the fraction of pixels at most as bright; equal pixels stay
        equal), then z-score: any monotonic change of intensity (exposure, window, gamma) leaves the input unchanged."""
        flat = x.flatten(1).contiguous()
        cdf = torch.searchsorted(flat.sort(1).values.contiguous(), flat, right=True).to(x) / flat.shape[1]
        x = cdf.reshape(x.shape)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / std.clamp_min(1e-6)

    # -- the network --------------------------------------------------------------------------------------------
    def forward(self, thumbs: torch.Tensor, aspects: torch.Tensor) -> torch.Tensor:
        """``(B, 1, size, size)`` thumbnails in [0, 1] and ``(B,)`` log aspect ratios -> ``(B, embedding_dim)``."""
        f = self.features(self._normalize(thumbs)).flatten(1)
        return self.embed(torch.cat([f, 4.0 * aspects.reshape(-1, 1).to(f)], 1))

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` Euclidean distances of embeddings to each anatomy's centre."""
        return torch.cdist(embeddings, self.centers)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.distances(embeddings) ** 2

    def mahalanobis(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` Mahalanobis distances to each anatomy's mean training embedding (tied covariance)."""
        diff = embeddings[:, None, :] - self.means[None]
        return torch.einsum("bni,ij,bnj->bn", diff, self.precision, diff).clamp_min(0).sqrt()

    @torch.no_grad()
    def scores(self, thumbs: torch.Tensor, aspects: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the anatomies' probabilities ``(B, N)`` and Mahalanobis distances ``(B, N)``."""
        was = self.training
        self.eval()
        probs, dists = [], []
        for s in range(0, len(thumbs), batch):
            e = self(thumbs[s : s + batch], aspects[s : s + batch])
            probs.append(torch.softmax(self.logits(e), 1))
            dists.append(self.mahalanobis(e))
        self.train(was)
        n = len(self.names)
        return (torch.cat(probs) if probs else torch.zeros(0, n)), (torch.cat(dists) if dists else torch.zeros(0, n))

    # -- the decision ---------------------------------------------------------------------------------------------
    def decide(self, probs: torch.Tensor, dists: torch.Tensor, constant: bool, source: str = "") -> Recognition:
        """One image's answer from its probabilities and distances (see the module's docstring for the rules)."""
        best = int(torch.argmax(probs))
        p, d = float(probs[best]), float(dists[best])
        t_d, t_p = float(self.distance_threshold), float(self.probability_threshold)
        rec = Recognition(image=source, anatomy=None, best=self.names[best], probability=p, distance=d,
                          distance_threshold=t_d, probability_threshold=t_p)
        if constant:
            rec.reason = "the image is constant: no contrast"
        elif not d <= t_d:
            rec.reason = f"best: {rec.best}, p={p:.2f}, distance {d:.1f} > threshold {t_d:.1f}"
        elif p < t_p:
            rec.reason = f"best: {rec.best}, p={p:.2f} < threshold {t_p:.2f}, distance {d:.1f}"
        else:
            rec.anatomy = rec.best
        return rec

    def recognize(self, image: torch.Tensor | np.ndarray, source: str = "") -> Recognition:
        """Which anatomy a ``(1, W, H)`` grey image (the bundle's load transforms' output) shows, or unknown."""
        if not self.is_fitted:
            raise RuntimeError("the anatomy recogniser has not been trained.")
        thumb, aspect, constant = self.prepare(image)
        probs, dists = self.scores(thumb[None], torch.tensor([aspect]))
        return self.decide(probs[0], dists[0], constant, source)

    def recognize_file(self, path: str, image_loader: Callable | None = None) -> Recognition:
        """:meth:`recognize` of an image file, read by ``image_loader`` (default: the bundle's load transforms)."""
        image = (image_loader or default_image_loader())({"image": path})["image"]
        return self.recognize(image, source=path)


@dataclass
class Recognition:
    """One image's answer: ``anatomy`` is the recognised anatomy, or None (unknown; ``reason`` says why)."""

    image: str
    anatomy: str | None
    best: str
    probability: float
    distance: float
    distance_threshold: float
    probability_threshold: float
    reason: str = ""

    @property
    def known(self) -> bool:
        return self.anatomy is not None

    def message(self, names: Sequence[str]) -> str:
        """The user's message for an unknown image: the file, the anatomies it resembles none of, and why."""
        return f"{self.image}: unknown anatomy: the image looks like none of {', '.join(names)} ({self.reason})"

    def fields(self) -> dict[str, Any]:
        """What a recognised image's item and result carry (:data:`RECOGNITION_KEYS`)."""
        return dict(zip(RECOGNITION_KEYS, (True, float(self.probability), float(self.distance))))


# ---------------------------------------------------------------------------------------------------------------
# training and calibration


def _thumbnails(
    recognizer: AnatomyRecognizer, items: Sequence[Mapping[str, Any]], image_loader: Callable, workers: int = 1
) -> tuple:
    """Read every item's image once: thumbnails ``(B, 1, s, s)``, log aspects ``(B,)``, anatomy indices ``(B,)``.

    ``workers`` threads read at once (ITK's decoding and the copies release the GIL); the order of the items is
    kept.
    """
    for item in items:
        if str(item["anatomy"]) not in recognizer.names:
            raise ValueError(f"anatomy recogniser: image {item['image']} is a {item['anatomy']!r}, not one of {recognizer.names}.")

    def read(item: Mapping[str, Any]) -> tuple[torch.Tensor, float]:
        t, a, _ = recognizer.prepare(image_loader({"image": item["image"]})["image"])
        return t, a

    with ThreadPool(max(1, int(workers))) as pool:
        prepared = pool.map(read, items)
    thumbs = [t for t, _ in prepared]
    aspects = [a for _, a in prepared]
    labels = [recognizer.names.index(str(item["anatomy"])) for item in items]
    s = recognizer.size
    return (
        torch.stack(thumbs) if thumbs else torch.zeros(0, 1, s, s),
        torch.tensor(aspects, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.long),
    )


def _augment(x: torch.Tensor, aspects: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flip, rotation (+-10 deg), scale (0.9-1.1), shift (+-6 %); an intensity window (the darkest 0-15 % and
    brightest 0-15 % clipped), noise (sd 0-0.04); the log aspect +-5 %. (Other monotonic intensity changes, gamma
    or contrast, need none: the network equalises its input's histogram.)"""
    b = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g)

    angle, scale = torch.deg2rad(u(-10, 10)), u(0.9, 1.1)
    flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    rows = [torch.stack([cos * flip, -sin, u(-0.12, 0.12)], 1), torch.stack([sin * flip, cos, u(-0.12, 0.12)], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lo, hi = u(0.0, 0.15).reshape(b, 1, 1, 1), u(0.85, 1.0).reshape(b, 1, 1, 1)
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    x = x + u(0.0, 0.04).reshape(b, 1, 1, 1) * torch.randn(x.shape, generator=g)
    return x, aspects + torch.log(u(0.95, 1.05))


def _negatives(n: int, size: int, pool: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic images that are no anatomy, in [0, 1], with random log aspects (outlier exposure).

    Four kinds, in turn: white noise blurred by a random amount; a smooth random field (low-resolution noise
    enlarged); a linear gradient with a few random rectangles and ellipses; and a training image cut into a
    2x2 to 8x8 grid of tiles shuffled (its intensities, not its layout).
    """
    out = torch.empty(n, 1, size, size)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def r(lo: float = 0.0, hi: float = 1.0) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=g))

    for i in range(n):
        kind = i % 4
        if kind == 0:
            x = torch.rand(1, 1, size, size, generator=g)
            k = int(r(0, 4)) * 2 + 1
            img = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)[0, 0] if k > 1 else x[0, 0]
        elif kind == 1:
            cells = int(r(2, 17))
            low = torch.rand(1, 1, cells, cells, generator=g)
            img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
        elif kind == 2:
            angle = r(0, 2 * math.pi)
            img = r(0.2, 1) * (math.cos(angle) * xx + math.sin(angle) * yy) / 2 + r(0.2, 0.8)
            for _ in range(int(r(1, 6))):
                cx, cy, rx, ry = r(-1, 1), r(-1, 1), r(0.1, 0.6), r(0.1, 0.6)
                if r() < 0.5:
                    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
                else:
                    inside = ((xx - cx).abs() < rx) & ((yy - cy).abs() < ry)
                img = torch.where(inside, torch.full_like(img, r()), img)
        else:
            tiles = int(r(2, 9))
            while size % tiles:
                tiles -= 1
            t = size // tiles
            src = pool[int(r(0, len(pool) - 1e-6))][0]
            blocks = src.reshape(tiles, t, tiles, t).permute(0, 2, 1, 3).reshape(tiles * tiles, t, t)
            blocks = blocks[torch.randperm(tiles * tiles, generator=g)]
            img = blocks.reshape(tiles, tiles, t, t).permute(0, 2, 1, 3).reshape(size, size)
        lo, hi = img.min(), img.max()
        out[i, 0] = (img - lo) / (hi - lo).clamp_min(1e-6)
    return out, torch.empty(n).uniform_(-0.7, 0.7, generator=g)


def fit_recognizer(
    recognizer: AnatomyRecognizer,
    train_items: Sequence[Mapping[str, Any]],
    val_items: Sequence[Mapping[str, Any]] = (),
    image_loader: Callable | None = None,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    margin: float = 2.0,
    negatives: int = 256,
    seed: int = 0,
    read_workers: int = 1,
) -> dict[str, Any]:
    """Train ``recognizer`` on ``train_items`` (``image`` path, ``anatomy`` name) and calibrate its thresholds.

    Args:
        recognizer: the recogniser to (re)train from scratch; its anatomies are the labels.
        train_items, val_items: datalist items; the validation items choose the "unknown" thresholds.
        image_loader: reads ``{"image": path}`` into a ``(1, W, H)`` grey image (the bundle's load transforms).
        steps: optimiser steps; each takes ``batch_size`` images, the same number of every anatomy, plus half as
            many synthetic outliers drawn from a pool of ``negatives``.
        lr: the one-cycle schedule's peak learning rate.
        margin: ``distance_threshold`` = margin x the 99th percentile of the validation distances (2: on the real
            head/hand/chest images, test images lay up to 1.45 times it away, noise and photographs 2.6 times or more).
        seed: the seed of the weights, batches, augmentation and outliers.
        read_workers: threads reading the images.

    Returns the calibration figures (also kept in ``recognizer.calibration`` and the checkpoint). Raises
    ``ValueError`` when an anatomy of the recogniser has no training image (it could not be recognised).
    """
    image_loader = image_loader or default_image_loader()
    names = recognizer.names
    counts = {n: sum(str(it["anatomy"]) == n for it in train_items) for n in names}
    if missing := [n for n, c in counts.items() if c == 0]:
        raise ValueError(f"anatomy recogniser: no training image of {missing}; every anatomy needs some.")
    start = time.perf_counter()
    train = _thumbnails(recognizer, train_items, image_loader, read_workers)
    val = _thumbnails(recognizer, val_items, image_loader, read_workers)
    read_s = time.perf_counter() - start
    calibration = fit_thumbnails(recognizer, train, val, steps, batch_size, lr, margin, negatives, seed)
    calibration["read_s"] = round(read_s, 1)
    return calibration


def fit_thumbnails(
    recognizer: AnatomyRecognizer,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    margin: float = 2.0,
    negatives: int = 256,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`fit_recognizer` on images already read: ``(thumbnails, log aspects, anatomy indices)`` per split."""
    names = recognizer.names
    (x_tr, a_tr, y_tr), (x_va, a_va, y_va) = train, val
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        for m in recognizer.modules():  # a fresh start, drawn from the seed
            if m is not recognizer and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        with torch.no_grad():
            recognizer.centers.copy_(torch.randn(recognizer.centers.shape, generator=g))
        opt = torch.optim.Adam(recognizer.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
        by_class = [torch.nonzero(y_tr == c).flatten() for c in range(len(names))]
        per_class = max(1, batch_size // len(names))
        x_neg, a_neg = _negatives(negatives, recognizer.size, x_tr, g)
        recognizer.train()
        for _ in range(steps):  # class-balanced batches: every anatomy counts the same, however many images it has
            idx = torch.cat([ix[torch.randint(len(ix), (per_class,), generator=g)] for ix in by_class])
            pick = torch.randint(len(x_neg), (max(4, len(idx) // 2),), generator=g)
            xn, an = x_neg[pick], a_neg[pick]
            xb, ab = _augment(torch.cat([x_tr[idx], xn]), torch.cat([a_tr[idx], an]), g)
            d = recognizer.distances(recognizer(xb, ab))
            pos, neg = d[: len(idx)], d[len(idx) :]
            own = pos.gather(1, y_tr[idx, None])
            # classify, and pull each image to its anatomy's centre (distances then mean "like the training images")
            loss = F.cross_entropy(-0.5 * pos**2, y_tr[idx]) + (own**2).mean()
            if len(names) > 1:  # outliers: beyond 4x the distance between the two nearest centres, from every centre
                radius = 4.0 * torch.pdist(recognizer.centers).min().detach()
            else:
                radius = 2.0 * pos.detach().max()
            loss = loss + F.relu(radius - neg.min(1).values).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        recognizer.eval()
        calibration = _calibrate(recognizer, (x_tr, a_tr, y_tr), (x_va, a_va, y_va), margin, g)
    calibration.update({"steps": int(steps), "seed": int(seed), "fit_s": round(time.perf_counter() - start, 1)})
    recognizer.calibration = calibration
    return calibration


@torch.no_grad()
def _calibrate(
    recognizer: AnatomyRecognizer, train: tuple, val: tuple, margin: float, g: torch.Generator, copies: int = 4
) -> dict[str, Any]:
    """Mean embedding per anatomy and the tied covariance (shrunk 10 % towards its mean variance) from the training
    images and ``copies`` augmented copies of each; then both thresholds from the validation images."""
    x_tr, a_tr, y_tr = train
    recognizer.eval()
    emb, lab = [], []
    for k in range(copies + 1):
        xa, aa = _augment(x_tr, a_tr, g) if k else (x_tr, a_tr)
        emb += [recognizer(xa[s : s + 64], aa[s : s + 64]) for s in range(0, len(xa), 64)]
        lab.append(y_tr)
    emb, lab = torch.cat(emb), torch.cat(lab)
    means = torch.stack([emb[lab == c].mean(0) for c in range(len(recognizer.names))])
    resid = emb - means[lab]
    cov = resid.T @ resid / len(resid)
    cov = 0.9 * cov + 0.1 * torch.eye(len(cov)) * cov.diagonal().mean().clamp_min(1e-8)
    recognizer.means.copy_(means)
    recognizer.precision.copy_(torch.linalg.inv(cov))
    p_tr, d_tr = recognizer.scores(x_tr, a_tr)
    x, a, y = val if len(val[0]) else train
    source = "validation" if len(val[0]) else "training (no validation images)"
    probs, dists = recognizer.scores(x, a)
    pred = probs.argmax(1)
    own = dists[torch.arange(len(y)), y].numpy()
    own_tr = d_tr[torch.arange(len(y_tr)), y_tr].numpy()
    correct = (pred == y).numpy()
    t_d = margin * max(float(np.percentile(own, 99)), float(np.percentile(own_tr, 99)))
    p_ok = probs.max(1).values.numpy()[correct]
    chance = 1.0 / len(recognizer.names)
    p1 = float(np.percentile(p_ok, 1)) if len(p_ok) else 1.0
    t_p = chance + 0.5 * (p1 - chance) if len(recognizer.names) > 1 else 0.0
    recognizer.distance_threshold.fill_(t_d)
    recognizer.probability_threshold.fill_(t_p)
    recognizer.fitted.fill_(True)
    return {
        "split": source,
        "images": int(len(y)),
        "training_images": int(len(y_tr)),
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "training_accuracy": float((p_tr.argmax(1) == y_tr).float().mean()),
        "distance_p99": float(np.percentile(own, 99)),
        "training_distance_p99": float(np.percentile(own_tr, 99)),
        "probability_p1": p1,
        "margin": float(margin),
        "distance_threshold": t_d,
        "probability_threshold": t_p,
    }


class FitAnatomyRecognizer:
    """Ignite handler training the anatomy recogniser with the landmark model.

    At the first ``EPOCH_STARTED`` of a run whose recogniser is not fitted yet (a resumed run loaded a fitted one
    from its checkpoint, so it skips), fit it on ``train_items`` and calibrate it on ``val_items``. The recogniser
    is in the trainer's and the best model's checkpoint dictionaries, so every checkpoint holds it. When an
    anatomy has no training image (e.g. ``add_anatomy`` with a datalist of the new anatomy only), it warns and
    leaves the recogniser unfitted: inference then needs ``--input_anatomy``.
    """

    def __init__(
        self,
        recognizer: AnatomyRecognizer,
        train_items: Sequence[Mapping[str, Any]],
        val_items: Sequence[Mapping[str, Any]] = (),
        image_loader: Callable | None = None,
        steps: int = 300,
        seed: int = 0,
        enabled: bool = True,
        read_workers: int = 1,
    ) -> None:
        self.recognizer, self.train_items, self.val_items = recognizer, train_items, val_items
        self.image_loader, self.steps, self.seed, self.enabled = image_loader, steps, seed, enabled
        self.read_workers = read_workers

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled or self.recognizer.is_fitted:
            return
        log = engine.logger if engine is not None else logger
        try:
            cal = fit_recognizer(
                self.recognizer, self.train_items, self.val_items, self.image_loader, self.steps, seed=self.seed,
                read_workers=self.read_workers,
            )
        except ValueError as e:
            log.warning(f"{e} The checkpoints hold no trained recogniser: inference will need --input_anatomy.")
            self.enabled = False
            return
        log.info(_calibration_line(cal))


def _calibration_line(cal: Mapping[str, Any]) -> str:
    return (
        f"anatomy recogniser: {cal['accuracy']:.1%} of {cal['images']} {cal['split']} images right; unknown beyond "
        f"distance {cal['distance_threshold']:.2f} or below p={cal['probability_threshold']:.2f} "
        f"({cal['training_images']} training images read in {cal['read_s']} s, fitted in {cal['fit_s']} s)"
    )


def train_recognizer(
    ckpt_path: str,
    train_items: Sequence[Mapping[str, Any]],
    val_items: Sequence[Mapping[str, Any]] = (),
    image_loader: Callable | None = None,
    steps: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a recogniser of a checkpoint's anatomies and add it to the checkpoint (replaced atomically: a temporary
    file, fsync, rename). For checkpoints trained before recognition existed (or by ``add_anatomy`` from a
    datalist of the new anatomy only)."""
    ckpt = read_checkpoint(ckpt_path)
    recognizer = AnatomyRecognizer(AnatomySet.from_checkpoint(ckpt_path))
    cal = fit_recognizer(recognizer, train_items, val_items, image_loader, steps, seed=seed)
    ckpt["recognizer"] = recognizer.state_dict()
    save_torch_atomic(ckpt, ckpt_path)
    print(_calibration_line(cal), f"-> added to {ckpt_path}", flush=True)
    return cal


def load_recognizer(
    ckpt_path: str, required: bool = True, checkpoint: Mapping[str, Any] | None = None
) -> AnatomyRecognizer | None:
    """The fitted recogniser saved in a checkpoint; without one, an error saying what to do (or None if not
    ``required``). ``checkpoint``: the file's contents where the caller has read them already."""
    state = (checkpoint if checkpoint is not None else read_checkpoint(ckpt_path)).get("recognizer")
    recognizer = AnatomyRecognizer.from_state(state) if state is not None else None
    if recognizer is None or not recognizer.is_fitted:
        if not required:
            return None
        raise ValueError(
            f"checkpoint {ckpt_path}: holds no trained anatomy recogniser, so the anatomy of each image must be given "
            "(--input_anatomy NAME); or add one: python -m monai.bundle run train_recognizer --config_file "
            "configs/train.yaml --ckpt_path ... --dataset_dir ..."
        )
    return recognizer


# ---------------------------------------------------------------------------------------------------------------
# inference


def anatomy_recognition(ckpt_path: str, image_loader: Callable | None = None) -> Callable[[str], Recognition]:
    """The checkpoint's recogniser as a function of an image file's path, for inference without an anatomy
    (:func:`scripts.inputs.inference_inputs`): it prints each known image's anatomy and returns the answer.
    A checkpoint without a recogniser is an error saying what to do (:func:`load_recognizer`)."""
    recognizer = load_recognizer(ckpt_path)
    image_loader = image_loader or default_image_loader()

    def recognize(path: str) -> Recognition:
        rec = recognizer.recognize_file(path, image_loader)
        if rec.known:
            print(f"{path}: recognised as {rec.anatomy} (p={rec.probability:.2f}, distance {rec.distance:.1f})", flush=True)
        return rec

    return recognize


def recognition_fields(data: Mapping[Hashable, Any]) -> dict[str, Any]:
    """The recognition fields of an inference item (after collation and decollation), JSON-ready, for the landmark
    JSON: ``anatomy_recognized``, ``anatomy_probability``, ``anatomy_distance``; empty when the user named the
    anatomy."""
    out: dict[str, Any] = {}
    for key in RECOGNITION_KEYS:
        if key in data:
            v = data[key]
            v = v.item() if isinstance(v, (torch.Tensor, np.ndarray)) else v
            out[key] = bool(v) if key == "anatomy_recognized" else float(v)
    return out


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def evaluate_recognition(
    recognizer: AnatomyRecognizer | str,
    items: Sequence[Mapping[str, Any]],
    image_loader: Callable | None = None,
) -> dict[str, Any]:
    """The recogniser's confusion matrix on datalist items (``image``, ``anatomy``).

    Returns ``labels`` (the anatomies), ``predicted_labels`` (the anatomies and ``unknown``), ``matrix`` (rows:
    true anatomy, columns: predicted, the last one unknown), ``images``, ``accuracy`` (unknown counts as wrong),
    ``unknown`` (count), ``thresholds`` and ``errors`` (each misrecognised image). A checkpoint path without a
    recogniser gives ``{"available": False, "note": ...}``.
    """
    if isinstance(recognizer, str):
        path = recognizer
        recognizer = load_recognizer(path, required=False)
        if recognizer is None:
            return {"available": False, "note": f"checkpoint {path} holds no trained anatomy recogniser."}
    image_loader = image_loader or default_image_loader()
    labels = list(recognizer.names)
    matrix = np.zeros((len(labels), len(labels) + 1), dtype=int)
    errors = []
    for item in items:
        truth = str(item["anatomy"])
        rec = recognizer.recognize_file(item["image"], image_loader)
        col = labels.index(rec.anatomy) if rec.known else len(labels)
        matrix[labels.index(truth), col] += 1
        if rec.anatomy != truth:
            errors.append({"image": str(item["image"]), "true": truth, **{k: v for k, v in asdict(rec).items() if k != "image"}})
    n = int(matrix.sum())
    return {
        "available": True,
        "labels": labels,
        "predicted_labels": labels + ["unknown"],
        "matrix": matrix.tolist(),
        "images": n,
        "accuracy": float(np.trace(matrix[:, : len(labels)]) / n) if n else float("nan"),
        "unknown": int(matrix[:, -1].sum()),
        "thresholds": {"distance": float(recognizer.distance_threshold), "probability": float(recognizer.probability_threshold)},
        "calibration": dict(recognizer.calibration),
        "errors": errors,
    }


def format_recognition_table(section: Mapping[str, Any]) -> str:
    """The confusion matrix as a Markdown table (rows: true anatomy; columns: recognised as), with the accuracy."""
    if not section.get("available", False):
        return f"Anatomy recognition: not evaluated ({section.get('note', 'no recogniser')})."
    cols = section["predicted_labels"]
    lines = [
        f"Anatomy recognition: {section['accuracy']:.1%} of {section['images']} images right, {section['unknown']} "
        f"called unknown (distance > {section['thresholds']['distance']:.2f} or p < {section['thresholds']['probability']:.2f}).",
        "",
        "| true \\ recognised | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(section["labels"], section["matrix"])]
    return "\n".join(lines)


class RecognitionReportHandler:
    """Evaluation handler: when the evaluator's epoch completes (after the landmark report wrote its files), add the
    recogniser's confusion matrix on the evaluated items to ``metrics.json`` (as ``_recognition``) and to
    ``report.md``, and print it.

    Args:
        ckpt_path: the evaluated checkpoint (a recogniser in it, or a note that there is none).
        items: the evaluated datalist items.
        output_dir: where the report's ``metrics.json`` and ``report.md`` are.
        image_loader: the bundle's load transforms.
    """

    def __init__(
        self, ckpt_path: str, items: Sequence[Mapping[str, Any]], output_dir: str, image_loader: Callable | None = None
    ) -> None:
        self.ckpt_path, self.items, self.output_dir, self.image_loader = ckpt_path, items, output_dir, image_loader
        self.section: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> dict[str, Any]:
        self.section = evaluate_recognition(self.ckpt_path, self.items, self.image_loader)
        path = os.path.join(self.output_dir, "metrics.json")
        metrics = json.load(open(path)) if os.path.isfile(path) else {}
        metrics["_recognition"] = self.section
        write_json_atomic(metrics, path)
        table = format_recognition_table(self.section)
        report = os.path.join(self.output_dir, "report.md")
        if os.path.isfile(report):
            text = open(report).read().rstrip("\n")
            write_text_atomic(text + "\n\n## Anatomy recognition\n\n" + table + "\n", report)
        print(table, flush=True)
        return self.section
