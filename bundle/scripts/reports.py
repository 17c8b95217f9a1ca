"""Evaluation reports: ``metrics.json``, ``predictions.csv``, ``report.md``, error plots and worst-case overlays.

:class:`EvaluationReport` is an ignite handler: attached to the evaluator, it writes every file at the end of
the evaluation from the records of a :class:`~scripts.metrics.LandmarkErrorMetric` (one source of truth for the
figures and the rows they are computed from), and :class:`MLFlowReportHandler` logs them as the evaluation
run's artifacts with their folder layout (so the report's links work in the MLflow UI).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from .anatomies import AnatomySet
from .metrics import LandmarkErrorMetric
from .outputs import atomic_path, overlay_image, write_json_atomic
from .review import review_sentence

__all__ = [
    "format_metrics_table",
    "write_metrics_json",
    "write_predictions_csv",
    "format_report_markdown",
    "plot_cumulative_errors",
    "worst_cases",
    "EvaluationReport",
    "MLFlowReportHandler",
]

PREDICTION_COLUMNS = (
    "image", "anatomy", "split", "landmark", "pred_x", "pred_y", "true_x", "true_y",
    "spacing_x", "spacing_y", "unit", "error", "confidence", "review", "mirrored",
)  # fmt: skip


def format_metrics_table(summary: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    """One line per anatomy: images, unit, MRE +- STD, SDR at each radius; the baseline's MRE beside it."""
    lines = []
    head = f"{'anatomy':<10} {'images':>6} {'unit':>4} {'MRE':>8} {'STD':>8}  SDR"
    if baseline:
        head += "   | mean-shape baseline MRE"
    lines.append(head)
    for name, v in summary.items():
        sdr = " ".join(f"{r}:{s:5.1f}%" for r, s in v["SDR"].items())
        line = f"{name:<10} {v.get('images', 0):>6} {v['unit']:>4} {v['MRE']:8.3f} {v['STD']:8.3f}  {sdr}"
        if baseline and name in baseline:
            line += f"   | {baseline[name]['MRE']:8.3f}"
        lines.append(line)
    return "\n".join(lines)


