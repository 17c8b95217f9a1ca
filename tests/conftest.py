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
