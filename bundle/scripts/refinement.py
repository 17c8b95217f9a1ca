"""A second stage that refines each landmark in a patch at a finer resolution around it.

GU2Net sees the whole image at its anatomy's network size (a cephalogram at 128 x 160 on the CPU budget: one
pixel is 1.5 mm), so its sub-pixel decoding is what limits its accuracy. The refiner looks again, at
``factor`` times that resolution, in a ``patch_size`` square around each decoded landmark, and moves it to the
peak it finds there. Its grid is the original image resized to ``factor`` x the anatomy's network size, so,
like the network, it needs no pixel spacing and sees an anatomy at the scale the network does.

- :class:`LandmarkRefiner`: the refining network, MONAI's ``BasicUNet`` with one output channel per landmark of
  every anatomy, and the settings it was trained with (buffers, so they travel in its ``state_dict``).
- :class:`RandLandmarkPatchesd`: training samples, patches around annotated landmarks moved by a random error
  (the coarse stage's) and zoom (other framings), with the landmark's target distribution in its channel.
- :class:`PatchHeatmapLoss`: the cross-entropy of the patch's spatial softmax against that target, plus the
  soft-argmax's distance to it.
- :class:`RefineLandmarksd`: postprocessing after decoding: each landmark of ``pred_landmarks`` (original image
  pixels) refined where the checkpoint has a refiner; mirrored images are refined mirrored back.
- :class:`AccumulateLandmarkShapes`: while the refiner trains, its anatomies' mean landmark layout in the
  refinement grid. At inference the decoded points' spread against it tells how much larger or smaller the anatomy
  appears than in training (another framing, another device's field of view), and the patches are sampled at that
  scale, so the refiner sees each landmark at the scale it learned.

MONAI has patch samplers for segmentation (``RandCropByPosNegLabeld``) but none that follows one point at a
time with sub-pixel centres, mirroring and a per-landmark target, hence these. Measured by ``bench/accuracy.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.networks.nets import BasicUNet
from monai.transforms import MapTransform, Randomizable

from .anatomies import AnatomySet
from .checkpoints import CheckpointError, read_checkpoint
from .errors import as_flag
from .heatmaps import grid_to_original
from .landmark_transforms import check_resize_mode, resize_image

logger = logging.getLogger(__name__)

__all__ = [
    "LandmarkRefiner",
    "RandLandmarkPatchesd",
    "PatchHeatmapLoss",
    "RefineLandmarksd",
    "AccumulateLandmarkShapes",
    "landmark_patches",
    "patch_positions",
    "read_refiner",
    "shape_scale",
]


def patch_positions(
    centres: torch.Tensor, size: int, step: float | torch.Tensor = 1.0, flip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the rows and columns of the patches around ``centres`` ``(N, 2)`` lie in the image: ``x`` of row ``i``
    and ``y`` of column ``j``, each ``(N, size)`` (see :func:`landmark_patches`)."""
    c = torch.as_tensor(centres, dtype=torch.float32).reshape(-1, 2)
    step = torch.as_tensor(step, dtype=torch.float32).reshape(-1, 1).expand(c.shape[0], 1)
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return c[:, :1] + (-offsets if flip else offsets)[None] * step, c[:, 1:] + offsets[None] * step


