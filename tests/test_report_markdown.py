"""report.md from a metrics summary: unknown figures are a dash, published figures get their own row."""

from __future__ import annotations

from scripts.report_markdown import format_report_markdown


def _summary(mre: float) -> dict:
    return {"unit": "px", "images": 2, "count": 3, "missing_landmarks": 1, "images_with_missing": 1, "MRE": mre,
            "STD": 0.5, "median": 1.0, "SDR": {"3": 50.0}, "per_landmark": {"tip": {"count": 3, "MRE": mre, "STD": 0.5,
            "median": 1.0, "SDR": {"3": 50.0}}}}  # fmt: skip


def test_sections_rows_and_dashes_for_unknown_figures():
    metrics = {
        "finger": _summary(float("nan")),
        "_run": {"decoder": "argmax", "checkpoint": "m.pt", "empty": ""},
        "_published": {"finger": {"source": "paper", "MRE": 1.5}},
    }
    md = format_report_markdown(metrics, figures={"finger": "figures/ced_finger.png"})
    assert md.startswith("# Landmark detection: evaluation report") and "- **checkpoint**: `m.pt`" in md
    assert "empty" not in md  # empty run fields are left out
    assert "| model (argmax) | – ± 0.50 | 1.00 | 50.00 |" in md
    assert "| published: paper | 1.50 | – | – |" in md
    assert "![cumulative error distribution, finger](figures/ced_finger.png)" in md and "Worst cases" not in md
