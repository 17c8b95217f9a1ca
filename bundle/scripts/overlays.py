"""Landmarks drawn on their image, coloured by confidence on a scale that marks the points needing review.

A landmark's confidence is its heatmap's peak (:func:`~scripts.heatmaps.decode_heatmaps`); it rarely nears 1,
so a plain red-to-green scale over 0-1 would paint every point red or orange. The scale here turns at the
review threshold instead: below it, red to orange (look at this point); from it up to twice the threshold,
yellow to green (green above).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["REVIEW_THRESHOLD", "confidence_colour", "overlay_image"]

# the confidence below which a landmark needs review, until a checkpoint brings its own validated one
REVIEW_THRESHOLD = 0.3

Colour = tuple[int, int, int]
_RED, _ORANGE, _YELLOW, _GREEN, _GREY = (255, 0, 0), (255, 140, 0), (255, 230, 0), (0, 220, 0), (160, 160, 160)
_TRUTH = (0, 200, 255)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(int(round(u + (v - u) * t)) for u, v in zip(a, b))  # type: ignore[return-value]


def confidence_colour(confidence: float, threshold: float = REVIEW_THRESHOLD) -> Colour:
    """The colour of a landmark of ``confidence``: red to orange below ``threshold`` (needs review), yellow at it
    to green at ``min(1, 2 * threshold)`` and above; grey when unknown (NaN)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the confidence threshold must lie in (0, 1], got {threshold}.")
    if not np.isfinite(confidence):
        return _GREY
    c = float(np.clip(confidence, 0.0, 1.0))
    if c < threshold:
        return _mix(_RED, _ORANGE, c / threshold)
    top = min(1.0, 2 * threshold)
    return _mix(_YELLOW, _GREEN, 1.0 if top <= threshold else min(1.0, (c - threshold) / (top - threshold)))


def overlay_image(
    image: np.ndarray | torch.Tensor,
    points: np.ndarray,
    confidence: np.ndarray | None = None,
    true_points: np.ndarray | None = None,
    threshold: float = REVIEW_THRESHOLD,
    max_size: int | None = None,
) -> Image.Image:
    """Draw ``(N, 2)`` ``(x, y)`` points (pixels of ``image``) on a ``(1, W, H)`` (array-axis order) image.

    Predictions are filled dots coloured by :func:`confidence_colour` (its scale is the legend in the top-left
    corner); true points, if given, are cyan rings joined to their prediction by a line. With ``max_size`` the
    picture is scaled down to at most that many pixels on its long side, points with it.
    """
    a = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    a = a.reshape(a.shape[-2:]).T  # (H, W) for PIL
    lo, hi = np.percentile(a, [0.5, 99.5])
    img = Image.fromarray(np.clip((a - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)).convert("RGB")
    scale = 1.0
    if max_size and max(img.size) > max_size:
        scale = max_size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)

    def scaled(p: np.ndarray) -> np.ndarray:  # pixel centres at integers before and after
        return (np.asarray(p, dtype=np.float64) + 0.5) * scale - 0.5

    draw = ImageDraw.Draw(img)
    r = max(2, round(max(img.size) / 200))
    pts = scaled(points)
    truth = None if true_points is None else scaled(true_points)
    conf = np.full(len(pts), np.nan) if confidence is None else np.asarray(confidence, dtype=np.float64)
    for k, (x, y) in enumerate(pts):
        if truth is not None and np.isfinite(truth[k]).all():
            tx, ty = truth[k]
            draw.line([(x, y), (tx, ty)], fill=_TRUTH, width=max(1, r // 2))
            draw.ellipse([tx - r, ty - r, tx + r, ty + r], outline=_TRUTH, width=max(1, r // 2))
        if np.isfinite([x, y]).all():
            draw.ellipse([x - r, y - r, x + r, y + r], fill=confidence_colour(conf[k], threshold))
    if confidence is not None:
        _draw_confidence_legend(draw, img.size, threshold)
    return img


def _draw_confidence_legend(draw: ImageDraw.ImageDraw, size: tuple[int, int], threshold: float) -> None:
    """The colour scale from confidence 0 to 1 with a white tick at the threshold, labelled, on black, top left."""
    label = f"confidence 0-1, review below {threshold:g}"
    x0 = y0 = max(2, min(size) // 100)
    font = ImageFont.load_default(size=max(10, min(size) // 50))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    w = max(right - left, size[0] // 6)
    h = max(4, w // 12)
    draw.rectangle([x0 - 2, y0 - 2, x0 + w + 2, y0 + h + 4 + bottom], fill=(0, 0, 0))
    for i in range(w):
        draw.line([(x0 + i, y0), (x0 + i, y0 + h)], fill=confidence_colour(i / (w - 1), threshold))
    tick = x0 + round(threshold * (w - 1))
    draw.line([(tick, y0 - 2), (tick, y0 + h + 1)], fill=(255, 255, 255), width=1)
    draw.text((x0, y0 + h + 2), label, fill=(255, 255, 255), font=font)
