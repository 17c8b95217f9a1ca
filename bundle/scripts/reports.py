"""Evaluation reports: ``metrics.json`` and a plain-text table for the console."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .outputs import write_json_atomic

__all__ = ["format_metrics_table", "write_metrics_json"]


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
    metric: Any, path: str, baseline: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write a :class:`LandmarkErrorMetric`'s per-anatomy summary (and the baseline's) to ``path``; print the table."""
    summary = metric.summary()
    if not summary:
        raise RuntimeError(f"no metrics to write to {path}: the evaluation saw no annotated images.")
    out: dict[str, Any] = dict(summary)
    if baseline:
        out["_baseline_mean_shape"] = dict(baseline)
    if extra:
        out["_run"] = dict(extra)
    write_json_atomic(out, path)
    print(format_metrics_table(summary, baseline), flush=True)
    print(f"metrics written to {path}", flush=True)
    return out
