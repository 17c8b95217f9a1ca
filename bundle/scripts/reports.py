"""The evaluation report: the handler that writes every file of it when the evaluation ends.

:class:`EvaluationReport` is an ignite handler: attached to the evaluator, it writes ``metrics.json``
(:mod:`scripts.metrics`), ``predictions.csv`` (:mod:`scripts.predictions`), the figures (:mod:`scripts.plots`)
and ``report.md`` (:mod:`scripts.report_markdown`) from the records of a
:class:`~scripts.metrics.LandmarkErrorMetric`: one source of truth for the figures and the rows they are
computed from. :class:`~scripts.tracking.MLFlowReportHandler` logs them as the run's artifacts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from .anatomies import AnatomySet
from .files import image_stem, write_text_atomic
from .metrics import LandmarkErrorMetric, format_metrics_table, write_metrics_json
from .overlays import REVIEW_THRESHOLD
from .plots import plot_cumulative_errors, plot_worst_case
from .predictions import worst_cases, write_predictions_csv
from .report_markdown import format_report_markdown

__all__ = ["EvaluationReport"]


class EvaluationReport:
    """Ignite handler writing the evaluation's report when the evaluator's epoch completes.

    Files in ``output_dir`` (each written atomically): ``metrics.json`` (per anatomy: unit, MRE, STD, median,
    SDR at its radii, per-landmark figures, missing counts; plus the baseline and the run),
    ``predictions.csv`` (one row per image and landmark), ``report.md``, ``figures/ced_<anatomy>.png`` and
    ``worst_cases/<anatomy>_<rank>_<image>.png`` (the original image with predictions coloured by confidence
    and the annotations). :attr:`artifacts` lists them for MLflow.

    Args:
        metric: the evaluator's :class:`LandmarkErrorMetric` (attached to the same engine, so its records hold
            this evaluation's predictions when the epoch completes).
        anatomies: landmark names and SDR radii.
        output_dir: where the files go.
        baseline: the mean-shape baseline's figures, shown beside the model's.
        run_info: what identifies the run (checkpoint, datalist, splits, decoder), written into the files.
        published: per anatomy, published figures to show beside ours (``source``, ``MRE``, ``SDR``).
        image_loader: a dictionary transform reading ``{image_key: path}`` into a ``(1, W, H)`` image, for the
            worst-case overlays (none without it).
        worst_count: overlays per anatomy.
        confidence_threshold: the confidence below which the overlays mark a landmark for review.
    """

    def __init__(
        self,
        metric: LandmarkErrorMetric,
        anatomies: AnatomySet,
        output_dir: str,
        baseline: Mapping[str, Any] | None = None,
        run_info: Mapping[str, Any] | None = None,
        published: Mapping[str, Any] | None = None,
        image_loader: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        image_key: str = "image",
        worst_count: int = 3,
        confidence_threshold: float = REVIEW_THRESHOLD,
    ) -> None:
        self.metric, self.anatomies, self.output_dir = metric, anatomies, output_dir
        self.baseline, self.run_info, self.published = baseline, dict(run_info or {}), published
        self.image_loader, self.image_key, self.worst_count = image_loader, image_key, worst_count
        self.confidence_threshold = confidence_threshold
        self.metrics: dict[str, Any] = {}

    @property
    def artifacts(self) -> list[str]:
        """The report's files and folders, to log to MLflow."""
        names = ("metrics.json", "predictions.csv", "report.md", "figures", "worst_cases")
        return [os.path.join(self.output_dir, n) for n in names]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.write()

    def write(self) -> dict[str, Any]:
        """Write every file from the metric's records; print the summary table; return the metrics."""
        out = self.output_dir
        run_info = {**self.run_info, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.metrics = write_metrics_json(
            self.metric, os.path.join(out, "metrics.json"), self.baseline, run_info, self.published
        )
        records = self.metric.records
        write_predictions_csv(records, self.anatomies, os.path.join(out, "predictions.csv"))
        figures: dict[str, str] = {}
        worst: dict[str, list[tuple[Mapping[str, Any], str | None]]] = {}
        for folder in ("figures", "worst_cases"):
            _clear_png(os.path.join(out, folder))
        for name, v in self.metrics.items():
            if name.startswith("_"):
                continue
            recs = [r for r in records if r["anatomy"] == name]
            curves = {"all": np.concatenate([r["errors"] for r in recs])}
            for split in v.get("per_split", {}):
                curves[split] = np.concatenate([r["errors"] for r in recs if r["split"] == split])
            figures[name] = f"figures/ced_{name}.png"
            title = f"{name}: cumulative error distribution ({run_info.get('decoder', '')})"
            plot_cumulative_errors(curves, self.anatomies[name].sdr_radii, v["unit"], title, os.path.join(out, figures[name]))
            worst[name] = [(r, self._overlay(r, name, rank)) for rank, r in enumerate(worst_cases(records, name, self.worst_count), 1)]
        write_text_atomic(format_report_markdown(self.metrics, worst, figures), os.path.join(out, "report.md"))
        summary = {k: v for k, v in self.metrics.items() if not k.startswith("_")}
        print(format_metrics_table(summary, self.baseline), flush=True)
        print(f"report written to {out} (metrics.json, predictions.csv, report.md, figures/, worst_cases/)", flush=True)
        return self.metrics

    def _overlay(self, record: Mapping[str, Any], anatomy: str, rank: int) -> str | None:
        """Draw one worst case on its original image; the path relative to the report, or None."""
        if self.image_loader is None or not record["image"]:
            return None
        image = self.image_loader({self.image_key: record["image"]})[self.image_key]
        rel = f"worst_cases/{anatomy}_{rank}_{image_stem(record['image'])}.png"
        plot_worst_case(image, record, os.path.join(self.output_dir, rel), self.confidence_threshold)
        return rel


def _clear_png(folder: str) -> None:
    """Remove the PNGs a previous report left in one of the report's own folders."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".png"):
                os.remove(os.path.join(folder, name))
