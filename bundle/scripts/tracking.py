"""Experiment tracking: the MLflow handler of every workflow, its run's files and folders logged with their layout,
and one set of settings (URI, experiment, run name) shared by every handler of a run."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from monai.handlers import MLFlowHandler

__all__ = ["MLFlowReportHandler", "mlflow_handler"]

logger = logging.getLogger(__name__)


class MLFlowReportHandler(MLFlowHandler):
    """MONAI's :class:`~monai.handlers.MLFlowHandler` whose artifacts keep their place relative to ``artifact_root``.

    The report links to ``figures/...`` and ``worst_cases/...``, so those keep their folder in the run's
    artifacts (the base handler would put every file at the top). A file is logged with
    ``MlflowClient.log_artifact``, a folder with ``MlflowClient.log_artifacts`` (MLflow's public API); a path
    outside ``artifact_root`` goes to the top (a folder under its own name), one that does not exist is skipped.

    Args:
        args, kwargs: those of ``MLFlowHandler`` (``tracking_uri``, ``experiment_name``, ``run_name``,
            ``experiment_param``, ``artifacts``, ``close_on_complete``, ...).
        artifact_root: the folder the artifacts' paths are taken relative to; default: none (files at the
            top, folders under their name).
    """

    def __init__(self, *args: Any, artifact_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.artifact_root = os.path.abspath(artifact_root) if artifact_root else None

    def _artifact_folder(self, path: str) -> str | None:
        """Where ``path`` goes among the run's artifacts: its folder relative to the root, None for the top."""
        rel = os.path.relpath(path, self.artifact_root) if self.artifact_root else os.path.basename(path)
        if rel.startswith(os.pardir):
            rel = os.path.basename(path)
        return rel if os.path.isdir(path) else (os.path.dirname(rel) or None)

    def complete(self) -> None:
        """Log the artifacts to the current run (the engine's ``COMPLETED`` event)."""
        if not self.cur_run:
            return
        run_id = self.cur_run.info.run_id
        for path in (os.path.abspath(p) for p in self.artifacts if p):
            if os.path.isdir(path):
                self.client.log_artifacts(run_id, path, artifact_path=self._artifact_folder(path))
            elif os.path.isfile(path):
                self.client.log_artifact(run_id, path, artifact_path=self._artifact_folder(path))
            else:
                logger.info("MLFlowReportHandler: %s does not exist; not logged.", path)


def mlflow_handler(settings: Mapping[str, Any], **kwargs: Any) -> MLFlowReportHandler:
    """An :class:`MLFlowReportHandler` with the run's shared ``settings`` (``tracking_uri``, ``experiment_name``,
    ``run_name``) plus this handler's own ``kwargs``: the configs declare the settings once, in ``tracking``."""
    return MLFlowReportHandler(**settings, **kwargs)
