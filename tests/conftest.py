"""Shared fixtures: the bundle's scripts on the path, a tiny generated demo set, the shared real data."""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, BUNDLE)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> str:
    """A small synthetic four-anatomy set (the demo generator with few images); returns its folder."""
    from scripts.datasets.demo import generate_demo

    out = tmp_path_factory.mktemp("tiny") / "demo"
    generate_demo(str(out), n_train=4, n_val=2, n_test=2, seed=7)
    return str(out)


def shared_data(*parts: str) -> str:
    """Path under ../shared/data, skipping the test with a reason when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is absent (it lives beside the repo in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def mini_demo(tiny_demo, tmp_path_factory) -> str:
    """The tiny demo's head only: 2 training, 1 validation and 1 test image (a training epoch in seconds)."""
    import json

    data = json.load(open(os.path.join(tiny_demo, "datalist.json")))
    mini = {"anatomies": {"head": data["anatomies"]["head"]}}
    for split, n in (("training", 2), ("validation", 1), ("test", 1)):
        heads = [it for it in data[split] if it["anatomy"] == "head"][:n]
        mini[split] = [dict(it, image=os.path.join(tiny_demo, it["image"])) for it in heads]
    out = tmp_path_factory.mktemp("mini")
    (out / "datalist.json").write_text(json.dumps(mini))
    return str(out)


def run_bundle(*args: str, timeout: float = 900, env: dict | None = None):
    """Run `python -m monai.bundle ARGS` from the bundle folder (as the README does), without a user's MLflow URI."""
    import subprocess

    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=BUNDLE,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def last_line(text: str) -> str:
    """The last non-empty line of a program's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
