"""The generic landmark file (the docs' pelvis example): CSV and JSON, spacing rules, and every bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE
from official_layouts import dicom_image, pelvis_csv
from scripts.datasets.common import PrepareError
from scripts.datasets.generic import prepare_generic
from scripts.prepare import main as prepare_main


@pytest.fixture()
def pelvis(tmp_path):
    root = tmp_path / "pelvis"
    return root, pelvis_csv(str(root))


def _edit(path, change):
    lines = open(path).read().splitlines()
    change(lines)
    open(path, "w").write("\n".join(lines) + "\n")


def test_csv_in_pixels_with_names_from_the_header(pelvis):
    root, points = pelvis
    prepared = prepare_generic(str(root / "pelvis.csv"), "pelvis", size=(64, 48), val_fraction=0.2, test_fraction=0.2)
    assert prepared.counts() == {"training": 4, "validation": 1, "test": 1}
    assert prepared.spec == {"landmarks": prepared.spec["landmarks"], "size": [64, 48]} and prepared.report["unit"] == "px"
    assert prepared.spec["landmarks"][4] == "pubic_symphysis" and len(prepared.spec["landmarks"]) == 10
    item = next(it for s in prepared.splits.values() for it in s if it["id"] == "images/p002.png")
    np.testing.assert_allclose(item["landmarks"], points["images/p002.png"], atol=1e-3)


def test_csv_optional_spacing_and_split_columns(pelvis):
    root, _ = pelvis

    def add(lines):
        lines[0] += ",spacing_x,spacing_y,split"
        for k in range(1, len(lines)):
            lines[k] += ",0.2,0.3," + ("test" if k == 1 else "")

    _edit(root / "pelvis.csv", add)
    prepared = prepare_generic(str(root / "pelvis.csv"), "pelvis", val_fraction=0, test_fraction=0)
    assert prepared.counts() == {"training": 5, "validation": 0, "test": 1}
    assert prepared.splits["test"][0]["id"] == "images/p000.png" and prepared.splits["test"][0]["spacing"] == [0.2, 0.3]
    assert prepared.report["unit"] == "mm"


def test_json_with_null_landmarks_and_a_default_spacing(tmp_path, pelvis):
    root, points = pelvis
    items = [{"image": k, "landmarks": v.tolist()} for k, v in points.items()]
    items[0]["landmarks"][3] = None
    (root / "pelvis.json").write_text(json.dumps({"landmarks": 10, "spacing": [0.5, 0.5], "sdr_radii": [1, 2], "items": items}))
    prepared = prepare_generic(str(root / "pelvis.json"), "pelvis", test_fraction=0)
    assert prepared.spec["spacing"] == [0.5, 0.5] and prepared.spec["sdr_radii"] == [1.0, 2.0]
    assert prepared.spec["landmarks"][0] == "pelvis_1"
    first = next(it for s in prepared.splits.values() for it in s if it["id"] == "images/p000.png")
    assert first["landmarks"][3] is None
    items[1]["landmarks"][2] = [float("nan"), 3.0]
    (root / "pelvis.json").write_text(json.dumps({"landmarks": 10, "items": items}))
    with pytest.raises(PrepareError, match=r"pelvis\.json, items\[1\]: landmark coordinates must be finite"):
        prepare_generic(str(root / "pelvis.json"), "pelvis")


def test_dicom_images_take_their_spacing_from_the_header(tmp_path):
    dicom_image(str(tmp_path / "a.dcm"), (30, 40), "DX", spacing=(0.3, 0.2))
    dicom_image(str(tmp_path / "b.dcm"), (30, 40), "OT", no_spacing=True)
    (tmp_path / "knee.csv").write_text("image,top_x,top_y\na.dcm,3,4\n")
    assert prepare_generic(str(tmp_path / "knee.csv"), "knee").report["unit"] == "mm"
    (tmp_path / "knee.csv").write_text("image,top_x,top_y\na.dcm,3,4\nb.dcm,5,6\n")
    with pytest.raises(PrepareError, match=r"mixed units: .*line 2 has a spacing \(mm\), .*line 3 has none"):
        prepare_generic(str(tmp_path / "knee.csv"), "knee")


def _cell(row: int, col: int, value: str):
    """An edit of the CSV's lines: cell ``col`` of line ``row + 1`` set to ``value``."""

    def change(lines):
        cells = lines[row].split(",")
        cells[col] = value
        lines[row] = ",".join(cells)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda lines: lines.__setitem__(3, lines[3] + ",1"), r"line 4: 22 values, expected 21"),
        (_cell(2, 1, "nan"), r"line 3: value 1 is 'nan'"),
        (_cell(2, 4, ""), r"line 3: landmark\(s\) \[2\] have only one coordinate"),
        (_cell(2, 1, "900"), r"line 3: landmark 1 at \(900\.00, .* is outside the 50x40 image"),
        (_cell(2, 0, "images/p099.png"), r"line 3: image file .*p099\.png: does not exist"),
        (lambda lines: lines.append(lines[2]), r"line 8: image images/p001\.png is listed twice \(also at .*line 3\)"),
        (_cell(0, 2, "left_asis_z"), r"line 1: landmark columns must come in pairs"),
    ],
)
def test_bad_input_names_file_and_line(pelvis, change, message):
    root, _ = pelvis
    _edit(root / "pelvis.csv", change)
    with pytest.raises(PrepareError, match=r"pelvis\.csv, " + message):
        prepare_generic(str(root / "pelvis.csv"), "pelvis")


def test_cli_writes_nothing_on_bad_input_and_merges_on_good(pelvis, tmp_path, capsys):
    root, _ = pelvis
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"prepare generic: prepare: anatomy 'pelvis': 'size' must be \[W, H\] with both divisible by 16"):
        prepare_main(["generic", "--raw", str(root / "pelvis.csv"), "--out", str(out), "--anatomy", "pelvis", "--size", "50", "64"])
    assert not out.exists()
    prepare_main(["generic", "--raw", str(root / "pelvis.csv"), "--out", str(out), "--anatomy", "pelvis", "--size", "64", "64"])
    prepare_main(["generic", "--raw", str(root / "pelvis.csv"), "--out", str(out), "--anatomy", "pelvis2", "--spacing", "0.1", "0.2"])
    data = json.load(open(out / "datalist.json"))
    assert list(data["anatomies"]) == ["pelvis", "pelvis2"] and data["anatomies"]["pelvis2"]["spacing"] == [0.1, 0.2]
    assert sum(len(data[s]) for s in ("training", "validation", "test")) == 12
    assert "unit: mm" in capsys.readouterr().out


def test_the_docs_worked_example(tmp_path):
    text = open(os.path.join(BUNDLE, "docs", "data.md")).read()
    block = text.split("Pelvis, 10 landmarks, measured in pixels:\n\n```\n")[1].split("```")[0]
    (tmp_path / "pelvis.csv").write_text(block)
    (tmp_path / "images").mkdir()
    for name in ("p001", "p002"):
        Image.fromarray(np.zeros((1600, 2048), np.uint8)).save(tmp_path / "images" / f"{name}.png")
    prepared = prepare_generic(str(tmp_path / "pelvis.csv"), "pelvis", test_fraction=0.5, val_fraction=0)
    assert len(prepared.spec["landmarks"]) == 10 and prepared.report["unit"] == "px"
    p002 = next(it for s in prepared.splits.values() for it in s if it["id"] == "images/p002.png")
    assert p002["landmarks"][8] is None and p002["landmarks"][9] == [1281.0, 1502.0]
