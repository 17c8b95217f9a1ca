"""Tracking: artifacts keep their folders; an unreachable server fails (or falls back) within seconds at the start,
and a server that dies during training costs one warning, not the run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from ignite.engine import Engine, Events

from conftest import BUNDLE, last_line, run_bundle
from scripts import tracking
from scripts.tracking import MLFlowReportHandler, TrackingError, check_tracking, mlflow_handler, probe_tracking_uri

TRAIN = "configs/train.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def fresh_probes(monkeypatch):
    monkeypatch.setattr(tracking, "_PROBED", {})
    monkeypatch.setattr(tracking, "_FALLBACKS", {})
    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_server_that_never_answers_is_reported_within_the_probe_timeout():
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        reason = probe_tracking_uri(uri, timeout=1.0)
        assert reason is not None and time.monotonic() - start < 10
    assert probe_tracking_uri("sqlite:///somewhere/mlruns.db") is None  # only HTTP servers are probed


def test_an_unreachable_server_stops_the_run_unless_tracking_is_optional(tmp_path):
    settings = {
        "tracking_uri": f"http://127.0.0.1:{free_port()}", "experiment_name": "e", "run_name": "r",
        "fallback_uri": f"sqlite:///{tmp_path}/mlruns.db", "fallback_log": str(tmp_path / "fallback.jsonl"),
    }  # fmt: skip
    with pytest.raises(TrackingError, match=r"is unreachable .*--tracking_required false"):
        check_tracking({**settings, "required": True})
    assert check_tracking({**settings, "required": False}) == {
        "tracking_uri": settings["fallback_uri"], "experiment_name": "e", "run_name": "r",
    }  # fmt: skip
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # bounded retries for the calls that follow


def test_a_tracking_failure_mid_run_is_logged_once_and_the_metrics_go_to_the_fallback(tmp_path, caplog):
    settings = {
        "tracking_uri": f"sqlite:///{tmp_path}/mlruns.db", "experiment_name": "e", "run_name": "r",
        "fallback_log": str(tmp_path / "fallback.jsonl"),
    }  # fmt: skip
    handler = mlflow_handler(settings, iteration_log=False, close_on_complete=True)
    calls = {"n": 0}
    log_batch = handler.client.log_batch

    def dies_after_the_first_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # params at start, then epoch 1's metrics: then the server is gone
            raise ConnectionError("server gone")
        return log_batch(*args, **kwargs)

    handler.client.log_batch = dies_after_the_first_epoch
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def metric(e):
        e.state.metrics = {"val_mre": 10.0 / e.state.epoch}

    handler.attach(engine)
    with caplog.at_level("WARNING"):
        engine.run([0], max_epochs=4)  # no exception: the run goes on
    assert caplog.text.count("MLflow tracking to") == 1 and "server gone" in caplog.text
    records = [json.loads(line) for line in open(tmp_path / "fallback.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [2, 3, 4]
    assert records[-1]["values"] == {"val_mre": 2.5}


def test_training_against_an_unreachable_server_fails_fast_with_the_message_last(mini_demo, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    common = ["run", "training", "--config_file", TRAIN, "--dataset_dir", mini_demo, "--max_epochs", "1",
              "--val_interval", "1", "--batch_size", "2", "--tracking_uri", uri,
              "--recognizer_steps", "30", "--log_mlflow_model", "false"]  # neither is what this test is about
    proc = run_bundle(*common, "--output_dir", str(tmp_path / "required"))
    line = last_line(proc.stderr)
    assert proc.returncode == 1 and line.startswith(f"ERROR: MLflow tracking server {uri} is unreachable"), line
    assert float(line.split(" after ")[1].split(" s)")[0]) < 30  # the probe's time, well within 30 s
    assert not os.path.exists(tmp_path / "required" / "models")  # stopped before training
    # optional tracking: a warning, then the local store under output_dir, and the run trains
    out = tmp_path / "optional"
    proc = run_bundle(*common, "--output_dir", str(out), "--tracking_required", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tracking_required is false, so this run tracks to the local store" in proc.stdout + proc.stderr
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("gu2net").experiment_id])
    assert "val_mre" in run.data.metrics and os.path.isfile(out / "models" / "model.pt")


def _wait_for_health(uri: str, server: subprocess.Popen, limit_s: float = 300) -> None:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.read().strip() == b"OK":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {uri} did not answer /health within {limit_s} s")


def test_training_finishes_when_the_mlflow_server_is_killed_mid_run(mini_demo, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/db.sqlite",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    out = tmp_path / "run"
    try:
        _wait_for_health(uri, server)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        train = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--dataset_dir", mini_demo,
             "--output_dir", str(out), "--max_epochs", "3", "--val_interval", "1", "--batch_size", "2",
             "--tracking_uri", uri, "--recognizer_steps", "30"],
            cwd=BUNDLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**env, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        log = []
        for line in train.stdout:
            log.append(line)
            if server.poll() is None and "Saved checkpoint at epoch: 1" in line:
                os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, after epoch 1
                server.wait()
        assert train.wait(timeout=900) == 0, "".join(log)[-4000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = "".join(log)
    assert text.count("MLflow tracking to") == 1 and "the run goes on" in text
    assert sorted(os.listdir(out / "models")) == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt", "model.pt"]
    records = [json.loads(line) for line in open(out / "tracking_fallback.jsonl")]
    assert {r["step"] for r in records if "epoch_loss" in r.get("values", {})} == {2, 3}
    assert any(r["kind"] == "artifacts_not_uploaded" and "model.pt" in r["values"]["paths"] for r in records)


@pytest.fixture()
def run_dir(tmp_path):
    out = tmp_path / "eval"
    (out / "figures" / "deep").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "figures" / "ced.png").write_bytes(b"png")
    (out / "figures" / "deep" / "x.png").write_bytes(b"png")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.pt").write_bytes(b"pt")
    (tmp_path / "val_overlays").mkdir()
    (tmp_path / "val_overlays" / "head_1.png").write_bytes(b"png")
    return tmp_path


def _run_and_list(uri: str, experiment: str, **kwargs) -> set[str]:
    """Run a one-epoch engine with the handler attached; the artifact files its finished run holds."""
    handler = MLFlowReportHandler(
        tracking_uri=uri, experiment_name=experiment, run_name=f"{experiment}_test", experiment_param={"decoder": "gaussian"},
        iteration_log=False, close_on_complete=True, **kwargs,
    )  # fmt: skip
    engine = Engine(lambda e, b: b)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    found, folders = set(), [None]
    while folders:
        for a in client.list_artifacts(run.info.run_id, folders.pop()):
            (folders.append(a.path) if a.is_dir else found.add(a.path))
    assert run.data.params["decoder"] == "gaussian" and run.info.status == "FINISHED"
    return found


def test_files_and_folders_keep_their_place_relative_to_the_root(run_dir):
    out = run_dir / "eval"
    artifacts = [str(out / "metrics.json"), str(out / "figures"), str(out / "missing.md"),
                 str(run_dir / "elsewhere" / "model.pt"), str(run_dir / "val_overlays")]  # fmt: skip
    logged = _run_and_list("sqlite:///" + str(run_dir / "mlruns.db"), "eval", artifacts=artifacts, artifact_root=str(out))
    assert logged == {"metrics.json", "figures/ced.png", "figures/deep/x.png", "model.pt", "val_overlays/head_1.png"}


def test_without_a_root_files_go_to_the_top_and_folders_under_their_name(run_dir):
    artifacts = [str(run_dir / "elsewhere" / "model.pt"), str(run_dir / "val_overlays")]
    logged = _run_and_list("sqlite:///" + str(run_dir / "mlruns.db"), "train", artifacts=artifacts)
    assert logged == {"model.pt", "val_overlays/head_1.png"}