def landmark_patches(
    image: torch.Tensor, centres: torch.Tensor, size: int, step: float | torch.Tensor = 1.0, flip: bool = False
) -> torch.Tensor:
    """``size`` x ``size`` patches of ``image`` ``(1, W, H)`` centred at ``centres`` ``(N, 2)`` ``(x, y)`` voxels.

    Pixel ``(i, j)`` of patch ``n`` samples (bilinear, border values outside) the image at
    ``centre_n + (i - (size - 1) / 2, j - (size - 1) / 2) * step_n``; with ``flip`` the x offset is negated (a
    mirrored image's patch as the unmirrored one). Each patch is z-scored. Returns ``(N, 1, size, size)``.
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    (w, h), (px, py) = img.shape[-2:], patch_positions(centres, size, step, flip)
    n = px.shape[0]
    # grid_sample indexes (N, C, H_in, W_in) with (x -> last dim, y -> the one before): here last = H (our y)
    gy = (py / max(h - 1, 1) * 2 - 1)[:, None, :].expand(n, size, size)
    gx = (px / max(w - 1, 1) * 2 - 1)[:, :, None].expand(n, size, size)
    grid = torch.stack([gy, gx], dim=-1)
    patches = F.grid_sample(img.reshape(1, 1, w, h).expand(n, 1, w, h), grid, mode="bilinear", padding_mode="border", align_corners=True)
    mean = patches.mean(dim=(2, 3), keepdim=True)
    std = patches.std(dim=(2, 3), keepdim=True)
    return (patches - mean) / (std + 1e-6)


def shape_scale(points: torch.Tensor, reference: torch.Tensor, limits: tuple[float, float] = (0.5, 2.0)) -> float:
    """How many times larger the layout of ``points`` ``(C, 2)`` is than ``reference`` ``(C, 2)`` (same landmarks).

    The median over landmarks of each one's distance to the layout's median point, against the same in the
    reference: distances, so a mirrored or rotated layout has the scale of the upright one, and medians, so a
    minority of landmarks found in the wrong place does not move it. Landmarks that are NaN in either are left
    out; with fewer than 3 left, or a reference without spread, 1.0. Clipped to ``limits``.
    """
    p, m = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    ok = torch.isfinite(p).all(dim=1) & torch.isfinite(m).all(dim=1)
    if int(ok.sum()) < 3:
        return 1.0
    p, m = p[ok], m[ok]
    dp = (p - p.median(dim=0).values).norm(dim=1)
    dm = (m - m.median(dim=0).values).norm(dim=1)
    keep = dm > 1e-3 * dm.max().clamp_min(1e-12)
    if int(keep.sum()) < 3:
        return 1.0
    scale = float((dp[keep] / dm[keep]).median())
    return float(min(max(scale, limits[0]), limits[1])) if np.isfinite(scale) else 1.0


class LandmarkRefiner(nn.Module):
    """The refining network and its settings.

    Args:
        landmark_counts: landmarks per anatomy, in domain order (``AnatomySet.landmark_counts``).
        factor: the refinement grid is ``factor`` x each anatomy's network size.
        patch_size: the side of the square patch, in refinement-grid pixels.
        features: ``BasicUNet``'s six feature counts (small: it sees one patch per landmark).
        window: the square around the peak whose probability-weighted mean is the refined point.
    """

    #: patches per forward pass at inference (each returns every landmark's channel: 64 x 222 x 64 x 64 floats,
    #: 230 MB, for the universal head + chest + hand)
    chunk: int = 64

    def __init__(
        self,
        landmark_counts: Sequence[int],
        factor: int = 4,
        patch_size: int = 64,
        features: Sequence[int] = (8, 16, 32, 64, 64, 8),
        window: int = 7,
    ) -> None:
        super().__init__()
        if patch_size % 16:
            raise ValueError(f"LandmarkRefiner: patch_size must be divisible by 16 (BasicUNet pools 4 times), got {patch_size}.")
        counts = [int(c) for c in landmark_counts]
        self.net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=sum(counts), features=tuple(int(f) for f in features))
        # settings as buffers: they travel with the weights in a weights_only checkpoint
        self.register_buffer("landmark_counts", torch.tensor(counts))
        self.register_buffer("factor", torch.tensor(int(factor)))
        self.register_buffer("patch_size", torch.tensor(int(patch_size)))
        self.register_buffer("features", torch.tensor([int(f) for f in features]))
        self.register_buffer("window", torch.tensor(int(window)))
        # the training landmarks' layout in the refinement grid (AccumulateLandmarkShapes): sums and counts, so
        # that it is a plain mean over every sample drawn, saved and resumed with the weights
        self.register_buffer("shape_sum", torch.zeros(sum(counts), 2, dtype=torch.float64))
        self.register_buffer("shape_count", torch.zeros(sum(counts), dtype=torch.float64))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> LandmarkRefiner:
        """A refiner built with the settings a saved ``state_dict`` holds, its weights loaded."""
        refiner = cls(
            state["landmark_counts"].tolist(), int(state["factor"]), int(state["patch_size"]), state["features"].tolist(), int(state["window"])
        )
        # a refiner saved before the layout was recorded (0.7.0) has none: it refines at the scale as found
        state = {**refiner.state_dict(), **state}
        refiner.load_state_dict(state)
        return refiner

    def accumulate_shapes(self, shapes: torch.Tensor) -> None:
        """Add training layouts ``(B, channels, 2)`` (refinement-grid voxels, NaN where a landmark is not given)."""
        s = torch.as_tensor(shapes, dtype=torch.float64).to(self.shape_sum.device).reshape(-1, *self.shape_sum.shape)
        ok = torch.isfinite(s).all(dim=-1)
        self.shape_sum += torch.where(ok[..., None], s, torch.zeros_like(s)).sum(dim=0)
        self.shape_count += ok.sum(dim=0).to(self.shape_count.dtype)

    def mean_shape(self, domain: int) -> torch.Tensor:
        """The mean training layout ``(C, 2)`` of the anatomy of ``domain``; NaN where none was recorded."""
        a, b = self.channel(domain), self.channel(domain + 1)
        count = self.shape_count[a:b].cpu()
        mean = self.shape_sum[a:b].cpu() / count.clamp_min(1)[:, None]
        return torch.where((count > 0)[:, None], mean, torch.full_like(mean, float("nan")))

    def channel(self, domain: int, landmark: int | torch.Tensor = 0) -> Any:
        """The output channel of ``landmark`` of the anatomy of ``domain``."""
        return int(self.landmark_counts[:domain].sum()) + landmark

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)

    @torch.no_grad()
    def refine(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        domain: int,
        flip: bool = False,
        adapt_scale: bool = True,
        shifts: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Refine ``points`` ``(C, 2)`` (refinement-grid voxels) of one image ``(1, W, H)`` of anatomy ``domain``.

        With ``adapt_scale`` (and a recorded training layout) the patches are sampled with a step of the points'
        scale against that layout (:func:`shape_scale`): an anatomy shown at 70 % is looked at 1 / 0.7 times
        closer. With ``shifts`` > 0 each point is looked at from nine patches, centred on it and on the eight
        points ``shifts`` network pixels (times the scale) around it, and refined to the mean of their nine answers:
        the refiner's answer depends on where its patch sits, and their mean is steadier than any one of them.
        Returns the refined points, each one's confidence (the probability within the window around its peak,
        averaged over its patches) and the scale used. NaN points (not found) stay NaN.
        """
        size, half = int(self.patch_size), int(self.window) // 2
        pts = torch.as_tensor(points, dtype=torch.float32)
        ok = torch.isfinite(pts).all(dim=1)
        out, conf = pts.clone(), torch.full((pts.shape[0],), float("nan"))
        if not ok.any():
            return out, conf, 1.0
        step = shape_scale(pts, self.mean_shape(domain)) if adapt_scale else 1.0
        idx = torch.nonzero(ok).flatten()
        d = float(shifts) * int(self.factor) * step
        grid = torch.tensor([-d, 0.0, d]) if d > 0 else torch.zeros(1)
        around = torch.cartesian_prod(grid, grid).reshape(-1, 2)  # (K, 2) patch centres around each point
        k, n = around.shape[0], idx.numel()
        centres = (pts[idx][None] + around[:, None]).reshape(-1, 2)  # (K * n, 2), patch by patch of each shift
        device = self.factor.device
        patches = landmark_patches(image, centres, size, step=step, flip=flip)
        channels = self.channel(domain, idx).repeat(k)
        # the network answers in every landmark's channel and each patch needs one: in chunks, so that a chest's
        # 166 landmarks x 9 patches do not hold every channel of every patch at once
        chunks = []
        for i in range(0, k * n, self.chunk):
            c = channels[i : i + self.chunk].to(device)
            chunks.append(self(patches[i : i + self.chunk].to(device))[torch.arange(len(c), device=device), c].float().cpu())
        logits = torch.cat(chunks)
        # a landmark lies in the image: patch pixels sampled outside it (border values) cannot be the answer
        (w, h), (px, py) = image.shape[-2:], patch_positions(centres, size, step=step, flip=flip)
        inside = ((px >= -0.5) & (px <= w - 0.5))[:, :, None] & ((py >= -0.5) & (py <= h - 0.5))[:, None, :]
        logits = logits.masked_fill(~inside, float("-inf"))
        prob = F.softmax(logits.flatten(1), dim=1).reshape(-1, size, size)
        # the probability-weighted mean offset in the window around each peak; zero padding clips the window at
        # the patch's border
        peak = prob.flatten(1).argmax(dim=1)
        rows = torch.div(peak, size, rounding_mode="floor")[:, None] + torch.arange(2 * half + 1)[None]
        cols = (peak % size)[:, None] + torch.arange(2 * half + 1)[None]
        win = F.pad(prob, (half, half, half, half))[torch.arange(k * n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        offsets = torch.arange(size + 2 * half, dtype=torch.float32) - half - (size - 1) / 2  # of padded indices
        mass = win.sum(dim=(1, 2))
        u = (win.sum(dim=2) * offsets[rows]).sum(dim=1) / mass
        v = (win.sum(dim=1) * offsets[cols]).sum(dim=1) / mass
        answers = centres + torch.stack([-u if flip else u, v], dim=1) * step
        out[idx] = answers.reshape(k, n, 2).mean(dim=0)
        conf[idx] = mass.reshape(k, n).mean(dim=0)
        return out, conf, step


def read_refiner(path: str) -> LandmarkRefiner:
    """The refiner saved at ``path`` (``configs/refine.yaml``), in eval mode; an error naming the file otherwise."""
    state = read_checkpoint(path).get("refiner")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"refiner {path}: no 'refiner' state in the file; it is not a refiner checkpoint.")
    try:
        return LandmarkRefiner.from_state_dict(state).eval()
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"refiner {path}: cannot be built from its state ({type(e).__name__}: {e}).") from None