def write_metrics_json(
    metric: LandmarkErrorMetric,
    path: str,
    baseline: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    published: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a metric's per-anatomy summary (and the baseline's, the run's, published figures) to ``path``."""
    summary = metric.summary()
    if not summary:
        raise RuntimeError(f"no metrics to write to {path}: the evaluation saw no annotated images.")
    out: dict[str, Any] = dict(summary)
    if baseline:
        out["_baseline_mean_shape"] = dict(baseline)
    if published:
        out["_published"] = dict(published)
    if extra:
        out["_run"] = dict(extra)
    write_json_atomic(out, path)
    return out


def _number(v: float) -> str:
    """A CSV cell: six decimals, empty when unknown (NaN)."""
    return "" if not np.isfinite(v) else f"{v:.6f}"


def write_predictions_csv(records: Sequence[Mapping[str, Any]], anatomies: AnatomySet, path: str) -> int:
    """One row per image and landmark (:data:`PREDICTION_COLUMNS`), points in original-image pixels.

    The error is in the anatomy's unit (``unit``: mm with the per-axis spacing, or px); a landmark that is not
    annotated has empty ``true_x``, ``true_y`` and ``error``. Returns the number of rows.
    """
    rows = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for r in records:
            names = anatomies[r["anatomy"]].landmarks
            for k, name in enumerate(names):
                writer.writerow(
                    [r["image"], r["anatomy"], r["split"], name]
                    + [_number(v) for v in (*r["pred"][k], *r["true"][k], *r["spacing"])]
                    + [r["unit"], _number(r["errors"][k]), _number(float(r["confidence"][k]))]
                    + ["" if r.get("review") is None else str(bool(r["review"][k])).lower(), str(bool(r.get("mirrored"))).lower()]
                )
                rows += 1
    return rows


def worst_cases(records: Sequence[Mapping[str, Any]], anatomy: str, count: int) -> list[Mapping[str, Any]]:
    """The ``count`` images of ``anatomy`` with the highest mean error over their annotated landmarks."""
    recs = [r for r in records if r["anatomy"] == anatomy and np.isfinite(r["errors"]).any()]
    return sorted(recs, key=lambda r: -float(np.nanmean(r["errors"])))[:count]


def plot_cumulative_errors(
    errors: Mapping[str, np.ndarray], radii: Sequence[float], unit: str, title: str, path: str
) -> None:
    """Plot the share of landmarks within each error (one curve per entry of ``errors``), radii dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    top = 0.0
    for label, e in errors.items():
        e = np.sort(np.asarray(e, dtype=np.float64)[np.isfinite(e)])
        if e.size:
            ax.step(np.r_[0.0, e], np.r_[0.0, np.arange(1, e.size + 1) / e.size * 100], where="post", label=f"{label} (n={e.size})")
            top = max(top, float(np.percentile(e, 98)))
    for r in radii:
        ax.axvline(r, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, max(top, max(radii, default=1.0) * 1.5))
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"radial error ({unit})")
    ax.set_ylabel("landmarks within that error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _cells(v: Mapping[str, Any], radii: Sequence[str]) -> str:
    """``MRE ± STD | median | SDR...`` table cells of one summary (``–`` where a figure is unknown)."""
    mre = f"{_f(v.get('MRE'))} ± {_f(v.get('STD'))}" if "STD" in v else _f(v.get("MRE"))
    return " | ".join([mre, _f(v.get("median"))] + [_f(v.get("SDR", {}).get(r)) for r in radii])


def format_report_markdown(
    metrics: Mapping[str, Any],
    worst: Mapping[str, Sequence[tuple[Mapping[str, Any], str | None]]] | None = None,
    figures: Mapping[str, str] | None = None,
) -> str:
    """The readable report: the run, a summary, then per anatomy a Table-1-like table, its plot, per-landmark rows
    and the worst cases.

    ``metrics`` is what :func:`write_metrics_json` wrote; ``worst`` maps an anatomy to ``(record, overlay
    path relative to the report)`` pairs; ``figures`` maps an anatomy to its plot's relative path.
    """
    run = metrics.get("_run", {})
    baseline = metrics.get("_baseline_mean_shape", {})
    anatomies = {k: v for k, v in metrics.items() if not k.startswith("_")}
    lines = ["# Landmark detection: evaluation report", ""]
    lines += [f"- **{key}**: `{value}`" for key, value in run.items() if value not in (None, "", {}, [])]
    lines += [
        "",
        "Errors are Euclidean distances between the predictions, decoded in the network's grid and mapped back to",
        "the original image, and the original annotations: in mm (per-axis pixel spacing) for anatomies with a",
        "spacing, else in pixels. MRE ± STD, median and SDR (% of landmarks within each radius) are over all",
        "annotated landmarks of an anatomy; landmarks that are not annotated are left out and counted.",
        "Every figure can be recomputed from `predictions.csv`.",
        "",
        "## Summary",
        "",
        "| anatomy | unit | images | landmarks | missing | MRE ± STD | median | SDR | mean-shape baseline MRE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in anatomies.items():
        sdr = ", ".join(f"{r}: {_f(s, 1)}%" for r, s in v["SDR"].items())
        base = _f(baseline[name]["MRE"]) if name in baseline else "–"
        lines.append(
            f"| {name} | {v['unit']} | {v['images']} | {v['count']} | {v['missing_landmarks']} "
            f"| {_f(v['MRE'])} ± {_f(v['STD'])} | {_f(v['median'])} | {sdr} | {base} |"
        )
    for name, v in anatomies.items():
        rows = {f"model ({run.get('decoder', 'decoded')})": v}
        rows.update({f"&nbsp;&nbsp;{s} ({f['images']} images)": f for s, f in v.get("per_split", {}).items()})
        if name in baseline:
            rows["mean-shape baseline"] = baseline[name]
        if name in metrics.get("_published", {}):
            published = metrics["_published"][name]
            rows[f"published: {published.get('source', '')}"] = published
        lines += _anatomy_section(name, v, rows, (figures or {}).get(name), (worst or {}).get(name, ()))
    return "\n".join(lines) + "\n"


def _anatomy_section(
    name: str,
    v: Mapping[str, Any],
    rows: Mapping[str, Mapping[str, Any]],
    figure: str | None,
    worst: Sequence[tuple[Mapping[str, Any], str | None]],
) -> list[str]:
    """One anatomy's part of the report: its table (``rows``: label -> figures), plot, landmarks, worst cases."""
    unit, radii = v["unit"], list(v["SDR"])
    spacing = f" (spacing: {v['spacing_source']})" if v.get("spacing_source") else ""
    lines = [
        "",
        f"## {name}",
        "",
        f"{v['images']} images, {v['count']} annotated landmarks, {v['missing_landmarks']} not annotated "
        f"(in {v['images_with_missing']} images); unit: {unit}{spacing}.",
        "",
        "| | MRE ± STD | median | " + " | ".join(f"SDR {r} {unit} (%)" for r in radii) + " |",
        "|---" * (3 + len(radii)) + "|",
    ]
    lines += [f"| {label} | {_cells(f, radii)} |" for label, f in rows.items()]
    if v.get("review"):
        lines += ["", review_sentence(v["review"], unit)]
    if v.get("mirrored_images"):
        lines += ["", f"{v['mirrored_images']} of {v['images']} images were read as left-right mirrored."]
    if figure:
        lines += ["", f"![cumulative error distribution, {name}]({figure})"]
    lines += [
        "",
        "### Per landmark",
        "",
        "| # | landmark | n | MRE ± STD | median | " + " | ".join(f"SDR {r}" for r in radii) + " |",
        "|---" * (5 + len(radii)) + "|",
    ]
    lines += [
        f"| {k} | {landmark} | {f['count']} | {_cells(f, radii)} |" for k, (landmark, f) in enumerate(v["per_landmark"].items(), 1)
    ]
    if worst:
        lines += ["", "### Worst cases", "", "| rank | image | split | MRE | worst landmark | overlay |", "|---|---|---|---|---|---|"]
        landmarks = list(v["per_landmark"])
        for rank, (rec, overlay) in enumerate(worst, 1):
            k = int(np.nanargmax(rec["errors"]))
            link = f"[{os.path.basename(overlay)}]({overlay})" if overlay else "–"
            lines.append(
                f"| {rank} | {os.path.basename(rec['image'])} | {rec['split']} | {_f(float(np.nanmean(rec['errors'])))} "
                f"| {landmarks[k]} ({_f(float(rec['errors'][k]))}) | {link} |"
            )
    return lines


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
    ) -> None:
        self.metric, self.anatomies, self.output_dir = metric, anatomies, output_dir
        self.baseline, self.run_info, self.published = baseline, dict(run_info or {}), published
        self.image_loader, self.image_key, self.worst_count = image_loader, image_key, worst_count
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
        with atomic_path(os.path.join(out, "report.md")) as tmp, open(tmp, "w") as f:
            f.write(format_report_markdown(self.metrics, worst, figures))
        summary = {k: v for k, v in self.metrics.items() if not k.startswith("_")}
        print(format_metrics_table(summary, self.baseline), flush=True)
        print(f"report written to {out} (metrics.json, predictions.csv, report.md, figures/, worst_cases/)", flush=True)
        return self.metrics

    def _overlay(self, record: Mapping[str, Any], anatomy: str, rank: int) -> str | None:
        """Draw one worst case on its original image; the path relative to the report, or None."""
        if self.image_loader is None or not record["image"]:
            return None
        image = self.image_loader({self.image_key: record["image"]})[self.image_key]
        stem = os.path.splitext(os.path.basename(record["image"]))[0]
        rel = f"worst_cases/{anatomy}_{rank}_{stem}.png"
        with atomic_path(os.path.join(self.output_dir, rel)) as tmp:
            overlay_image(image, record["pred"], record["confidence"], record["true"]).save(tmp, format="PNG")
        return rel


def _clear_png(folder: str) -> None:
    """Remove the PNGs a previous report left in one of the report's own folders."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".png"):
                os.remove(os.path.join(folder, name))


class MLFlowReportHandler(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` that keeps the artifacts' folders relative to ``artifact_root``.

    The base handler logs every file at the top of the run's artifacts; the report links to
    ``figures/...`` and ``worst_cases/...``, so those keep their folder.
    """

    def __init__(self, *args: Any, artifact_root: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.artifact_root = os.path.abspath(artifact_root)

    def complete(self) -> None:
        if self.artifacts and self.cur_run:
            for path in self._parse_artifacts():
                folder = os.path.dirname(os.path.relpath(os.path.abspath(path), self.artifact_root))
                self.client.log_artifact(self.cur_run.info.run_id, path, artifact_path=folder or None)
