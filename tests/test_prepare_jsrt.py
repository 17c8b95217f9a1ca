"""The real JSRT chest set (../shared/data/chest) reads as it is through the generic reader: 200 images, 166 points."""

from __future__ import annotations

import os

import numpy as np

from conftest import shared_data
from scripts.datasets.generic import prepare_generic


def test_the_shared_jsrt_chest_set_prepares_with_the_generic_reader():
    csv_path = os.path.join(shared_data("chest"), "landmarks.csv")
    prepared = prepare_generic(csv_path, anatomy="chest", size=(128, 128), val_fraction=0.1, test_fraction=0.2, seed=0)
    assert len(prepared.spec["landmarks"]) == 166 and prepared.spec["landmarks"][0] == "RL00"
    assert prepared.counts() == {"training": 140, "validation": 20, "test": 40}
    items = [it for split in prepared.splits.values() for it in split]
    assert len({it["image"] for it in items}) == 200
    points = np.stack([np.asarray(it["landmarks"], dtype=np.float64) for it in items])
    assert points.shape == (200, 166, 2) and np.isfinite(points).all()
    assert points.min() >= 0 and points.max() <= 1023
    spacings = {tuple(it.get("spacing") or prepared.spec.get("spacing")) for it in items}
    assert spacings == {(0.35, 0.35)}  # mm: the chest is scored in mm at the default radii
