"""Test-time framing: an anatomy shown larger or smaller than in training is looked at again at its trained size.

Another site frames its images otherwise: a tighter field of view shows the head larger, a wider one smaller.
GU2Net sees the whole image at a fixed network size, so such an anatomy reaches it at a scale it rarely saw in
training, and its landmarks are less precise (``bench/robustness.py``: zoomed in 130 %). After a first pass,
:class:`ReframeInferer` reads the anatomy's apparent scale and centre off the decoded peaks against the training
layout (:func:`scripts.refinement.shape_scale`, the layout the refiner recorded while it trained), and where the
scale is outside ``limits`` it runs the network again on the image resampled so that the anatomy appears at its
trained size and centre (black canvas where the view ends, as in training's framing augmentation), and maps the
heatmaps back to the first pass's grid. Decoding, mirroring, refinement and the review flag then proceed as
for any image. The second answer is kept where its mean confidence is not below the first one's.

MONAI's inferers (sliding window, patch) run a network at one fixed scale; none looks again at another framing,
hence this wrapper.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import Inferer, SimpleInferer

from .errors import as_flag
from .gu2net import resolve_domain
from .heatmaps import decode_heatmaps
from .mirroring import batch_subset, mean_peak
from .refinement import read_refiner, shape_scale

__all__ = ["ReframeInferer", "network_layouts", "resample_view"]

logger = logging.getLogger(__name__)


def network_layouts(refiner_path: str | None) -> dict[int, torch.Tensor]:
    """Each anatomy's mean training layout ``(C, 2)`` in network-grid voxels, from the refiner at ``refiner_path``.

    The refiner records its training landmarks in its grid, ``factor`` x the network's size; a voxel ``g`` there
    is ``(g + 0.5) / factor - 0.5`` of the network grid. Empty where there is no refiner or no layout recorded.
    """
    if not refiner_path or not os.path.isfile(refiner_path):
        return {}
    refiner = read_refiner(refiner_path)
    factor = float(refiner.factor)
    layouts = {}
    for domain in range(len(refiner.landmark_counts)):
        shape = refiner.mean_shape(domain).float()
        if bool(torch.isfinite(shape).all(dim=1).sum() >= 3):
            layouts[domain] = (shape + 0.5) / factor - 0.5
    return layouts


def resample_view(x: torch.Tensor, scale: torch.Tensor, source_centre: torch.Tensor, target_centre: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """``out[u] = x[scale * (u - target_centre) + source_centre]`` for a batch ``(B, C, W, H)`` (voxels, bilinear).

    ``scale`` ``(B,)``, centres ``(B, 2)`` in voxels of the first two spatial axes. Outside ``x`` the value is
    ``pad`` ``(B,)`` (0 where None).
    """
    b, _, w, h = x.shape
    u = torch.arange(w, dtype=torch.float32, device=x.device)
    v = torch.arange(h, dtype=torch.float32, device=x.device)
    sx = scale[:, None] * (u[None] - target_centre[:, :1]) + source_centre[:, :1]  # (B, W)
    sy = scale[:, None] * (v[None] - target_centre[:, 1:]) + source_centre[:, 1:]  # (B, H)
    # grid_sample reads (x -> the last axis, y -> the one before): here the last axis is H
    gy = (sy / max(h - 1, 1) * 2 - 1)[:, None, :].expand(b, w, h)
    gx = (sx / max(w - 1, 1) * 2 - 1)[:, :, None].expand(b, w, h)
    grid = torch.stack([gy, gx], dim=-1)
    if pad is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    p = pad.reshape(b, 1, 1, 1).to(x.dtype)
    return F.grid_sample(x - p, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + p


class ReframeInferer(Inferer):
    """Run ``inferer``; where the anatomy appears at another scale than in training, run it again reframed.

    Args:
        inferer: the inferer that runs the network (e.g. :class:`~scripts.inferers.DeployInferer`).
        refiner_path: the refiner whose recorded training layout gives each anatomy's trained size and centre
            (:func:`network_layouts`); without it (no refiner trained) the first answer is returned as it is.
        limits: the scales (the anatomy's size against training) within which the first answer stands; e.g.
            ``(0.87, 1.15)``: anatomies shown more than 13 % smaller or 15 % larger are looked at again;
            ``(0.0, 1.15)``: only larger ones.
        enabled: False: the first answer always.

    Inputs are z-scored network images ``(B, 1, W, H)``; the reframed image is padded with each image's minimum
    (black) and z-scored again, as training's framing augmentation pads and normalises.
    """

    def __init__(
        self, inferer: Inferer | None = None, refiner_path: str | None = None, limits: Any = (0.87, 1.15), enabled: bool | str = True
    ) -> None:
        super().__init__()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        lo, hi = (float(v) for v in limits)
        if not 0.0 <= lo <= 1.0 <= hi:
            raise ValueError(f"ReframeInferer: limits must be [low <= 1, high >= 1], got {list(limits)}.")
        self.limits, self.refiner_path = (lo, hi), refiner_path
        self.enabled = as_flag(enabled, "reframe")  # `--reframe false` arrives as 'false'
        self._layouts: dict[int, torch.Tensor] | None = None
        #: images looked at again, and the reframed answers kept, since this inferer was built
        self.reframed, self.kept = 0, 0

    def layouts(self) -> dict[int, torch.Tensor]:
        # read on first use: the refiner may be trained after the workflow that holds this inferer was built
        if self._layouts is None:
            self._layouts = network_layouts(self.refiner_path)
            if not self._layouts:
                logger.info("ReframeInferer: no refiner layout at %s; images are not reframed.", self.refiner_path)
        return self._layouts

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inferer(inputs, network, *args, **kwargs)
        if not self.enabled:
            return out
        domain = kwargs.get("domain", args[0] if args else 0)
        layout = self.layouts().get(resolve_domain(domain, getattr(network, "num_domains", 1)))
        if layout is None:
            return out
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        # each heatmap's peak pixel: all the scale and centre need, without the sub-pixel fit
        peaks = torch.stack([decode_heatmaps(h, "argmax", window=1)[0] for h in out])
        if layout.shape[0] != peaks.shape[1]:
            return out
        scales = torch.tensor([shape_scale(p, layout) for p in peaks])
        todo = torch.nonzero((scales < self.limits[0]) | (scales > self.limits[1])).flatten()
        if not todo.numel():
            return out
        centre = peaks[todo].median(dim=1).values  # (n, 2) the anatomy's centre in the image, voxels
        trained = layout[torch.isfinite(layout).all(dim=1)].median(dim=0).values.expand(len(todo), 2)
        s = scales[todo]
        dev = x.device
        xs = x[todo.to(dev)].float()
        pad = xs.flatten(1).amin(1)
        view = resample_view(xs, s.to(dev), centre.to(dev), trained.to(dev), pad)
        view = (view - view.mean(dim=(1, 2, 3), keepdim=True)) / view.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        sub_args = [batch_subset(a, todo, x.shape[0]) for a in args]
        sub_kwargs = {k: batch_subset(v, todo, x.shape[0]) for k, v in kwargs.items()}
        again = self.inferer(view.to(x.dtype), network, *sub_args, **sub_kwargs)
        again = (again.as_tensor() if hasattr(again, "as_tensor") else again).float()
        # back to the first pass's grid: the inverse of the view's mapping
        back = resample_view(again, (1.0 / s).to(again.device), trained.to(again.device), centre.to(again.device))
        keep = mean_peak(back) >= mean_peak(out[todo.to(out.device)].float())
        self.reframed += int(todo.numel())
        self.kept += int(keep.sum())
        for scale, kept in zip(s.tolist(), keep.tolist()):
            logger.info("ReframeInferer: the anatomy appears at x%.2f of its trained size; looked at again (%s)", scale, "kept" if kept else "first answer kept")
        out = out.clone()
        rows = todo.to(out.device)[keep.to(out.device)]
        out[rows] = back[keep].to(out.dtype)
        return out
