"""The training loss: binary cross-entropy between the final heatmap and the Gaussian targets."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HeatmapBCELoss"]


class HeatmapBCELoss(nn.Module):
    """BCE over heatmap pixels, skipping landmarks that are not annotated (target channel all NaN).

    Written here rather than using ``nn.BCELoss`` because (1) unannotated landmarks must not be
    penalised and (2) BCE on probabilities is not autocast-safe, so it is computed in float32 with
    autocast off: the same config then trains with AMP on a GPU.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.float()
            target = torch.as_tensor(target, device=pred.device).float()
            valid = ~torch.isnan(target.flatten(2)).any(-1)  # (B, C)
            if bool(valid.all()):
                return F.binary_cross_entropy(pred, target)
            per_channel = F.binary_cross_entropy(
                pred, torch.nan_to_num(target, nan=0.0), reduction="none"
            ).flatten(2).mean(-1)
            if not bool(valid.any()):
                return (pred * 0).sum()  # keeps the graph; nothing to learn from this batch
            return per_channel[valid].mean()
