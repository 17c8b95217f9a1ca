"""End to end through `python -m monai.bundle`: train -> resume -> evaluate -> inference -> export, on a tiny set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import BUNDLE

BASE = "configs/inference.yaml"
TRAIN = "configs/train.yaml"  # stands alone, as the Model Zoo's train configs do
EVALUATE = "['configs/train.yaml','configs/evaluate.yaml']"  # a thin override of train


def bundle(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle ARGS` from the bundle folder, as the README does."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=900,
        # each workflow tracks to the SQLite store its config names under --output_dir, never a user's MLflow
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONWARNINGS": "ignore"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _mlflow(output_dir: str) -> tuple:
    """A client of ``output_dir/mlruns.db`` (its own: ``mlflow.set_tracking_uri`` would leak into later runs) and
    the runs of its ``gu2net`` experiment."""
    import mlflow

    client = mlflow.MlflowClient("sqlite:///" + os.path.join(output_dir, "mlruns.db"))
    return client, client.search_runs([client.get_experiment_by_name("gu2net").experiment_id])


@pytest.fixture(scope="module")
def with_missing(tiny_demo, tmp_path_factory) -> str:
    """The tiny demo with some landmarks not annotated (null) in every split: nothing may crash on them."""
    folder = tmp_path_factory.mktemp("missing")
    data = json.load(open(os.path.join(tiny_demo, "datalist.json")))
    for split in ("training", "validation", "test"):
        for k, item in enumerate(data[split][::3]):
            item["landmarks"][k % 6] = None
    os.symlink(os.path.join(tiny_demo, "images"), str(folder / "images"))
    (folder / "datalist.json").write_text(json.dumps(data))
    return str(folder)


@pytest.fixture(scope="module")
def trained(with_missing, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    common = ["--dataset_dir", with_missing, "--output_dir", out, "--val_interval", "1", "--batch_size", "2"]
    first = bundle("run", "training", "--config_file", TRAIN, "--max_epochs", "1", *common)
    second = bundle("run", "training", "--config_file", TRAIN, "--max_epochs", "2", *common)
    return {"out": out, "data": with_missing, "logs": (first.stdout + first.stderr, second.stdout + second.stderr)}


def test_one_training_iteration_with_missing_landmarks_is_finite(with_missing, tmp_path, monkeypatch):
    """A batch whose items miss landmarks: NaN survives augmentation, the loss skips it, the weights stay finite."""
    import torch
    from monai.bundle import ConfigParser

    monkeypatch.chdir(BUNDLE)  # train.yaml's macros name the base relative to the bundle folder
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, f) for f in ("configs/inference.yaml", "configs/train.yaml")])
    parser.update(
        {
            "dataset_dir": with_missing, "output_dir": str(tmp_path), "batch_size": 2, "max_epochs": 1,
            "framing_prob": 1.0, "rotate_prob": 1.0, "translate_prob": 1.0, "train#trainer#epoch_length": 1, "train#handlers": [],
            "train#datalist": f"$[d for d in scripts.load_datalist(@datalist, 'training', anatomies=@anatomies) if d['anatomy'] == 'chest'][:2]",
        }
    )  # fmt: skip
    items = parser.get_parsed_content("train#datalist")
    k = next(i for i, it in enumerate(items) if np.isnan(it["landmarks"]).any())
    sample = parser.get_parsed_content("train#dataset")[k]
    missing = np.isnan(items[k]["landmarks"]).any(1)
    assert torch.isnan(sample["landmarks"][0][missing]).all() and torch.isfinite(sample["landmarks"][0][~missing]).all()
    assert torch.isnan(sample["label"][missing]).all() and torch.isfinite(sample["label"][~missing]).all()
    # the network trains on plain tensors: MetaTensor dispatch on every op cost about a fifth of a CPU step
    assert type(sample["image"]) is torch.Tensor and type(sample["label"]) is torch.Tensor
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert np.isfinite(trainer.state.output[0]["loss"])
    assert all(torch.isfinite(p).all() for p in parser.get_parsed_content("network").parameters())


def test_training_writes_checkpoints_and_an_mlflow_run(trained):
    models = os.listdir(os.path.join(trained["out"], "models"))
    assert "model.pt" in models and "checkpoint_epoch=2.pt" in models
    _, runs = _mlflow(trained["out"])
    assert len(runs) == 2
    assert all({"val_mre", "train_loss", "epoch_loss", "val_mre_head_MRE"} <= set(r.data.metrics) for r in runs)
    assert {r.data.params["anatomies"] for r in runs} == {"head,hand,chest,pelvis"}
    from scripts import read_checkpoint

    for name in ("model.pt", "checkpoint_epoch=2.pt"):  # the anatomy recogniser, trained with the landmark model
        state = read_checkpoint(os.path.join(trained["out"], "models", name))["recognizer"]
        assert bool(state["fitted"]) and state["_extra_state"]["names"] == ["head", "hand", "chest", "pelvis"]


def test_second_run_resumes_after_the_first_epoch(trained):
    assert "Resumed from" in trained["logs"][1] and "checkpoint_epoch=1.pt" in trained["logs"][1]
    assert not any(n.startswith(".tmp_") for n in os.listdir(os.path.join(trained["out"], "models")))
    # one summary line per epoch (the epoch's mean loss): the second run trains epoch 2 only
    assert "Epoch[1] Metrics -- epoch_loss" not in trained["logs"][1]
    assert "Epoch[2] Metrics -- epoch_loss" in trained["logs"][1]
    # the recogniser is fitted once, in the first run; the second loads it with the rest
    assert "anatomy recogniser: " in trained["logs"][0] and "anatomy recogniser: " not in trained["logs"][1]


def test_the_best_model_keeps_its_score_across_the_restart(trained):
    """model.pt holds the lower val_mre of the two runs' validations: the second run compared against the first's."""
    from scripts import read_best_score

    _, runs = _mlflow(trained["out"])
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    best = read_best_score(os.path.join(trained["out"], "models", "model.pt"))
    assert best["metric"] == "val_mre"
    assert best["value"] == pytest.approx(min(first.data.metrics["val_mre"], second.data.metrics["val_mre"]))
    assert best["epoch"] == (1 if best["value"] == pytest.approx(first.data.metrics["val_mre"]) else 2)
    assert "best model so far" in trained["logs"][1]  # the restart read the score back


def test_evaluate_writes_the_report_and_logs_it_to_mlflow(trained):
    out = os.path.join(trained["out"], "eval")
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    bundle(
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", trained["data"], "--ckpt_path", ckpt,
        "--output_dir", out, "--eval_split", "['validation','test']",
    )
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["head"]["unit"] == "mm" and metrics["chest"]["unit"] == "px"
    assert set(metrics["head"]["SDR"]) == {"2", "2.5", "3", "4"} and set(metrics["pelvis"]["SDR"]) == {"3", "6", "9"}
    assert set(metrics["hand"]["SDR"]) == {"2", "4", "10"}
    assert len(metrics["hand"]["per_landmark_MRE"]) == 37 and metrics["hand"]["images"] == 4
    assert set(metrics["hand"]["per_split"]) == {"validation", "test"} and metrics["hand"]["per_split"]["test"]["images"] == 2
    assert np.isfinite(metrics["head"]["MRE"]) and metrics["_baseline_mean_shape"]["head"]["unit"] == "mm"
    data = json.load(open(os.path.join(trained["data"], "datalist.json")))
    nulls = sum(p is None for split in ("validation", "test") for it in data[split] for p in it["landmarks"])
    assert sum(v["missing_landmarks"] for k, v in metrics.items() if not k.startswith("_")) == nulls > 0
    assert metrics["_run"]["split"] == ["validation", "test"] and metrics["_run"]["decoder"] == "gaussian"
    rows = open(os.path.join(out, "predictions.csv")).read().splitlines()
    assert len(rows) == 1 + 4 * (19 + 37 + 6 + 10)
    assert rows[0].endswith(",review,mirrored") and all(r.split(",")[-2] in ("true", "false") for r in rows[1:])
    # the review flag's threshold was chosen on validation and saved with the checkpoint
    assert {"threshold", "recall", "precision"} <= set(metrics["head"]["review"]) and "mirrored_images" in metrics["head"]
    chosen = metrics["_run"]["review_thresholds"]
    assert "head 0." in chosen and "validation (recall >= 90 %" in chosen
    report = open(os.path.join(out, "report.md")).read()
    assert "## head" in report and "mean-shape baseline" in report and "### Worst cases" in report
    assert "## Anatomy recognition" in report
    recognition = metrics["_recognition"]  # the recogniser's confusion matrix on the same images
    assert recognition["labels"] == ["head", "hand", "chest", "pelvis"] and recognition["images"] == 16
    assert np.array(recognition["matrix"]).shape == (4, 5) and np.array(recognition["matrix"]).sum() == 16
    assert sorted(os.listdir(os.path.join(out, "figures"))) == [f"ced_{a}.png" for a in ("chest", "hand", "head", "pelvis")]
    assert len(os.listdir(os.path.join(out, "worst_cases"))) == 4 * 3
    client, (run,) = _mlflow(out)
    assert run.info.run_name.startswith("evaluate_") and run.data.metrics["test_mre"] == pytest.approx(
        np.exp(np.mean(np.log([metrics[a]["MRE"] for a in ("head", "hand", "chest", "pelvis")])))  # geometric mean
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "predictions.csv", "report.md", "figures", "worst_cases"} <= artifacts


def test_calibrating_rechooses_the_review_thresholds_on_a_labelled_split(trained, tmp_path):
    import csv
    import hashlib

    from scripts.review import ReviewThresholds, choose_review_threshold

    ckpt = os.path.join(trained["out"], "models", "model.pt")
    digest = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    out, calibrated = str(tmp_path / "calibration"), str(tmp_path / "model_site.pt")
    bundle(
        "run", "calibrating", "--config_file", EVALUATE[:-1] + ",'configs/calibrate_review.yaml']",
        "--dataset_dir", trained["data"], "--ckpt_path", ckpt, "--output_dir", out, "--eval_split", "test",
        "--calibrated_ckpt_path", calibrated, "--baseline", "False",
    )
    assert hashlib.sha256(open(ckpt, "rb").read()).hexdigest() == digest  # the trained checkpoint is untouched
    report = json.load(open(os.path.join(out, "review_calibration.json")))
    assert report["split"] == "test" and set(report["anatomies"]) == {"head", "hand", "chest", "pelvis"}
    thresholds = ReviewThresholds.from_checkpoint(calibrated)
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))  # the same images, as evaluation saw them
    rechosen = 0
    for anatomy, v in report["anatomies"].items():
        scored = [r for r in rows if r["anatomy"] == anatomy and r["error"] != ""]
        conf = np.array([float(r["confidence"]) for r in scored])
        errors = np.array([float(r["error"]) for r in scored])
        expected, _ = choose_review_threshold(conf, errors, v["after"]["radius"])  # the largest SDR radius
        if expected is None:  # nothing that far off: the checkpoint's threshold stays
            assert thresholds.threshold(anatomy) == pytest.approx(v["before"]["threshold"])
        else:
            assert thresholds.threshold(anatomy) == pytest.approx(expected, abs=1e-5) == v["after"]["threshold"]
            assert thresholds.source(anatomy).startswith("calibration on test")
            rechosen += 1
    assert rechosen >= 2  # an untrained model is far off on most anatomies
    assert torch.load(calibrated, weights_only=True).keys() == torch.load(ckpt, weights_only=True).keys()
    client, (run,) = _mlflow(out)  # the report is logged with the evaluation it was chosen on
    assert {"review_calibration.json", "predictions.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_inference_writes_original_space_json_and_overlay(trained):
    out = os.path.join(trained["out"], "infer")
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    image = os.path.join(trained["data"], "images", "hand", "hand_005.png")
    bundle(
        "run", "inference", "--config_file", BASE, "--ckpt_path", ckpt, "--output_dir", out,
        "--input_images", f"['{image}']", "--input_anatomy", "hand",
    )
    result = json.load(open(os.path.join(out, "hand_005.json")))
    assert result["anatomy"] == "hand" and result["image_size"] == {"width": 176, "height": 256}
    assert len(result["landmarks"]) == 37 and result["landmarks"][0]["name"] == "hand_1"
    xs = [p["x"] for p in result["landmarks"]]
    ys = [p["y"] for p in result["landmarks"]]
    assert min(xs) >= -0.5 and max(xs) <= 175.5 and min(ys) >= -0.5 and max(ys) <= 255.5
    assert all(0.0 < p["confidence"] < 1.0 for p in result["landmarks"])  # the peak of a product of two sigmoids
    assert all(p["review"] == (p["confidence"] < result["review_threshold"]) for p in result["landmarks"])
    assert result["mirrored"] in (True, False) and set(result["orientation_confidence"]) == {"as_given", "mirrored"}
    assert os.path.getsize(os.path.join(out, "hand_005_overlay.png")) > 0


def test_refining_trains_a_refiner_that_inference_and_evaluation_then_use(trained, tmp_path, monkeypatch):
    """configs/refine.yaml after training (in a copy of the run, so the other tests meet no refiner): refiner.pt
    beside model.pt, its MLflow run with the model logged again, refiner included; inference and that MLflow model
    refine the decoded points alike (JSON ``refined``; where they move to is tests/test_refinement.py's) and
    evaluation scores the refined ones."""
    import shutil

    run = str(tmp_path / "run")
    os.makedirs(os.path.join(run, "models"))
    ckpt = os.path.join(run, "models", "model.pt")
    shutil.copy(os.path.join(trained["out"], "models", "model.pt"), ckpt)
    bundle(
        "run", "refining", "--config_file", "['configs/train.yaml','configs/refine.yaml']", "--dataset_dir", trained["data"],
        "--output_dir", run, "--refine_epochs", "2", "--refine_samples", "2", "--refine_patch", "32",
    )
    assert os.path.isfile(os.path.join(run, "models", "refiner", "refiner.pt"))
    # the training images' layout, recorded for the scale at inference: every landmark of every image drawn
    state = torch.load(os.path.join(run, "models", "refiner", "refiner.pt"), weights_only=True)["refiner"]
    assert state["shape_count"].shape == (int(state["landmark_counts"].sum()),) and float(state["shape_count"].min()) > 0
    assert sorted(f for f in os.listdir(os.path.join(run, "models", "refiner")) if f.startswith("checkpoint_")) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]  # fmt: skip
    client, runs = _mlflow(run)
    (refine_run,) = [r for r in runs if r.info.run_name.startswith("refine_")]
    assert "models/refiner/refiner.pt" in {a.path for a in client.list_artifacts(refine_run.info.run_id, "models/refiner")}
    out = os.path.join(run, "infer")
    bundle(
        "run", "inference", "--config_file", BASE, "--ckpt_path", ckpt, "--output_dir", out,
        "--input_images", f"['{os.path.join(trained['data'], 'images', 'hand', 'hand_005.png')}']", "--input_anatomy", "hand",
    )  # fmt: skip
    result = json.load(open(os.path.join(out, "hand_005.json")))
    assert result["refined"] is True and len(result["landmarks"]) == 37
    assert 0.5 <= result["refine_scale"] <= 2.0
    xs, ys = np.array([[p["x"], p["y"]] for p in result["landmarks"]]).T
    assert np.isfinite(xs).all() and xs.min() >= -0.5 and xs.max() <= 175.5 and ys.min() >= -0.5 and ys.max() <= 255.5
    # the refining run logged the model again, with its refiner: loaded by MLflow, it answers as inference does
    import mlflow

    (output,) = client.get_run(refine_run.info.run_id).outputs.model_outputs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + os.path.join(run, "mlruns.db"))
    served = mlflow.pyfunc.load_model(f"models:/{output.model_id}").predict(
        [{"image": os.path.join(trained["data"], "images", "hand", "hand_005.png"), "anatomy": "hand"}]
    )[0]
    assert served["refined"] is True and served["mirrored"] == result["mirrored"]
    assert [(p["name"], p["review"]) for p in served["landmarks"]] == [(p["name"], p["review"]) for p in result["landmarks"]]
    served_xy = np.array([[p["x"], p["y"]] for p in served["landmarks"]])
    assert np.abs(served_xy - np.c_[xs, ys]).max() < 1e-4
    out = os.path.join(run, "eval")
    bundle(
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", trained["data"], "--ckpt_path", ckpt, "--output_dir", out,
        "--refine_shifts", "1",
    )  # fmt: skip
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["_run"]["refiner"].endswith(os.path.join("refiner", "refiner.pt")) and np.isfinite(metrics["hand"]["MRE"])
    assert metrics["_run"]["refine_adapt_scale"] is True and metrics["_run"]["refine_shifts"] == 1.0


def test_inference_without_an_anatomy_uses_the_recogniser_trained_with_the_model(trained):
    out = os.path.join(trained["out"], "infer_recognised")
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    images = [os.path.join(trained["data"], "images", a, f"{a}_{k:03d}.png") for a, k in (("hand", 5), ("chest", 6))]
    proc = bundle(
        "run", "inference", "--config_file", BASE, "--ckpt_path", ckpt, "--output_dir", out, "--input_images", json.dumps(images),
    )
    for anatomy, k in (("hand", 5), ("chest", 6)):
        result = json.load(open(os.path.join(out, f"{anatomy}_{k:03d}.json")))
        assert result["anatomy"] == anatomy and result["anatomy_recognized"] is True
        assert f"recognised as {anatomy} (p=" in proc.stdout


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    bundle(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", BASE,
        "--ckpt_path", ckpt,
    )
    ts = str(tmp_path / "model.ts")
    bundle(
        "ckpt_export", "network_def", "--filepath", ts, "--ckpt_file", ckpt, "--key_in_ckpt", "model",
        "--meta_file", "configs/metadata.json", "--config_file", BASE, "--ckpt_path", ckpt,
    )
    import torch

    sys.path.insert(0, BUNDLE)
    from scripts import AnatomySet, GU2Net, read_checkpoint

    net = GU2Net(AnatomySet.from_checkpoint(ckpt).landmark_counts).eval()
    net.load_state_dict(read_checkpoint(ckpt)["model"])
    exported = torch.jit.load(ts)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for d in range(net.num_domains):
            assert float((exported(x, d) - net(x, d)).abs().max()) < 1e-5


def landmarks(path: str) -> np.ndarray:
    return np.array([[p["x"], p["y"]] for p in json.load(open(path))["landmarks"]])


def test_inference_engines_and_exports_give_the_same_landmarks(trained, tmp_path):
    """Eager, the default engine, a ckpt_export TorchScript file and an export_onnx file: the same landmarks.

    Decoded by argmax: a barely trained network's flat peaks turn float rounding into sub-pixel shifts of
    ~0.01 px, while the peak pixels, and so the landmarks mapped back to the original image, must be equal.
    """
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    image = os.path.join(trained["data"], "images", "hand", "hand_005.png")
    common = ["--config_file", BASE, "--ckpt_path", ckpt, "--input_images", f"['{image}']", "--input_anatomy", "hand",
              "--decoder", "argmax"]
    ts, onnx_path = str(tmp_path / "model.ts"), str(tmp_path / "hand.onnx")
    bundle("ckpt_export", "network_def", "--filepath", ts, "--ckpt_file", ckpt, "--key_in_ckpt", "model",
           "--meta_file", "configs/metadata.json", "--config_file", BASE, "--ckpt_path", ckpt)
    bundle("run", "export_onnx", *common, "--onnx_path", onnx_path)
    runs = {
        "pytorch": ["--inference_engine", "pytorch"],
        "default": [],
        "torchscript_file": ["--exported_model", ts],
        "onnx_file": ["--exported_model", onnx_path],
    }
    found = {}
    for name, extra in runs.items():
        out = str(tmp_path / name)
        bundle("run", "inference", *common, "--output_dir", out, *extra)
        found[name] = landmarks(os.path.join(out, "hand_005.json"))
    for name, points in found.items():
        assert np.abs(points - found["pytorch"]).max() < 1e-4, name


def test_checkpoint_of_other_anatomies_is_refused(trained, tmp_path):
    data = json.load(open(os.path.join(trained["data"], "datalist.json")))
    data["anatomies"] = dict(reversed(list(data["anatomies"].items())))  # same anatomies, another order
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(trained["data"], "images"), str(other / "images"))
    (other / "datalist.json").write_text(json.dumps(data))
    ckpt = os.path.join(trained["out"], "models", "model.pt")
    proc = bundle(
        "run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(other), "--ckpt_path", ckpt,
        "--output_dir", str(tmp_path / "e"), "--anatomies", f"$scripts.load_anatomies('{other}/datalist.json')",
        check=False,
    )
    assert proc.returncode != 0 and "domains would be mixed up" in proc.stdout + proc.stderr
