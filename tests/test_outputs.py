"""What runs write: overlays coloured by confidence, files replaced atomically."""

import os

import numpy as np
import pytest

from scripts.outputs import atomic_path, overlay_image


def test_overlay_colours_each_point_by_its_confidence():
    img = overlay_image(np.zeros((1, 200, 100)), np.array([[50.0, 50.0], [150.0, 80.0]]), np.array([0.05, 0.95]))
    low, high = img.getpixel((50, 50)), img.getpixel((150, 80))  # PIL is (x, y): x = first array axis
    assert low[0] > 200 and low[1] < 60  # red: low confidence
    assert high[1] > 200 and high[0] < 60  # green: high confidence
    assert img.getpixel((5, 5)) != (0, 0, 0) or img.getpixel((10, 4)) != (0, 0, 0)  # the legend's bar


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "report.md")
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("first")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert open(path).read() == "first" and os.listdir(tmp_path) == ["report.md"]


def test_json_is_strict_with_unknown_values_as_null(tmp_path):
    import json

    from scripts.outputs import write_json_atomic

    path = str(tmp_path / "m.json")
    write_json_atomic({"MRE": np.float64("nan"), "SDR": {"2": 50.0}, "xs": [1.0, float("inf")]}, path)
    assert json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}")) == {
        "MRE": None, "SDR": {"2": 50.0}, "xs": [1.0, None]
    }
