"""Inputs checked before a run: one bad image is skipped (named, exit 1), unique output names, no untrained
anatomy and no empty validation in training, no ambiguous inference input."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import last_line, run_bundle
from scripts import durable
from scripts.datalist import DatalistError, load_anatomies, load_datalist
from scripts.inputs import InputError, check_training_data, inference_inputs, output_names


def test_output_names_are_unique_per_input():
    assert output_names(["/d/a.png", "/d/b.dcm"]) == (["a", "b"], "")  # no repeat: the file name, as before
    names, note = output_names(["/x/a/scan.png", "/x/b/scan.png", "/x/b/other.png"])
    assert names == ["a/scan", "b/scan", "b/other"] and "keep the inputs' folders below /x" in note
    names, note = output_names(["/p1/image.dcm", "/p2/image.dcm", "/p3/image.dcm"])
    assert names == ["p1/image", "p2/image", "p3/image"]
    names, note = output_names(["/d/full.png", "/d/full.jpg", "/d/ct.nii.gz", "/d/ct.nii"])
    assert names == ["full_png", "full_jpg", "ct_nii_gz", "ct_nii"] and "extension" in note


@pytest.fixture(scope="module")
def bad_inputs(tiny_demo, tmp_path_factory) -> dict[str, str]:
    """Good images whose names repeat, and one of each bad kind."""
    folder = tmp_path_factory.mktemp("inputs")
    head = os.path.join(tiny_demo, "images", "head", "head_000.png")
    files = {}
    for name in ("a/scan.png", "b/scan.png", "full.png"):
        os.makedirs(folder / os.path.dirname(name), exist_ok=True)
        shutil.copy(head, folder / name)
        files[name] = str(folder / name)
    Image.open(head).save(folder / "full.jpg", quality=95)
    files["full.jpg"] = str(folder / "full.jpg")
    png, jpg = (folder / "full.png").read_bytes(), (folder / "full.jpg").read_bytes()
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])  # ITK reads it as a half-grey image, silently
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(folder / "one.png")
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(folder / "eight.png")
    for name in ("cut.png", "cut.jpg", "one.png", "eight.png", "missing.png"):
        files[name] = str(folder / name)
    return files


GOOD = ("a/scan.png", "b/scan.png", "full.png", "full.jpg")
BAD = {
    "cut.png": "pixel data cannot be decoded",
    "cut.jpg": "pixel data cannot be decoded",
    "one.png": "1x1 pixels, below the minimum of 32",
    "eight.png": "8x8 pixels, below the minimum of 32",
    "missing.png": "does not exist",
}


def test_bad_images_are_skipped_with_their_names(bad_inputs, tiny_demo):
    anatomies = load_anatomies(os.path.join(tiny_demo, "datalist.json"))
    images = [bad_inputs[n] for n in (*GOOD[:2], *BAD, *GOOD[2:])]
    items = inference_inputs(anatomies, images, "head")
    assert [it["image"] for it in items] == [bad_inputs[n] for n in GOOD]
    assert [it["output_name"] for it in items] == ["a/scan", "b/scan", "full_png", "full_jpg"]
    assert len(items.problems) == len(BAD)
    for name, why in BAD.items():
        assert any(bad_inputs[name] in problem and why in problem for problem in items.problems), name
    with pytest.raises(DatalistError, match=r"missing\.png: does not exist"):  # headers are checked first
        inference_inputs(anatomies, images, "head", stop_on_error="true")  # as the command line passes it
    with pytest.raises(InputError, match=r"cut\.png: its pixel data cannot be decoded"):
        inference_inputs(anatomies, [bad_inputs[n] for n in ("full.png", "cut.png", "one.png")], "head", stop_on_error=True)
    with pytest.raises(InputError, match="no input image can be used"):
        inference_inputs(anatomies, [bad_inputs["one.png"]], "head")
    with pytest.raises(DatalistError, match="unknown anatomy"):  # the same for every image: stops the run
        inference_inputs(anatomies, images, "skull")


def test_an_anatomy_without_images_is_refused_not_run_on_every_anatomy(tiny_demo):
    datalist = os.path.join(tiny_demo, "datalist.json")
    anatomies = load_anatomies(datalist)
    with pytest.raises(InputError, match=r"--input_anatomy head was given without input images"):
        inference_inputs(anatomies, [], "head", datalist, "test")
    assert len(inference_inputs(anatomies, [], None, datalist, "test")) == 8  # the whole split, said in the log


def test_untrained_anatomies_and_an_empty_validation_are_refused(tiny_demo):
    datalist = os.path.join(tiny_demo, "datalist.json")
    anatomies = load_anatomies(datalist)
    training = load_datalist(datalist, "training")
    validation = load_datalist(datalist, "validation")
    check_training_data(datalist, anatomies, training, validation)
    no_pelvis = [it for it in training if it["anatomy"] != "pelvis"]
    with pytest.raises(DatalistError, match=r"anatomy 'pelvis' is declared in 'anatomies' but has no item in 'training'"):
        check_training_data(datalist, anatomies, no_pelvis, validation)
    with pytest.raises(DatalistError, match=r"'validation' is empty"):
        check_training_data(datalist, anatomies, training, [])


@pytest.fixture(scope="module")
def random_model(tiny_demo, tmp_path_factory) -> str:
    """An untrained network's checkpoint for the tiny demo's anatomies: inference runs on it without training."""
    from scripts.gu2net import GU2Net

    anatomies = load_anatomies(os.path.join(tiny_demo, "datalist.json"))
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    torch.save({"model": GU2Net(anatomies.landmark_counts).state_dict(), "anatomies": anatomies.state_dict()}, path)
    return str(path)


def test_inference_skips_each_bad_image_writes_the_others_and_exits_1(bad_inputs, random_model, tmp_path):
    images = [bad_inputs[n] for n in (*GOOD, *BAD)]
    out = tmp_path / "out"
    proc = run_bundle(
        "run", "inference", "--config_file", "configs/inference.yaml", "--ckpt_path", random_model,
        "--input_images", json.dumps(images), "--input_anatomy", "head", "--output_dir", str(out),
    )  # fmt: skip
    line = last_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith("ERROR: 5 of 9 input image(s) skipped"), proc.stderr[-3000:]
    for name, why in BAD.items():
        assert any(bad_inputs[name] in x and why in x for x in proc.stderr.splitlines() if x.startswith("skipped: "))
    written = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs if f[0] != ".")
    assert written == sorted(
        f"{n}{s}" for n in ("a/scan", "b/scan", "full_png", "full_jpg") for s in (".json", "_overlay.png")
    )
    assert json.load(open(out / "b" / "scan.json"))["image"] == bad_inputs["b/scan.png"]
    assert json.load(open(out / "full_jpg.json"))["image"] == bad_inputs["full.jpg"]
    assert "outputs keep the inputs' folders" in proc.stdout
    # every file the run leaves has the same, ordinary mode (the JSON was 0600 while overlays were 0644)
    modes = {stat.S_IMODE(os.stat(out / f).st_mode) for f in ("full_png.json", "full_png_overlay.png")}
    assert modes == {durable.default_file_mode()}


def test_inference_stops_at_the_first_bad_image_when_asked(bad_inputs, random_model, tmp_path):
    images = [bad_inputs[n] for n in ("full.png", "cut.png", "one.png")]
    proc = run_bundle(
        "run", "inference", "--config_file", "configs/inference.yaml", "--ckpt_path", random_model,
        "--input_images", json.dumps(images), "--input_anatomy", "head", "--output_dir", str(tmp_path / "out"),
        "--stop_on_error", "true",
    )  # fmt: skip
    assert proc.returncode == 1
    assert last_line(proc.stderr) == (
        f"ERROR: image file {bad_inputs['cut.png']}: its pixel data cannot be decoded (image file is truncated); "
        "the file is truncated or damaged."
    )
    assert not os.path.exists(tmp_path / "out" / "full.json")
