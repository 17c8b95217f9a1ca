"""Images that show no anatomy, for checking that the anatomy recogniser answers "unknown" (tests, benchmark).

Deterministic for a seed: white noise, a constant image, a made-up natural photograph (an RGB colour gradient
with a disc, a box and a triangle), a smooth random field, and a real photograph (matplotlib's sample portrait).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

__all__ = ["write_no_anatomy_images"]


def write_no_anatomy_images(folder: str, seed: int = 0) -> dict[str, str]:
    """Write the made-up images into ``folder`` as PNG; return ``{kind: path}`` with ``real_photo`` added."""
    import matplotlib.cbook

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f"{k}.png") for k in ("noise", "constant", "photo", "smooth_field")}
    Image.fromarray(rng.integers(0, 256, (240, 192), dtype=np.uint8)).save(paths["noise"])
    Image.fromarray(np.full((224, 224), 128, np.uint8)).save(paths["constant"])
    yy, xx = np.mgrid[0:240, 0:320] / np.array([240.0, 320.0])[:, None, None]
    photo = Image.fromarray((np.stack([xx, yy, 1 - 0.6 * xx], -1) * 230 + 10).astype(np.uint8))
    draw = ImageDraw.Draw(photo)
    draw.ellipse([30, 50, 130, 150], fill=(240, 210, 40))
    draw.rectangle([190, 90, 300, 200], fill=(30, 80, 190))
    draw.polygon([(70, 225), (160, 170), (210, 235)], fill=(190, 40, 70))
    photo.save(paths["photo"])
    field = gaussian_filter(rng.normal(size=(256, 176)), 8)
    Image.fromarray(((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)).save(paths["smooth_field"])
    paths["real_photo"] = str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return paths