class RandLandmarkPatchesd(Randomizable, MapTransform):
    """Training samples for the refiner: ``num_samples`` patches of one image, each around an annotated landmark.

    Reads the refinement-grid image ``d[keys]`` ``(1, W, H)`` and its landmarks ``d[landmarks_key]`` ``(C, 2)``
    (voxels of that image, NaN where not annotated) and ``d[domain_key]``. Each patch is centred at a drawn
    landmark moved by a Gaussian error of ``jitter`` pixels per axis (the coarse stage's error at this grid,
    clipped to ``0.4 * patch_size``), sampled with a step drawn in ``zoom`` (another framing's scale). Returns a
    list of ``num_samples`` dicts: ``image`` ``(1, P, P)``, ``label`` ``(channels, P, P)`` with the landmark's
    Gaussian (``sigma`` patch pixels) in its channel and zeros elsewhere, ``domain``, and under ``shape_key`` the
    image's whole layout ``(channels, 2)`` (its anatomy's rows, NaN elsewhere) for :class:`AccumulateLandmarkShapes`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        landmark_counts: Sequence[int],
        landmarks_key: str = "landmarks",
        domain_key: str = "domain",
        patch_size: int = 64,
        num_samples: int = 4,
        jitter: float = 6.0,
        zoom: Sequence[float] = (0.85, 1.15),
        sigma: float = 1.5,
        shape_key: str = "shape",
    ) -> None:
        MapTransform.__init__(self, keys)
        self.counts = [int(c) for c in landmark_counts]
        self.landmarks_key, self.domain_key, self.shape_key = landmarks_key, domain_key, shape_key
        self.patch_size, self.num_samples = int(patch_size), int(num_samples)
        self.jitter, self.zoom, self.sigma = float(jitter), (float(zoom[0]), float(zoom[1])), float(sigma)

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        d = dict(data)
        key = self.first_key(d)
        image = torch.as_tensor(d[key], dtype=torch.float32)
        points = torch.as_tensor(np.asarray(d[self.landmarks_key], dtype=np.float32)).reshape(-1, 2)
        domain = int(d[self.domain_key])
        annotated = torch.nonzero(torch.isfinite(points).all(dim=1)).flatten().tolist()
        if not annotated:
            source = getattr(d[key], "meta", {}).get("filename_or_obj", "an image")
            raise ValueError(f"RandLandmarkPatchesd: image {source} has no annotated landmark to refine.")
        size, offset = self.patch_size, sum(self.counts[:domain])
        chosen = [annotated[self.R.randint(len(annotated))] for _ in range(self.num_samples)]
        limit = 0.4 * size
        error = np.clip(self.R.normal(0.0, self.jitter, (self.num_samples, 2)), -limit, limit)
        steps = self.R.uniform(*self.zoom, self.num_samples)
        centres = points[chosen] + torch.as_tensor(error, dtype=torch.float32) * torch.as_tensor(steps, dtype=torch.float32)[:, None]
        patches = landmark_patches(image, centres, size, torch.as_tensor(steps, dtype=torch.float32))
        # the landmark in patch pixels (patch pixel i sits at centre + (i - (P-1)/2) * step)
        target = (points[chosen] - centres) / torch.as_tensor(steps, dtype=torch.float32)[:, None] + (size - 1) / 2
        grid = torch.arange(size, dtype=torch.float32)
        shape = torch.full((sum(self.counts), 2), float("nan"))
        shape[offset : offset + points.shape[0]] = points
        out = []
        for n, k in enumerate(chosen):
            gx = torch.exp(-((grid - target[n, 0]) ** 2) / (2 * self.sigma**2))
            gy = torch.exp(-((grid - target[n, 1]) ** 2) / (2 * self.sigma**2))
            label = torch.zeros(sum(self.counts), size, size)
            label[offset + k] = gx[:, None] * gy[None, :]
            out.append({"image": patches[n], "label": label, self.domain_key: domain, self.shape_key: shape})
        return out


class AccumulateLandmarkShapes:
    """Ignite handler: adds each training batch's layouts (``batch[shape_key]``, from :class:`RandLandmarkPatchesd`)
    to the refiner's record, from which inference reads the anatomy's scale (:func:`shape_scale`). Every image
    gives the same number of samples per epoch, so the record is the mean layout over the training images."""

    def __init__(self, refiner: LandmarkRefiner, shape_key: str = "shape") -> None:
        self.refiner, self.shape_key = refiner, shape_key

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        batch = engine.state.batch
        if isinstance(batch, Mapping):
            shapes = batch[self.shape_key]
        else:  # MONAI's workflows decollate the batch into its items before the handlers see it
            shapes = torch.stack([torch.as_tensor(item[self.shape_key]) for item in batch])
        self.refiner.accumulate_shapes(shapes)


class PatchHeatmapLoss(nn.Module):
    """Loss of the refiner: on each sample's landmark channel (the label's only non-zero one), the cross-entropy
    of the spatial softmax of the logits against the label normalised to a distribution, plus ``l1_weight`` times
    the L1 distance (pixels) between the softmax's mean and the label's."""

    def __init__(self, l1_weight: float = 0.1) -> None:
        super().__init__()
        self.l1_weight = float(l1_weight)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        b, _, w, h = label.shape
        channel = label.flatten(2).sum(-1).argmax(dim=1)
        rows = torch.arange(b, device=label.device)
        logp = F.log_softmax(logits[rows, channel].flatten(1).float(), dim=1)
        target = label[rows, channel].flatten(1)
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-12)
        ce = -(target * logp).sum(dim=1)
        xs = torch.arange(w, device=label.device, dtype=torch.float32).repeat_interleave(h)
        ys = torch.arange(h, device=label.device, dtype=torch.float32).repeat(w)
        p = logp.exp()
        l1 = ((p * xs).sum(1) - (target * xs).sum(1)).abs() + ((p * ys).sum(1) - (target * ys).sum(1)).abs()
        return (ce + self.l1_weight * l1).mean()


class RefineLandmarksd(MapTransform):
    """Postprocessing: refine the decoded landmarks (original-image pixels) with the checkpoint's refiner.

    Reads ``d[keys]`` ``(C, 2)``, the item's ``domain``, ``pred_mirrored`` when mirroring ran, and the original
    image: ``d[image_key]`` where the preprocessing kept it (inference's ``image_original``), else read again from
    the network image's ``filename_or_obj`` with ``loader``. The image is resized to the refiner's grid
    (``factor`` x the anatomy's network size) and the points mapped through the affines both ways. Writes the
    refined points in place, the coarse ones to ``<key>_coarse`` and the refiner's confidences to
    ``<key>_refine_confidence`` and the scale it looked at (``<key>_refine_scale``; ``adapt_scale`` false: 1.0,
    the patches at the grid's own scale). ``shifts``: nine patches per landmark, this many network pixels apart,
    their answers averaged (:meth:`LandmarkRefiner.refine`); 0: one patch. ``resize_mode``: how the grid is
    resized (:func:`scripts.landmark_transforms.resize_image`), as the refiner was trained. Without a refiner file (``path``
    missing), or with one trained for other landmark counts (a warning), the items pass unchanged; a file that
    cannot be read is an error naming it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        path: str | None,
        anatomies: AnatomySet,
        image_key: str = "image_original",
        network_image_key: str = "image",
        loader: Any = None,
        enabled: bool | str = True,
        device: Any = "cpu",
        adapt_scale: bool | str = True,
        shifts: float | str = 0.0,
        resize_mode: str = "area",
    ) -> None:
        super().__init__(keys)
        self.resize_mode = check_resize_mode(resize_mode)
        self.anatomies, self.image_key, self.network_image_key, self.loader = anatomies, image_key, network_image_key, loader
        self.adapt_scale = as_flag(adapt_scale, "refine_adapt_scale")
        try:
            self.shifts = float(shifts)
        except (TypeError, ValueError):
            self.shifts = float("nan")
        if not np.isfinite(self.shifts) or self.shifts < 0:
            raise ValueError(f"refine_shifts must be a distance in network pixels >= 0 (0: one patch), got {shifts!r}.")
        self.refiner: LandmarkRefiner | None = None
        if as_flag(enabled, "refine") and path and os.path.isfile(path):  # `--refine false` arrives as 'false'
            self.refiner = read_refiner(path).to(device)
            counts = self.refiner.landmark_counts.tolist()
            if counts != list(anatomies.landmark_counts):
                # a refiner left from before the model changed (add_anatomy, a retrained model): the decoded points
                # are still right, only not refined; every output says "refined": false
                logger.warning(
                    f"refiner {path}: trained for landmark counts {counts}, the model has {list(anatomies.landmark_counts)}; "
                    "landmarks are not refined. Train the refiner again for this model (configs/refine.yaml)."
                )
                self.refiner = None

    @property
    def active(self) -> bool:
        return self.refiner is not None

    def _original(self, d: Mapping[Hashable, Any]) -> Any:
        if self.image_key in d:
            return d[self.image_key]
        source = getattr(d[self.network_image_key], "meta", {}).get("filename_or_obj")
        if self.loader is None or not source:
            raise ValueError(f"RefineLandmarksd: no original image ({self.image_key!r}) and no file to read it from.")
        return self.loader({"image": source})["image"]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.refiner is None:
            return d
        original = self._original(d)
        domain = int(d["domain"])
        size = [int(s) * int(self.refiner.factor) for s in self.anatomies[domain].size]
        grid = resize_image(original, size, self.resize_mode)
        # the points are in the grid of the file as read (meta's original_affine, as DecodeLandmarksd maps them);
        # a spatial transform applied since (a benchmark's shift) moved the image's affine, and the grid's follows it
        original_affine = original.meta.get("original_affine", original.affine)
        grid_affine = grid.affine
        flip = bool(d.get("pred_mirrored", False))
        for key in self.key_iterator(d):
            coarse = torch.as_tensor(np.asarray(d[key], dtype=np.float32))
            points = grid_to_original(coarse.double(), original_affine, grid_affine).float()
            refined, conf, scale = self.refiner.refine(
                grid.as_tensor(), points, domain, flip=flip, adapt_scale=self.adapt_scale, shifts=self.shifts
            )
            d[f"{key}_coarse"] = coarse.numpy()
            d[key] = grid_to_original(refined.double(), grid_affine, original_affine).numpy().astype(np.float32)
            d[f"{key}_refine_confidence"] = conf.numpy()
            d[f"{key}_refine_scale"] = scale
        return d
