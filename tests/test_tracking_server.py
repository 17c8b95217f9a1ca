"""A shared tracking server: a real `mlflow server` on 127.0.0.1 (SQLite store, temporary artifact root).

Training and evaluation log to it with --tracking_uri; its REST API shows the run, its parameters, the
per-anatomy metrics and the logged model; the registered model loads with `mlflow.pyfunc.load_model` and,
served by `mlflow models serve`, answers landmark requests over HTTP with the landmarks of `run inference`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import BUNDLE

MODEL_NAME = "gu2net_ci"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(cmd: list[str], log: str, ready_url: str, timeout: float, env: dict | None = None):
    """Run ``cmd`` in its own process group until the block ends; wait until ``ready_url`` answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{cmd[:4]} did not start ({proc.poll()=}):\n{open(log).read()[-4000:]}")
                time.sleep(1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def bundle(*args: str, env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def rest(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """The server's REST API (GET with ``query``, or POST ``body``)."""
    full = url + endpoint + ("?" + urllib.parse.urlencode(query) if query else "")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=60))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with background(cmd, str(folder / "server.log"), url + "/health", timeout=240, env=env):
        yield url


@pytest.fixture(scope="module")
def tracked(server, tiny_demo, tmp_path_factory) -> dict:
    """One short training epoch and an evaluation against the server; the model registered as MODEL_NAME."""
    out = str(tmp_path_factory.mktemp("tracked"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "PYTHONWARNINGS": "ignore"}
    common = ["--dataset_dir", tiny_demo, "--tracking_uri", server, "--batch_size", "2"]
    bundle(
        "run", "training", "--config_file", "configs/train.yaml", "--output_dir", out, "--max_epochs", "1",
        "--val_interval", "1", "--registered_model_name", MODEL_NAME, *common, env=env,
    )  # fmt: skip
    ckpt = os.path.join(out, "models", "model.pt")
    bundle(
        "run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", "--ckpt_path", ckpt,
        "--output_dir", os.path.join(out, "eval"), *common, env=env,
    )  # fmt: skip
    image = os.path.join(tiny_demo, "images", "hand", "hand_005.png")
    bundle(
        "run", "inference", "--config_file", "configs/inference.yaml", "--ckpt_path", ckpt, "--input_images",
        f"['{image}']", "--input_anatomy", "hand", "--output_dir", os.path.join(out, "infer"), env=env,
    )  # fmt: skip
    reference = json.load(open(os.path.join(out, "infer", "hand_005.json")))
    return {"url": server, "out": out, "image": image, "reference": reference, "env": env}


def runs_named(url: str, prefix: str) -> list[dict]:
    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="gu2net")["experiment"]
    runs = rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    return [r for r in runs if r["info"]["run_name"].startswith(prefix)]


def points(result: dict) -> np.ndarray:
    return np.array([[p["x"], p["y"], p["confidence"]] for p in result["landmarks"]])


def test_training_run_params_metrics_and_model_on_the_server(tracked):
    url = tracked["url"]
    (run,) = runs_named(url, "train_")
    run_id = run["info"]["run_id"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["anatomies"] == "head,hand,chest,pelvis" and params["batch_size"] == "2"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"train_loss", "epoch_loss", "val_mre"} <= metrics
    assert {f"val_mre_{a}_MRE" for a in ("head", "hand", "chest", "pelvis")} <= metrics
    files = {f["path"] for f in rest(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id)["files"]}
    # the checkpoint and the validation overlays keep their folders under output_dir (MLFlowReportHandler)
    assert {"models", "val_overlays"} <= files
    models = {f["path"] for f in rest(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="models")["files"]}
    assert "models/model.pt" in models
    # the MLflow model: logged from the run, with its files on the server's artifact store, registered
    (output,) = run["outputs"]["model_outputs"]
    model = rest(url, f"/api/2.0/mlflow/logged-models/{output['model_id']}")["model"]["info"]
    assert model["source_run_id"] == run_id and model["status"] == "LOGGED_MODEL_READY"
    listing = rest(url, f"/api/2.0/mlflow/logged-models/{output['model_id']}/artifacts/directories")["files"]
    assert {"MLmodel", "artifacts", "code", "serving_input_example.json"} <= {f["path"] for f in listing}
    version = rest(url, "/api/2.0/mlflow/model-versions/get", name=MODEL_NAME, version="1")["model_version"]
    assert version["run_id"] == run_id and version["status"] == "READY"


def test_evaluation_run_on_the_server(tracked):
    url = tracked["url"]
    (run,) = runs_named(url, "evaluate_")
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert "test_mre" in metrics and "test_mre_pelvis_MRE" in metrics
    files = {f["path"] for f in rest(url, "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"])["files"]}
    assert {"metrics.json", "report.md", "predictions.csv"} <= files


def test_registered_model_loads_and_gives_the_inference_landmarks(tracked, monkeypatch):
    import mlflow
    from PIL import Image

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["url"])  # read per call: nothing global is left set
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    pixels = np.asarray(Image.open(tracked["image"])).tolist()  # H x W, as PIL and numpy give it
    by_path, by_array = model.predict([{"image": tracked["image"], "anatomy": "hand"}, {"image": pixels, "anatomy": "hand"}])
    reference = points(tracked["reference"])
    assert by_path["image_size"] == tracked["reference"]["image_size"] == by_array["image_size"]
    assert [p["name"] for p in by_path["landmarks"]] == [p["name"] for p in tracked["reference"]["landmarks"]]
    assert np.abs(points(by_path) - reference).max() < 1e-4 and np.abs(points(by_array) - reference).max() < 1e-4
    # the inference JSON's other fields alike: the review flags, the orientation, no refiner (none was trained)
    for key in ("mirrored", "refined", "review_threshold", "landmarks_to_review", "spacing"):
        assert by_path[key] == tracked["reference"][key], key
    assert [p["review"] for p in by_path["landmarks"]] == [p["review"] for p in tracked["reference"]["landmarks"]]


def test_served_model_answers_landmark_requests_over_http(tracked, tmp_path):
    from PIL import Image

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}/1", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    env = {**tracked["env"], "MLFLOW_TRACKING_URI": tracked["url"]}
    with background(cmd, str(tmp_path / "serve.log"), url + "/ping", timeout=300, env=env):
        pixels = np.asarray(Image.open(tracked["image"])).tolist()
        body = {"dataframe_records": [{"image": tracked["image"], "anatomy": "hand"}, {"image": pixels, "anatomy": "hand"}]}
        request = urllib.request.Request(
            url + "/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        predictions = json.load(urllib.request.urlopen(request, timeout=300))["predictions"]
        bad = dict(body, dataframe_records=[{"image": tracked["image"], "anatomy": "knee"}])
        request = urllib.request.Request(url + "/invocations", data=json.dumps(bad).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=120)
    assert refused.value.code == 400
    reference = points(tracked["reference"])
    assert len(predictions) == 2 and predictions[1]["image"] == "array 176x256"
    for result in predictions:
        assert result["anatomy"] == "hand" and np.abs(points(result) - reference).max() < 1e-4
