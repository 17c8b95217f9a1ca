"""MONAI's ``CheckpointSaver`` with three rules it lacks: durable atomic files, a best score that survives restarts,
and pruning of epoch checkpoints that survives restarts.

- **Atomic**: every checkpoint, the best model included, is written to a temporary file, fsynced, and renamed over
  the old one (:func:`scripts.durable.save_torch_atomic`). ignite deletes a replaced file *before* writing its
  successor; here a fixed-name file (``model.pt``) is never deleted (the rename replaces it), and other deletions
  wait until the new file is written. A kill at any moment leaves the previous best model readable.
- **Best so far across runs**: the best model holds its score (``best_metric``: metric name, value, epoch, and
  ignite's ``checkpointer`` state). At the first validation of a resumed or extended run the saver reads it back,
  so only a strictly better score replaces the model, and MONAI's "Got new best metric" is only said of one.
  With ``resume=False`` (a new run in the same folder) the old best model is replaced by the new run's first
  validation, with a warning.
- **Pruning**: after each epoch checkpoint the folder keeps the ``n_saved`` newest ones up to the current epoch and
  deletes older ones, and newer ones left by an abandoned run, whichever process wrote them.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from .checkpoints import CheckpointError, read_checkpoint
from .durable import TMP_PREFIX, save_torch_atomic
from .errors import as_flag

__all__ = ["AtomicDiskSaver", "SafeCheckpointSaver", "read_best_score"]

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing through :func:`~scripts.durable.save_torch_atomic` (fsync, mode, rename).

    Args:
        dirname: the folder.
        filename: a fixed file name for every save (e.g. ``model.pt``), as MONAI's saver allows; such a file is
            never deleted before its successor is written, the rename replaces it.
    """

    def __init__(self, dirname: str, filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename
        self._pending: list[str] = []  # removals ignite asked for, done once the next file is written

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if self.filename is not None:
            filename = self.filename
        super().__call__(checkpoint, filename, metadata)
        pending, self._pending = self._pending, []
        for name in pending:
            path = os.path.join(self.dirname, name)
            if name != filename and os.path.exists(path):
                os.remove(path)

    def _save_func(self, checkpoint: Mapping, path: Any, func: Any) -> None:
        save_torch_atomic(checkpoint, str(path), save=func, **self.kwargs)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            self._pending.append(filename)


class _BestScore:
    """The score a best-model checkpoint is saved with (an object in its ``save_dict``: ``best_metric``)."""

    def __init__(self) -> None:
        self.value: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.value)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = dict(state)


