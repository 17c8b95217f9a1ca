"""Atomic writes (all or nothing, ordinary file mode) and image file names."""

import json
import os
import stat

import numpy as np
import pytest

from scripts.files import atomic_folder, atomic_path, image_stem, write_json_atomic, write_text_atomic


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "report.md")
    write_text_atomic("first", path)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")
    assert open(path).read() == "first" and os.listdir(tmp_path) == ["report.md"]


def test_atomic_files_get_the_mode_of_a_new_file_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic("x", str(tmp_path / "a.txt"))
        os.umask(0o027)
        write_json_atomic({"a": 1}, str(tmp_path / "b.json"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o640


def test_json_is_strict_with_unknown_values_as_null(tmp_path):
    path = str(tmp_path / "m.json")
    write_json_atomic({"MRE": np.float64("nan"), "SDR": {"2": 50.0}, "xs": [1.0, float("inf")]}, path)
    assert json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}")) == {
        "MRE": None, "SDR": {"2": 50.0}, "xs": [1.0, None]
    }  # fmt: skip


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "demo"
    with atomic_folder(str(out)) as tmp:
        open(os.path.join(tmp, "a.txt"), "w").write("first")
    with pytest.raises(RuntimeError), atomic_folder(str(out)) as tmp:
        open(os.path.join(tmp, "b.txt"), "w").write("half")
        raise RuntimeError("interrupted")
    assert os.listdir(out) == ["a.txt"] and os.listdir(tmp_path) == ["demo"]
    with atomic_folder(str(out)) as tmp:
        open(os.path.join(tmp, "c.txt"), "w").write("second")
    assert os.listdir(out) == ["c.txt"] and os.listdir(tmp_path) == ["demo"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "path, stem",
    [
        ("/data/a.nii.gz", "a"),
        ("b.NII.GZ", "b"),
        ("c.nii", "c"),
        ("dir.v2/001.bmp", "001"),
        ("scan.v2.dcm", "scan.v2"),
        ("x.mhd", "x"),
        ("archive.tar.gz", "archive.tar"),
        ("plain", "plain"),
    ],
)
def test_image_stem_strips_the_whole_image_suffix(path, stem):
    assert image_stem(path) == stem
