"""The datalist format and its bad-input errors: each names the file and the problem."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from scripts.datalist import DatalistError, inference_items, load_anatomies, load_datalist


@pytest.fixture()
def folder(tmp_path):
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "a.png")  # 30 wide, 40 high
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def _write(folder, items, anatomies=None):
    data = {
        "anatomies": anatomies or {"knee": {"landmarks": ["a", "b"], "size": [32, 32], "spacing": [0.2, 0.3]}},
        "training": items,
    }
    path = folder / "datalist.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_valid_items_are_resolved(folder):
    path = _write(folder, [{"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [29, 39]]}])
    (item,) = load_datalist(path)
    assert item["image"] == os.path.join(str(folder), "a.png")
    assert item["domain"] == 0 and item["unit"] == "mm" and item["spacing"] == [0.2, 0.3]
    assert item["landmarks"].shape == (2, 2) and item["landmarks"].dtype == np.float32
    assert load_anatomies(path).names == ["knee"]


@pytest.mark.parametrize(
    "item,message",
    [
        ({"image": "broken.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]]}, r"broken\.png.*unreadable"),
        ({"image": "missing.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]]}, r"missing\.png.*does not exist"),
        ({"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2]]}, r"a\.png.*1 landmarks, but anatomy 'knee' has 2"),
        ({"image": "a.png", "anatomy": "elbow", "landmarks": [[1, 2], [3, 4]]}, r"a\.png.*unknown anatomy 'elbow'"),
        ({"image": "a.png", "anatomy": "knee", "landmarks": [[1, float("nan")], [3, 4]]}, r"a\.png.*landmark\(s\) \[1\] have only one coordinate"),
        ({"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [30, 4]]}, r"a\.png.*landmark 2 at \(30\.00, 4\.00\) is outside the 30x40 image"),
        ({"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]], "spacing": [0, 1]}, r"a\.png.*spacing must be"),
        ({"image": "a.png", "anatomy": "knee", "landmarks": [[None, None], [None, None]]}, r"a\.png.*every landmark is NaN"),
        ({"image": "a.png", "landmarks": [[1, 2], [3, 4]]}, r"a\.png.*no 'anatomy'"),
    ],
)
def test_bad_items_name_the_file_and_the_problem(folder, item, message):
    path = _write(folder, [item])
    with pytest.raises(DatalistError, match=message) as err:
        load_datalist(path)
    assert "datalist.json" in str(err.value) and "training[0]" in str(err.value)


def test_missing_landmark_is_allowed_and_kept_as_nan(folder):
    path = _write(folder, [{"image": "a.png", "anatomy": "knee", "landmarks": [None, [3, 4]]}])
    (item,) = load_datalist(path)
    assert np.isnan(item["landmarks"][0]).all() and item["landmarks"][1].tolist() == [3, 4]


def test_duplicate_images_and_bad_files(folder, tmp_path):
    item = {"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]]}
    with pytest.raises(DatalistError, match="listed twice"):
        load_datalist(_write(folder, [item, item]))
    with pytest.raises(DatalistError, match="no split 'test'"):
        load_datalist(_write(folder, [item]), "test")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatalistError, match=r"bad\.json: not valid JSON"):
        load_datalist(str(bad))
    with pytest.raises(DatalistError, match="size"):
        load_anatomies(_write(folder, [item], {"knee": {"landmarks": 2, "size": [30, 32]}}))


def test_inference_items_need_an_anatomy(folder):
    anatomies = load_anatomies(_write(folder, []))
    items = inference_items(anatomies, [str(folder / "a.png")], "knee")
    assert items[0]["domain"] == 0 and "landmarks" not in items[0]
    with pytest.raises(DatalistError, match="needs an anatomy"):
        inference_items(anatomies, [str(folder / "a.png")], None)
    with pytest.raises(DatalistError, match="unknown anatomy"):
        inference_items(anatomies, [str(folder / "a.png")], "hand")


def test_any_datalist_key_is_a_split_and_items_remember_theirs(folder):
    path = _write(folder, [])
    data = json.loads(open(path).read())
    data["test1"] = [{"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]]}]
    data["test2"] = [{"image": "b.png", "anatomy": "knee", "landmarks": [[5, 6], None]}]
    (folder / "datalist.json").write_text(json.dumps(data))
    items = load_datalist(path, ["test1", "test2"])
    assert [it["split"] for it in items] == ["test1", "test2"]
    with pytest.raises(DatalistError, match=r"datalist\.json: no split 'test'; its splits are \['training', 'test1', 'test2'\]"):
        load_datalist(path, ["test1", "test"])


def test_the_datalists_spacing_measures_its_images_whatever_the_checkpoints_anatomies(folder):
    from scripts.anatomies import AnatomySet

    path = _write(folder, [{"image": "a.png", "anatomy": "knee", "landmarks": [[1, 2], [3, 4]]}])
    trained_on = AnatomySet.from_dict({"knee": {"landmarks": ["a", "b"], "size": [64, 64], "spacing": [0.8, 0.8]}})
    (item,) = load_datalist(path, anatomies=trained_on)
    assert item["spacing"] == [0.2, 0.3] and item["size"] == [64, 64] and item["spacing_source"] == "anatomy"


def test_a_checkpoints_anatomies_take_the_evaluated_datalists_sdr_radii():
    from scripts.anatomies import AnatomySet

    trained = AnatomySet.from_dict({"hand": {"landmarks": 3, "size": [32, 32], "spacing": 0.1}, "chest": {"landmarks": 2, "size": [32, 32]}})
    data = AnatomySet.from_dict({"hand": {"landmarks": 3, "size": [64, 64], "sdr_radii": [2, 4, 10]}})
    measured = trained.with_radii_of(data)
    assert measured["hand"].sdr_radii == (2.0, 4.0, 10.0) and measured["hand"].size == (32, 32)
    assert measured["chest"].sdr_radii == (3.0, 6.0, 9.0) and measured.names == ["hand", "chest"]
