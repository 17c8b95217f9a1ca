"""Mirrored images: a right hand given to a model of left hands, a cephalogram facing the other way.

A network trained on one orientation finds nothing on a left-right mirrored image: every landmark is wrong and
every confidence low. At inference and evaluation the image is therefore also run **flipped** (in the network's
grid, along x), when its own answer looks doubtful; the flipped run's heatmaps are flipped back, so each channel
is still its landmark and lies in the input image's grid (a point at ``x`` of the flipped image is at
``W - 1 - x`` of the input): decoding, the mapping back to the original image and the identities stay as
they are. The orientation whose landmarks are more confident wins, by a margin.

- :class:`MirrorInferer` wraps the inferer: the as-given heatmaps, then, for images whose mean confidence is below
  ``gate``, the flipped-back heatmaps of the flipped image (NaN where that run was not needed), as ``2C`` channels.
- :class:`SelectOrientationd` (postprocessing, before decoding) keeps the ``C`` channels of one orientation:
  the mirrored one when its mean peak exceeds ``ratio`` times the as-given one's, and records which one it took
  (``pred_mirrored``) with both mean confidences.

Measured on ISBI 2015 by ``bench/robustness.py`` (the ``mirrored`` shift).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.config import KeysCollection
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import MapTransform

from .anatomies import AnatomySet

__all__ = ["MIRROR_MODES", "MirrorInferer", "SelectOrientationd", "batch_subset", "mean_peak"]

MIRROR_MODES = ("auto", "off")


def mean_peak(heatmaps: torch.Tensor) -> torch.Tensor:
    """The mean over landmarks of each heatmap's peak (the mean confidence): ``(B, C, ...)`` -> ``(B,)``."""
    return heatmaps.flatten(2).amax(-1).mean(-1)


def batch_subset(value: Any, index: torch.Tensor, batch: int) -> Any:
    """``value[index]`` for a per-sample tensor of the batch; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
        return value[index.to(value.device)]
    return value


class MirrorInferer(Inferer):
    """Run ``inferer`` on the batch and, where needed, on its left-right mirror (see the module's docstring).

    Args:
        inferer: the inferer that runs the network (e.g. :class:`~scripts.inferers.DeployInferer`).
        mode: ``"auto"`` (try the mirror of doubtful images) or ``"off"`` (the inferer's output as it is, ``C``
            channels).
        gate: an image's mirror is run when its mean confidence is below this; 1.0 runs every image both ways
            (twice the time), 0.3 (default) only images that look wrong (correctly oriented ISBI heads score
            about 0.45).
        axis: the spatial axis that is mirrored (0: x, the first spatial axis of ``(B, 1, W, H)`` images).

    Returns ``(B, 2C, ...)`` heatmaps with mode ``auto``: the first ``C`` channels as given, the last ``C`` the
    mirrored run flipped back, NaN for images whose mirror was not run.
    """

    def __init__(self, inferer: Inferer | None = None, mode: str = "auto", gate: float = 0.3, axis: int = 0) -> None:
        super().__init__()
        if mode not in MIRROR_MODES:
            raise ValueError(f"MirrorInferer: unknown mode {mode!r}; choose one of {list(MIRROR_MODES)}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.mode, self.gate, self.axis = mode, float(gate), int(axis)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inferer(inputs, network, *args, **kwargs)
        if self.mode == "off":
            return out
        out = out.as_tensor() if hasattr(out, "as_tensor") else out
        mirrored = torch.full_like(out, float("nan"))
        todo = torch.nonzero(mean_peak(out.float()) < self.gate).flatten()
        if todo.numel():
            x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
            batch, dim = x.shape[0], 2 + self.axis
            sub_args = [batch_subset(a, todo, batch) for a in args]
            sub_kwargs = {k: batch_subset(v, todo, batch) for k, v in kwargs.items()}
            flipped = x[todo.to(x.device)].flip(dim)
            answer = self.inferer(flipped, network, *sub_args, **sub_kwargs)
            answer = answer.as_tensor() if hasattr(answer, "as_tensor") else answer
            mirrored[todo.to(out.device)] = answer.flip(dim).to(out.dtype)
        return torch.cat([out, mirrored], 1)


class SelectOrientationd(MapTransform):
    """Keep the heatmaps of one orientation from :class:`MirrorInferer`'s ``2C`` channels.

    The mirrored orientation is kept when its mean confidence exceeds ``ratio`` times the as-given one's; a
    ``C``-channel prediction (mirroring off) passes unchanged. Writes ``mirrored_key`` (bool) and
    ``confidence_key`` (``[as given, mirrored]`` mean confidences; NaN where not run).

    Args:
        keys: the predicted heatmaps.
        anatomies: the landmark count of each anatomy (``d["anatomy"]``).
        ratio: how much more confident the mirrored answer must be (1.5: a wide margin; a mirrored ISBI head
            scores about 0.02 as given and 0.45 mirrored).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        anatomies: AnatomySet | None = None,
        ratio: float = 1.5,
        mirrored_key: str = "pred_mirrored",
        confidence_key: str = "pred_orientation_confidence",
        anatomy_key: str = "anatomy",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if anatomies is None:
            raise ValueError("SelectOrientationd needs the anatomies (landmark counts).")
        self.anatomies, self.ratio = anatomies, float(ratio)
        self.mirrored_key, self.confidence_key, self.anatomy_key = mirrored_key, confidence_key, anatomy_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        count = self.anatomies[str(d[self.anatomy_key])].num_landmarks
        for key in self.key_iterator(d):
            hm = d[key]
            if hm.shape[0] == count:
                given, mirrored = hm, None
            elif hm.shape[0] == 2 * count:
                given, mirrored = hm[:count], hm[count:]
            else:
                raise ValueError(f"SelectOrientationd: {hm.shape[0]} heatmap channels for {count} landmarks.")
            conf_given = float(mean_peak(torch.as_tensor(given)[None].float())[0])
            conf_mirrored = float("nan")
            if mirrored is not None and not bool(torch.isnan(torch.as_tensor(mirrored)).all()):
                conf_mirrored = float(mean_peak(torch.as_tensor(mirrored)[None].float())[0])
            use_mirrored = bool(np.isfinite(conf_mirrored) and conf_mirrored > self.ratio * conf_given)
            d[key] = mirrored if use_mirrored else given
            d[self.mirrored_key] = use_mirrored
            d[self.confidence_key] = np.array([conf_given, conf_mirrored])
        return d
