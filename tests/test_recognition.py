"""Anatomy recognition: accuracy on the demo's test split, "unknown" for what is no anatomy, the checkpoint, and
inference without --input_anatomy through `python -m monai.bundle`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from scripts.checkpoints import CheckedCheckpointLoader
from scripts.datalist import load_anatomies, load_datalist
from scripts.datasets.demo import generate_demo
from scripts.datasets.outliers import write_no_anatomy_images
from scripts.gu2net import GU2Net
from scripts.recognition import (
    AnatomyRecognizer,
    evaluate_recognition,
    fit_recognizer,
    format_recognition_table,
    load_recognizer,
)
from test_workflows import BASE, bundle

STEPS = 150  # the workflows' default is 300; half suffices on the small demo and keeps the test quick


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    """A small demo, larger than the tiny one: 10 training, 4 validation and 6 test images per anatomy."""
    return generate_demo(str(tmp_path_factory.mktemp("rec") / "demo"), n_train=10, n_val=4, n_test=6, seed=11)


@pytest.fixture(scope="module")
def fitted(demo) -> AnatomyRecognizer:
    rec = AnatomyRecognizer(load_anatomies(demo))
    cal = fit_recognizer(rec, load_datalist(demo, "training"), load_datalist(demo, "validation"), steps=STEPS)
    assert cal["split"] == "validation" and cal["images"] == 16 and rec.is_fitted
    return rec


@pytest.fixture(scope="module")
def not_anatomies(tmp_path_factory) -> dict[str, str]:
    """White noise, a constant image, and a made-up natural photo: an RGB colour gradient with a disc, a box and a
    triangle (read through the bundle's grey conversion); plus a real photograph
    (matplotlib's sample, an out-of-family check: the recogniser's training outliers include none)."""
    return write_no_anatomy_images(str(tmp_path_factory.mktemp("not_anatomies")), seed=123)


def test_recognition_accuracy_on_the_demo_test_split(fitted, demo):
    section = evaluate_recognition(fitted, load_datalist(demo, "test"))
    assert section["images"] == 24 and section["labels"] == ["head", "hand", "chest", "pelvis"]
    assert section["accuracy"] >= 0.95, format_recognition_table(section)
    matrix = np.array(section["matrix"])
    assert matrix.shape == (4, 5) and matrix.sum(1).tolist() == [6, 6, 6, 6]
    assert "| true \\ recognised | head | hand | chest | pelvis | unknown |" in format_recognition_table(section)


@pytest.mark.parametrize("kind", ["noise", "constant", "photo", "real_photo"])
def test_what_is_no_anatomy_is_unknown_with_a_clear_message(fitted, not_anatomies, kind):
    rec = fitted.recognize_file(not_anatomies[kind])
    message = rec.message(fitted.names)
    assert not rec.known, f"{kind} taken for {rec.anatomy} (p={rec.probability:.2f}, distance {rec.distance:.1f})"
    assert message.startswith(f"{not_anatomies[kind]}: unknown anatomy: the image looks like none of head, hand, chest, pelvis (")
    if kind == "constant":
        assert "constant" in message
    else:
        assert f"best: {rec.best}, p=" in message and ("> threshold" in message or "< threshold" in message)


def test_recogniser_state_is_weights_only_and_tied_to_its_anatomies(fitted, demo, tmp_path):
    torch.save({"recognizer": fitted.state_dict()}, tmp_path / "r.pt")
    loaded = load_recognizer(str(tmp_path / "r.pt"))  # torch.load(weights_only=True) inside
    image = load_datalist(demo, "test")[0]["image"]
    a, b = fitted.recognize_file(image), loaded.recognize_file(image)
    assert a.anatomy == b.anatomy == "head" and a.probability == pytest.approx(b.probability)
    assert loaded.calibration["distance_threshold"] == pytest.approx(float(fitted.distance_threshold))
    with pytest.raises(ValueError, match="recogniser knows"):
        AnatomyRecognizer(["hand", "head", "chest", "pelvis"]).load_state_dict(fitted.state_dict())


def test_checkpoints_without_a_recogniser_still_load(fitted, demo, tmp_path):
    anatomies = load_anatomies(demo)
    net = GU2Net(anatomies.landmark_counts)
    torch.save({"model": net.state_dict(), "anatomies": anatomies.state_dict()}, tmp_path / "old.pt")
    recognizer = AnatomyRecognizer(anatomies)
    load = {"model": GU2Net(anatomies.landmark_counts), "anatomies": load_anatomies(demo), "recognizer": recognizer}
    CheckedCheckpointLoader(str(tmp_path / "old.pt"), load)(Engine(lambda e, b: None))  # e.g. resuming an old run
    assert not recognizer.is_fitted and "recognizer" in load
    with pytest.raises(ValueError, match="holds no trained anatomy recogniser.*--input_anatomy"):
        load_recognizer(str(tmp_path / "old.pt"))
    torch.save({"model": net.state_dict(), "anatomies": anatomies.state_dict(), "recognizer": fitted.state_dict()}, tmp_path / "new.pt")
    CheckedCheckpointLoader(str(tmp_path / "new.pt"), load)(Engine(lambda e, b: None))
    assert recognizer.is_fitted and torch.equal(recognizer.means, fitted.means)


def test_train_recognizer_adds_one_to_a_checkpoint_without_touching_the_rest(demo, tmp_path):
    from scripts.recognition import train_recognizer

    path = _checkpoint(tmp_path / "old.pt", demo)
    before = torch.load(path, weights_only=True)
    cal = train_recognizer(path, load_datalist(demo, "training"), load_datalist(demo, "validation"), steps=3)
    after = torch.load(path, weights_only=True)
    assert set(after) == {"model", "anatomies", "recognizer"} and after["anatomies"] == before["anatomies"]
    assert all(torch.equal(after["model"][k], v) for k, v in before["model"].items())
    assert load_recognizer(path).calibration["steps"] == cal["steps"] == 3
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def _checkpoint(path, demo, recognizer=None) -> str:
    """An untrained landmark network of the demo's anatomies (inference runs, whatever its landmarks), with or
    without the recogniser."""
    anatomies = load_anatomies(demo)
    ckpt = {"model": GU2Net(anatomies.landmark_counts).state_dict(), "anatomies": anatomies.state_dict()}
    if recognizer is not None:
        ckpt["recognizer"] = recognizer.state_dict()
    torch.save(ckpt, path)
    return str(path)


def test_inference_without_an_anatomy_recognises_each_image_and_skips_the_unknown(fitted, demo, not_anatomies, tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pt", demo, fitted)
    test = {os.path.basename(it["image"]): it for it in load_datalist(demo, "test")}
    images = [test["head_014.png"]["image"], test["pelvis_014.png"]["image"], not_anatomies["noise"]]
    out = str(tmp_path / "out")
    proc = bundle(
        "run", "inference", "--config_file", BASE, "--ckpt_path", ckpt, "--output_dir", out, "--inference_engine",
        "pytorch", "--input_images", json.dumps(images), check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    for name, anatomy in (("head_014", "head"), ("pelvis_014", "pelvis")):
        result = json.load(open(os.path.join(out, f"{name}.json")))
        assert result["anatomy"] == anatomy and result["anatomy_recognized"] is True, result
        assert result["anatomy_probability"] > 0.6 and len(result["landmarks"]) == len(load_anatomies(demo)[anatomy].landmarks)
    assert not os.path.exists(os.path.join(out, "noise.json"))
    # the unknown image is skipped like an unreadable one: listed, then the count as the last line
    lines = proc.stderr.rstrip().splitlines()
    assert f"skipped: {not_anatomies['noise']}: unknown anatomy: the image looks like none of" in "\n".join(lines[-3:]), log
    assert lines[-1].startswith("ERROR: 1 of 3 input image(s) skipped"), log


def test_a_checkpoint_without_a_recogniser_runs_inference_with_an_explicit_anatomy(demo, tmp_path):
    ckpt = _checkpoint(tmp_path / "old.pt", demo)
    image = load_datalist(demo, "test")[0]["image"]
    out = str(tmp_path / "out")
    bundle(
        "run", "inference", "--config_file", BASE, "--ckpt_path", ckpt, "--output_dir", out, "--inference_engine",
        "pytorch", "--input_images", json.dumps([image]), "--input_anatomy", "head",
    )
    result = json.load(open(os.path.join(out, os.path.basename(image)[:-4] + ".json")))
    assert result["anatomy"] == "head" and "anatomy_recognized" not in result
