"""The evaluation's readable report, ``report.md``: the run, a summary, then per anatomy its tables, plot and
worst cases, from what :func:`~scripts.metrics.write_metrics_json` wrote."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .review import review_sentence

__all__ = ["format_report_markdown"]


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
