"""Small data sets in their owners' layouts, written by the tests (no data is committed)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

HEAD_SIZE = (64, 80)  # W, H of the fixture head images


def write_image(path: str, size: tuple[int, int], seed: int) -> None:
    """A grey image of ``size`` (W, H), with noise so that it is not constant."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(path)


def _points(rng: np.random.Generator, n: int, size: tuple[int, int]) -> np.ndarray:
    return rng.uniform(2, np.array(size) - 3, (n, 2)).round(1)


def isbi2015_official(root: str, ids: dict[str, list[int]], extra_labels: tuple[int, ...] = (), seed: int = 0) -> dict:
    """``RawImage/<folder>/NNN.bmp`` for ``ids`` (folder -> image ids), and both doctors' text files.

    ``extra_labels`` get label files without an image. Returns ``{doctor: {id: (19, 2) pixels}}``.
    """
    rng = np.random.default_rng(seed)
    labels: dict = {"senior": {}, "junior": {}}
    for folder, numbers in ids.items():
        for i in numbers:
            write_image(os.path.join(root, "RawImage", folder, f"{i:03d}.bmp"), HEAD_SIZE, i)
    for i in [i for numbers in ids.values() for i in numbers] + list(extra_labels):
        base = _points(rng, 19, HEAD_SIZE)
        for doctor in labels:
            pts = np.clip(base + rng.normal(0, 1.0, base.shape).round(1), 0, np.array(HEAD_SIZE) - 1)
            labels[doctor][i] = pts
            folder = os.path.join(root, "AnnotationsByMD", f"400_{doctor}")
            os.makedirs(folder, exist_ok=True)
            lines = [f"{x:g},{y:g}" for x, y in pts] + ["1", "2", "ignored trailer"]
            with open(os.path.join(folder, f"{i:03d}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    return labels


HAND_SIZE = (60, 90)


def hand_atlas(root: str, ids: list[str], rows_without_image: tuple[str, ...] = (), seed: int = 1) -> dict:
    """Atlas-style JPGs ``<root>/<group>/<id>.jpg`` (nested, as downloaded) and Payer et al.'s ``<root>/all.csv``.

    Landmarks 1 and 5 are ``3 * (k + 10)`` pixels apart in image ``k``, so its scale is ``50 / that`` mm per pixel.
    Returns ``{id: (37, 2) pixels}``.
    """
    rng = np.random.default_rng(seed)
    points = {}
    for k, key in enumerate(list(ids) + list(rows_without_image)):
        pts = _points(rng, 37, HAND_SIZE)
        pts[0], pts[4] = (5.0, 70.0), (5.0 + 3 * (k + 10), 70.0)
        points[key] = pts
        if key in ids:
            write_image(os.path.join(root, f"group{k % 2}", f"{key}.jpg"), HAND_SIZE, k)
    rows = [",".join([key] + [f"{v:g}" for v in pts.ravel()]) for key, pts in points.items()]
    with open(os.path.join(root, "all.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return {key: points[key] for key in ids}


def shenzhen(images: str, labels: str, sizes: dict[str, tuple[int, int]], unlabelled: tuple[str, ...] = (), seed: int = 2) -> dict:
    """``CHNCXR_<id>.png`` of the given sizes (W, H) in ``images`` and their label files (ratios) in ``labels``.

    ``unlabelled`` ids get an image but no label file. Returns ``{id: (6, 2) ratios}``.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(labels, exist_ok=True)
    ratios = {}
    for key, size in sizes.items():
        write_image(os.path.join(images, f"CHNCXR_{key}.png"), size, len(ratios))
        if key in unlabelled:
            continue
        ratios[key] = (rng.uniform(0.05, 0.95, (6, 2)) * 256).round() / 256
        with open(os.path.join(labels, f"CHNCXR_{key}.txt"), "w") as f:
            f.write("6\n" + "".join(f"{x:g} {y:g}\n" for x, y in ratios[key]))
    return ratios


PELVIS_SIZE = (50, 40)


def pelvis_csv(root: str, n: int = 6, seed: int = 3) -> dict:
    """The docs' worked example: ``<root>/pelvis.csv`` (10 landmarks, pixels) over ``<root>/images/p<k>.png``.

    Returns ``{image path as written: (10, 2) pixels}``.
    """
    rng = np.random.default_rng(seed)
    names = ["left_asis", "right_asis", "left_psis", "right_psis", "pubic_symphysis", "sacral_promontory",
             "left_femoral_head", "right_femoral_head", "left_ischial_tuberosity", "right_ischial_tuberosity"]  # fmt: skip
    header = "image," + ",".join(f"{n}_x,{n}_y" for n in names)
    points, rows = {}, []
    for k in range(n):
        rel = f"images/p{k:03d}.png"
        write_image(os.path.join(root, rel), PELVIS_SIZE, k)
        points[rel] = _points(rng, 10, PELVIS_SIZE)
        rows.append(rel + "," + ",".join(f"{v:g}" for v in points[rel].ravel()))
    with open(os.path.join(root, "pelvis.csv"), "w") as f:
        f.write("\n".join([header] + rows) + "\n")
    return points


def dicom_image(path: str, size: tuple[int, int], modality: str, tags: dict[str, str] | None = None,
                spacing: tuple[float, float] = (1.0, 1.0), no_spacing: bool = False) -> None:  # fmt: skip
    """A 2D DICOM file written by ITK (``spacing`` is ``(sx, sy)``; CR/DX get ImagerPixelSpacing, others PixelSpacing).

    ITK may write PixelSpacing on its own; ``no_spacing`` renames it to Zoom Factor (0028,0031) in the file,
    which leaves a valid DICOM without it (the tests check that no spacing tag is left).
    """
    import itk

    rng = np.random.default_rng(0)
    img = itk.image_from_array(rng.integers(0, 1000, (size[1], size[0])).astype(np.int16))
    img.SetSpacing(list(spacing))
    meta = img.GetMetaDataDictionary()
    for key, value in {"0008|0060": modality, **(tags or {})}.items():
        meta[key] = value
    os.makedirs(os.path.dirname(path), exist_ok=True)
    itk.imwrite(img, path)
    if no_spacing:  # (0028,0030) -> (0028,0031), little endian; pixels that happen to match only change value
        raw = open(path, "rb").read()
        open(path, "wb").write(raw.replace(b"\x28\x00\x30\x00", b"\x28\x00\x31\x00"))
