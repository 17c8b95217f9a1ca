"""MLflow tracking for the workflows: one set of settings (URI, experiment, run name) shared by every handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["mlflow_handler"]


def mlflow_handler(settings: Mapping[str, Any], **kwargs: Any) -> MLFlowHandler:
    """MONAI's ``MLFlowHandler`` with the run's shared ``settings`` (``tracking_uri``, ``experiment_name``,
    ``run_name``) plus this handler's own ``kwargs``: the configs declare the settings once, in ``tracking``."""
    return MLFlowHandler(**settings, **kwargs)
