"""MLflow tracking for the workflows: one set of settings (URI, experiment, run name) shared by every handler, a
handler that logs a run's files and folders with their layout, and tracking that degrades instead of stopping a run.

- **At start** (:func:`check_tracking`, the first step of ``training`` and ``evaluating``): an ``http(s)://``
  tracking server is probed (``GET /health``, any HTTP answer counts) with a short timeout (``PROBE_TIMEOUT_S``),
  before any data is read. Unreachable: the run stops with a message saying so, unless ``--tracking_required
  false``, in which case it warns and tracks to the local SQLite store under ``output_dir`` instead.
- **During the run** (every handler made by :func:`mlflow_handler`): the first failure of a tracking call (server
  gone, network down, database locked) is logged once as a warning; from then on that run's metrics, parameters
  and the list of artifacts not uploaded go to a JSON-lines file (``tracking_fallback.jsonl`` under ``output_dir``)
  and the run goes on. MLflow's HTTP retries are bounded (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2,
  ``MLFLOW_HTTP_REQUEST_TIMEOUT`` 20 s unless set in the environment), so the one failing call stalls a few seconds
  when the server is gone (connection refused), at most about a minute when it stops answering, never minutes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from monai.handlers import MLFlowHandler
from monai.utils import flatten_dict, path_to_uri

from .errors import BundleError, as_flag

__all__ = ["MLFlowReportHandler", "TrackingError", "check_tracking", "mlflow_handler", "probe_tracking_uri", "PROBE_TIMEOUT_S"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
# bounded HTTP retries for every MLflow call of the process (the user's environment wins)
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
# settings keys of this module; the others (tracking_uri, experiment_name, run_name) go to MLflowHandler
_OWN_KEYS = ("required", "fallback_uri", "fallback_log")


class TrackingError(BundleError):
    """The tracking server cannot be reached and tracking is required."""


def _effective_uri(uri: str | None) -> str | None:
    """The URI MLflow uses: ``MLFLOW_TRACKING_URI`` takes precedence in MONAI's handler."""
    return os.environ.get("MLFLOW_TRACKING_URI") or uri


def probe_tracking_uri(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if ``uri`` is not an HTTP server or answers ``GET /health`` within ``timeout`` seconds (any HTTP status
    counts: the server is there); else why it cannot be reached."""
    if not uri.startswith(("http://", "https://")):
        return None
    start = time.monotonic()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"{type(reason).__name__}: {reason} after {time.monotonic() - start:.1f} s"


_PROBED: dict[str, str | None] = {}


def check_tracking(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to track with (``tracking_uri`` replaced by the fallback where allowed); probes once per URI.

    Raises:
        TrackingError: the server is unreachable and ``settings['required']`` is true (the default).
    """
    uri = _effective_uri(settings.get("tracking_uri"))
    out = {k: v for k, v in settings.items() if k not in _OWN_KEYS}
    out["tracking_uri"] = uri
    if not uri or not uri.startswith(("http://", "https://")):
        return out
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    required = as_flag(settings.get("required", True), "tracking_required")
    if uri not in _PROBED:
        _PROBED[uri] = probe_tracking_uri(uri)
        if _PROBED[uri] and not required:
            logger.warning(
                f"MLflow tracking server {uri} is unreachable ({_PROBED[uri]}); tracking_required is false, so this "
                f"run tracks to the local store {settings.get('fallback_uri')} instead."
            )
    reason = _PROBED[uri]
    if reason is None:
        return out
    fallback = settings.get("fallback_uri")
    if required or not fallback:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Start it or correct --tracking_uri; or pass "
            f"--tracking_required false to run without it (tracking then goes to the local store {fallback})."
        )
    out["tracking_uri"] = fallback
    return out


