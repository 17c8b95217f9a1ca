"""DICOM spacing: PixelSpacing, else ImagerPixelSpacing, per axis, read through ITK; a datalist value overrides it."""

from __future__ import annotations

import json

import pytest

from official_layouts import dicom_image
from scripts.datalist import load_datalist
from scripts.image_io import read_image_header


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    dicom_image(str(root / "dx.dcm"), (30, 40), "DX", spacing=(0.3, 0.2))  # ImagerPixelSpacing only
    dicom_image(str(root / "cr.dcm"), (30, 40), "CR", tags={"0028|0030": "0.5\\0.4"})  # both tags, rows 0.5
    dicom_image(str(root / "ot.dcm"), (30, 40), "OT", no_spacing=True)
    return root


def test_header_spacing_per_axis_and_tag_preference(dicoms):
    dx = read_image_header(str(dicoms / "dx.dcm"))
    assert dx.dicom_spacing == pytest.approx((0.3, 0.2)) and dx.dicom_spacing_tag == "ImagerPixelSpacing"
    cr = read_image_header(str(dicoms / "cr.dcm"))  # "row\column" = (sy, sx): PixelSpacing wins over the imager's
    assert cr.dicom_spacing == pytest.approx((0.4, 0.5)) and cr.dicom_spacing_tag == "PixelSpacing"
    assert read_image_header(str(dicoms / "ot.dcm")).dicom_spacing is None


def test_datalist_spacing_order(dicoms):
    items = [
        {"image": "cr.dcm", "anatomy": "knee", "landmarks": [[1, 2]]},
        {"image": "dx.dcm", "anatomy": "knee", "landmarks": [[1, 2]], "spacing": [0.7, 0.9]},
        {"image": "ot.dcm", "anatomy": "knee", "landmarks": [[1, 2]]},
    ]
    path = dicoms / "datalist.json"
    path.write_text(json.dumps({"anatomies": {"knee": {"landmarks": 1, "size": [32, 32]}}, "training": items}))
    cr, dx, ot = load_datalist(str(path))
    assert cr["spacing"] == pytest.approx([0.4, 0.5]) and cr["unit"] == "mm" and cr["spacing_source"] == "DICOM PixelSpacing"
    assert dx["spacing"] == [0.7, 0.9] and dx["spacing_source"] == "datalist item"
    assert ot["unit"] == "px" and ot["spacing_source"] == "none (pixels)"
