"""MLflow artifacts keep their folders: files and folders under the root in place, others at the top."""

from __future__ import annotations

import mlflow
import pytest
from ignite.engine import Engine

from scripts.tracking import MLFlowReportHandler


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