def read_best_score(path: str) -> dict[str, Any] | None:
    """The ``best_metric`` a best-model file was saved with (``metric``, ``value``, ``epoch``), or None."""
    best = read_checkpoint(path).get("best_metric")
    return dict(best) if best else None


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) with atomic files, a best score kept across runs and pruning
    that survives restarts (see the module's docstring).

    Args:
        resume: seed the best score from an existing ``key_metric_filename`` (a resumed or extended run). False:
            the run starts afresh and the existing best model is replaced by its first validation (a warning says so).
        n_saved: epoch/iteration checkpoints to keep (None: all), counted on disk, not only this process's.
        other arguments: as MONAI's ``CheckpointSaver``; ``key_metric_save_state`` is always on with
            ``save_key_metric`` (the score travels with the model).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        resume: bool = True,
        n_saved: int | None = None,
        save_key_metric: bool = False,
        file_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("key_metric_save_state", None)
        self._best_score = _BestScore()
        if save_key_metric:
            save_dict = {**save_dict, "best_metric": self._best_score}
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            n_saved=None,  # pruned on disk, in interval_completed
            save_key_metric=save_key_metric,
            key_metric_save_state=save_key_metric,
            file_prefix=file_prefix,
            **kwargs,
        )
        self.resume, self.keep, self.file_prefix = as_flag(resume, "resume"), n_saved, file_prefix
        self.key_metric_filename = kwargs.get("key_metric_filename")
        self.key_metric_name = kwargs.get("key_metric_name")
        self._best: dict[str, Any] | None = None
        self._started: set[int] = set()
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler = AtomicDiskSaver(save_dir, filename=getattr(ckpt.save_handler, "filename", None))

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.started)

    # -- start: leftovers of a killed write, the best score so far ------------------------------------------------
    def started(self, engine: Engine) -> None:
        """Once per engine: clear temporary files of a killed write; seed the best score from the best model."""
        if id(engine) in self._started:
            return
        self._started.add(id(engine))
        if os.path.isdir(self.save_dir):
            for name in os.listdir(self.save_dir):
                if name.startswith(TMP_PREFIX):
                    os.remove(os.path.join(self.save_dir, name))
                    logger.info(f"removed {name}, left in {self.save_dir} by a run killed while writing")
        if self._key_metric_checkpoint is not None and self.key_metric_filename:
            self._seed_best(engine, os.path.join(self.save_dir, self.key_metric_filename))

    def _seed_best(self, engine: Engine, path: str) -> None:
        if not os.path.isfile(path):
            return
        if not self.resume:
            logger.warning(f"resume is off: {path} (the best model of an earlier run) is replaced by this run's first validation.")
            return
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as e:
            logger.warning(f"{e} It is replaced by this run's first validation.")
            return
        state, best = ckpt.get("checkpointer"), ckpt.get("best_metric")
        if not state or not best:
            logger.warning(
                f"{path} holds no score (written before scores were saved with the best model): this run's first "
                "validation replaces it."
            )
            return
        self._key_metric_checkpoint.load_state_dict(state)
        self._best = dict(best)
        engine.state.best_metric = best["value"]  # so that MONAI's "Got new best metric" is only said of a better one
        engine.state.best_metric_epoch = best["epoch"]
        logger.info(
            f"best model so far: {path}, {best['metric']} {best['value']:.4f} at epoch {best['epoch']}; only a "
            f"better {best['metric']} replaces it."
        )

    # -- the best model ------------------------------------------------------------------------------------------
    def metrics_completed(self, engine: Engine) -> None:
        name = self.key_metric_name or engine.state.key_metric_name
        value = engine.state.metrics.get(name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            logger.warning(f"{name} is {value} at epoch {engine.state.epoch}: no best model is saved for this epoch.")
            return
        self._best_score.value = {"metric": name, "value": value, "epoch": int(engine.state.epoch)}
        before = list(self._key_metric_checkpoint._saved)
        super().metrics_completed(engine)
        target = self.key_metric_filename or "the best-model file"
        if list(self._key_metric_checkpoint._saved) != before:
            self._best = dict(self._best_score.value)
            logger.info(f"saved {target}: {name} {value:.4f} at epoch {engine.state.epoch} (best so far)")
        elif self._best:
            logger.info(
                f"{name} {value:.4f} at epoch {engine.state.epoch} is not better than {self._best['value']:.4f} "
                f"(epoch {self._best['epoch']}): {target} kept."
            )

    # -- epoch checkpoints ---------------------------------------------------------------------------------------
    def interval_completed(self, engine: Engine) -> None:
        super().interval_completed(engine)
        if self.keep:
            self.prune(engine.state.epoch if self.epoch_level else engine.state.iteration)

    def prune(self, current: int) -> list[str]:
        """Keep the ``n_saved`` newest interval checkpoints up to ``current`` on disk; delete older and newer ones."""
        kind = "epoch" if self.epoch_level else "iteration"
        prefix = f"{self.file_prefix}_" if self.file_prefix else ""
        to_save = self._interval_checkpoint.to_save if self._interval_checkpoint is not None else {}
        name = next(iter(to_save)) if len(to_save) == 1 else "checkpoint"  # ignite's file name rule
        pattern = re.compile(rf"^{re.escape(prefix + name)}_{kind}=(\d+)\.pt$")
        found = {int(m.group(1)): name for name in os.listdir(self.save_dir) if (m := pattern.match(name))}
        keep = set(sorted(n for n in found if n <= current)[-self.keep :])
        removed = []
        for n, name in sorted(found.items()):
            if n not in keep:
                os.remove(os.path.join(self.save_dir, name))
                removed.append(name)
        if removed:
            logger.info(f"removed old checkpoint(s) {removed} from {self.save_dir} (keeping {self.keep})")
        return removed
