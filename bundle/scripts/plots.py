"""The evaluation's figures: cumulative error distributions and worst cases drawn on their original image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .files import atomic_path, write_image_atomic
from .overlays import REVIEW_THRESHOLD, overlay_image

__all__ = ["plot_cumulative_errors", "plot_worst_case"]


def plot_cumulative_errors(
    errors: Mapping[str, np.ndarray], radii: Sequence[float], unit: str, title: str, path: str
) -> None:
    """Plot the share of landmarks within each error (one curve per entry of ``errors``), radii dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    top = 0.0
    for label, e in errors.items():
        e = np.sort(np.asarray(e, dtype=np.float64)[np.isfinite(e)])
        if e.size:
            ax.step(np.r_[0.0, e], np.r_[0.0, np.arange(1, e.size + 1) / e.size * 100], where="post", label=f"{label} (n={e.size})")
            top = max(top, float(np.percentile(e, 98)))
    for r in radii:
        ax.axvline(r, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, max(top, max(radii, default=1.0) * 1.5))
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"radial error ({unit})")
    ax.set_ylabel("landmarks within that error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_worst_case(image: Any, record: Mapping[str, Any], path: str, threshold: float = REVIEW_THRESHOLD) -> None:
    """Draw one record's predictions (coloured by confidence around ``threshold``) and annotations on its
    ``(1, W, H)`` original image."""
    write_image_atomic(overlay_image(image, record["pred"], record["confidence"], record["true"], threshold), path)