class _Fallback:
    """Tracking state shared by the handlers of one run: failed or not, and the JSON-lines file used after."""

    def __init__(self, uri: str, run_name: str | None, path: str | None) -> None:
        self.uri, self.run_name, self.path = uri, run_name, path
        self.failed = False
        self.params: dict[str, Any] = {}  # parameters already written (each validation re-logs its own)

    def fail(self, exc: BaseException, event: str) -> None:
        if self.failed:
            return
        self.failed = True
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        where = f"written to {self.path}" if self.path else "not recorded"
        logger.warning(
            f"MLflow tracking to {self.uri} failed ({event}: {type(exc).__name__}: {first}); the run goes on, and "
            f"from now on its metrics and parameters are {where} (this warning is not repeated)."
        )

    def write(self, kind: str, values: Mapping[str, Any], step: int | None = None) -> None:
        if not self.path:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_name": self.run_name, "kind": kind}
        if step is not None:
            record["step"] = int(step)
        record["values"] = {str(k): _plain(v) for k, v in values.items()}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)


_FALLBACKS: dict[tuple, _Fallback] = {}


def _degrade(handler: MLFlowHandler, fb: _Fallback) -> MLFlowHandler:
    """Wrap the handler's event methods: the first exception switches every handler of the run to the fallback."""

    def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
        fb.write("metrics", flatten_dict(dict(metrics)), step or 0)

    def log_params(params: Mapping[str, Any]) -> None:
        new = {k: v for k, v in params.items() if fb.params.get(k, object()) != v}
        if new:
            fb.params.update(new)
            fb.write("params", new)

    def start(engine: Any) -> None:
        if handler.experiment_param:
            log_params(handler.experiment_param)
        log_params({a: getattr(engine.state, a, None) for a in handler.default_tracking_params})

    def complete() -> None:
        paths = handler._parse_artifacts() if handler.artifacts else []
        if paths:  # they stay on disk, where the run wrote them
            fb.write("artifacts_not_uploaded", {"paths": ";".join(paths)})

    def close() -> None:
        handler.cur_run = None

    fallbacks = {"start": start, "complete": complete, "close": close}

    for name in ("start", "iteration_completed", "epoch_completed", "complete", "close"):
        original = getattr(handler, name)

        @functools.wraps(original)  # ignite reads the signature: engine or no argument, as the original
        def guarded(*args: Any, _original: Any = original, _name: str = name) -> None:
            if not fb.failed:
                try:
                    return _original(*args)
                except Exception as e:  # any tracking failure: server gone, network, database
                    fb.fail(e, _name)
            handler._log_metrics = log_metrics  # the original methods now log to the fallback
            handler._log_params = log_params
            return fallbacks[_name](*args) if _name in fallbacks else _original(*args)

        setattr(handler, name, guarded)
    return handler


def _point_to(handler: MLFlowHandler, uri: str) -> None:
    """Make the handler track to ``uri`` even where ``MLFLOW_TRACKING_URI`` named another."""
    handler.client = mlflow.MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:///"):
        handler.artifact_location = path_to_uri(Path(uri[len("sqlite:///") :]).parent / "mlruns")


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


def mlflow_handler(
    settings: Mapping[str, Any], handler_class: type = MLFlowReportHandler, **kwargs: Any
) -> MLFlowHandler:
    """``handler_class`` (:class:`MLFlowReportHandler` by default) with the run's shared ``settings``
    (``tracking_uri``, ``experiment_name``, ``run_name``, and ``required``, ``fallback_uri``, ``fallback_log``:
    see the module's docstring) plus this handler's own ``kwargs``: the configs declare the settings once, in
    ``tracking``. Its tracking calls degrade to the fallback file instead of raising."""
    effective = check_tracking(settings)
    handler = handler_class(**effective, **kwargs)
    uri = effective.get("tracking_uri")
    if uri and os.environ.get("MLFLOW_TRACKING_URI") not in (None, uri):
        _point_to(handler, uri)
    key = (uri, effective.get("experiment_name"), effective.get("run_name"))
    fb = _FALLBACKS.setdefault(key, _Fallback(str(uri), effective.get("run_name"), settings.get("fallback_log")))
    return _degrade(handler, fb)
