"""The evaluation report: every file is there, and every figure can be recomputed from predictions.csv."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from scripts.anatomies import Anatomy, AnatomySet
from scripts.metrics import LandmarkErrorMetric
from scripts.reports import EvaluationReport
from scripts.tracking import MLFlowReportHandler

ANATOMIES = AnatomySet(
    [
        Anatomy("skull", ("sella", "nasion", "menton"), (32, 32), (0.1, 0.2), (2.0, 4.0)),
        Anatomy("lung", ("top", "bottom"), (32, 32), None, (3.0, 6.0, 9.0)),
    ]
)


def _item(path: str, anatomy: str, pred, true, split: str, conf) -> dict:
    spacing, unit = ([0.1, 0.2], "mm") if anatomy == "skull" else ([1.0, 1.0], "px")
    return {"spacing_source": "anatomy" if anatomy == "skull" else "none (pixels)",
        "image": path, "anatomy": anatomy, "split": split, "pred_landmarks": np.asarray(pred, float),
        "landmarks_original": np.asarray(true, float), "spacing": spacing, "unit": unit,
        "pred_confidence": np.asarray(conf, float),
    }  # fmt: skip


@pytest.fixture()
def evaluated(tmp_path):
    """Three skull images over two splits (one landmark not annotated) and one lung image, known errors."""
    paths = []
    for i in range(4):
        p = str(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((40, 50), 60 * i, np.uint8)).save(p)  # 50 wide, 40 high
        paths.append(p)
    items = [
        # errors (mm): (10 px * 0.1) = 1, (10 px * 0.2) = 2, missing
        _item(paths[0], "skull", [[10, 10], [20, 20], [30, 30]], [[20, 10], [20, 30], [None, None]], "test1", [0.9, 0.8, 0.1]),
        # 3 and 5 mm, 0
        _item(paths[1], "skull", [[0, 0], [0, 0], [5, 5]], [[30, 0], [0, 25], [5, 5]], "test2", [0.5, 0.4, 0.99]),
        _item(paths[2], "skull", [[1, 1], [1, 1], [1, 1]], [[1, 1], [1, 1], [1, 1]], "test2", [1.0, 1.0, 1.0]),
        # px: 5 and 0
        _item(paths[3], "lung", [[0, 0], [9, 9]], [[3, 4], [9, 9]], "test1", [0.7, 0.6]),
    ]
    metric = LandmarkErrorMetric(ANATOMIES)
    metric.update([{**it, "landmarks_original": np.array([[np.nan if v is None else v for v in p] for p in it["landmarks_original"].tolist()])} for it in items])
    metric.compute()
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from scripts.landmark_transforms import ToGray2Dd

    loader = Compose([LoadImaged("image", reader="ITKReader", image_only=True), EnsureChannelFirstd("image"), ToGray2Dd("image")])
    baseline = {"skull": {"unit": "mm", "MRE": 9.0, "STD": 1.0, "median": 9.0, "SDR": {"2": 0.0, "4": 0.0}}}
    out = str(tmp_path / "eval")
    report = EvaluationReport(
        metric, ANATOMIES, out, baseline=baseline, run_info={"decoder": "gaussian", "split": ["test1", "test2"]},
        image_loader=loader, worst_count=2,
    )  # fmt: skip
    return report, out


def test_report_files_and_known_figures(evaluated):
    report, out = evaluated
    metrics = report.write()
    assert json.load(open(os.path.join(out, "metrics.json"))) == json.loads(json.dumps(metrics))
    skull = metrics["skull"]
    assert skull["spacing_source"] == "anatomy" and metrics["lung"]["spacing_source"] == "none (pixels)"
    assert skull["unit"] == "mm" and skull["images"] == 3 and skull["count"] == 8 and skull["missing_landmarks"] == 1
    assert skull["MRE"] == pytest.approx((1 + 2 + 3 + 5 + 0 + 0 + 0 + 0) / 8)
    assert skull["SDR"] == {"2": pytest.approx(75.0), "4": pytest.approx(87.5)}
    assert skull["per_split"]["test1"]["MRE"] == pytest.approx(1.5) and skull["per_split"]["test2"]["images"] == 2
    assert skull["per_landmark"]["menton"] == {"MRE": 0.0, "STD": 0.0, "median": 0.0, "SDR": {"2": 100.0, "4": 100.0}, "count": 2}
    assert metrics["lung"]["unit"] == "px" and metrics["lung"]["MRE"] == pytest.approx(2.5)
    assert metrics["_run"]["decoder"] == "gaussian" and metrics["_baseline_mean_shape"]["skull"]["MRE"] == 9.0
    assert sorted(os.listdir(os.path.join(out, "figures"))) == ["ced_lung.png", "ced_skull.png"]
    assert sorted(os.listdir(os.path.join(out, "worst_cases"))) == ["lung_1_img3.png", "skull_1_img1.png", "skull_2_img0.png"]
    assert Image.open(os.path.join(out, "worst_cases", "skull_1_img1.png")).size == (50, 40)  # the original image
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_predictions_csv_recomputes_every_figure(evaluated):
    report, out = evaluated
    metrics = report.write()
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert len(rows) == 3 * 3 + 2
    assert list(rows[0]) == [
        "image", "anatomy", "split", "landmark", "pred_x", "pred_y", "true_x", "true_y",
        "spacing_x", "spacing_y", "unit", "error", "confidence", "review", "mirrored",
    ]  # fmt: skip
    missing = [r for r in rows if r["true_x"] == ""]
    assert len(missing) == 1 and missing[0]["landmark"] == "menton" and missing[0]["error"] == ""
    for anatomy in ("skull", "lung"):
        mine = [r for r in rows if r["anatomy"] == anatomy and r["error"] != ""]
        errors = np.array(
            [np.hypot((float(r["pred_x"]) - float(r["true_x"])) * float(r["spacing_x"]),
                      (float(r["pred_y"]) - float(r["true_y"])) * float(r["spacing_y"])) for r in mine]
        )  # fmt: skip
        assert errors == pytest.approx([float(r["error"]) for r in mine], abs=1e-5)
        assert errors.mean() == pytest.approx(metrics[anatomy]["MRE"])
        for radius, sdr in metrics[anatomy]["SDR"].items():
            assert (errors <= float(radius)).mean() * 100 == pytest.approx(sdr)
    assert rows[0]["image"].endswith("img0.png") and float(rows[0]["confidence"]) == pytest.approx(0.9)


def test_report_markdown_has_a_table_per_anatomy_and_per_landmark_rows(evaluated):
    report, out = evaluated
    report.write()
    md = open(os.path.join(out, "report.md")).read()
    assert "## skull" in md and "## lung" in md
    assert "| model (gaussian) | 1.38 ± 1.73 | 0.50 | 75.00 | 87.50 |" in md
    assert "| &nbsp;&nbsp;test1 (1 images) |" in md and "| mean-shape baseline | 9.00 ± 1.00 |" in md
    assert "| 3 | menton | 2 | 0.00 ± 0.00 |" in md
    assert "1 not annotated (in 1 images); unit: mm (spacing: anatomy)." in md
    assert "![cumulative error distribution, skull](figures/ced_skull.png)" in md
    assert "[skull_1_img1.png](worst_cases/skull_1_img1.png)" in md and "| nasion (5.00) |" in md


def test_evaluation_run_logs_the_report_to_mlflow_with_its_folders(evaluated, tmp_path):
    from ignite.engine import Engine

    report, out = evaluated
    uri = "sqlite:///" + str(tmp_path / "mlruns.db")
    engine = Engine(lambda e, b: b)
    report.attach(engine)
    handler = MLFlowReportHandler(
        tracking_uri=uri, experiment_name="eval", run_name="evaluate_test", experiment_param={"decoder": "gaussian"},
        iteration_log=False, artifacts=report.artifacts, artifact_root=out, close_on_complete=True,
    )  # fmt: skip
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "predictions.csv", "report.md", "figures", "worst_cases"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "figures")} == {"figures/ced_lung.png", "figures/ced_skull.png"}
    assert run.data.params["decoder"] == "gaussian"
