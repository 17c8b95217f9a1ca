"""Checkpoint loading with clear errors, and resuming a killed training run from its last epoch.

MONAI's ``CheckpointLoader`` does the loading (``weights_only=True``, ignite's ``load_objects``); these
wrappers add what it lacks: a message naming the file when it is missing or truncated, and finding the
newest intact epoch checkpoint of a run so that ``training`` resumes by itself after a kill.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from .errors import BundleError, as_flag

__all__ = ["CheckpointError", "read_checkpoint", "CheckedCheckpointLoader", "ResumeFromLatest"]

logger = logging.getLogger(__name__)


class CheckpointError(BundleError, RuntimeError):
    """A checkpoint file is missing, truncated or not a checkpoint."""


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with an error that names the file and the problem."""
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint {path}: file does not exist (--ckpt_path; by default <output_dir>/models/model.pt, where "
            "training with the same --output_dir writes its best model)."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "the file is truncated, damaged or not a weights-only PyTorch checkpoint."
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dictionary of state dicts, got {type(ckpt).__name__}.")
    return ckpt


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that first checks the file, so a bad one fails with its name."""

    def __init__(self, load_path: str, load_dict: dict, **kwargs: Any) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, **kwargs)

    def __call__(self, engine: Engine) -> None:
        ckpt = read_checkpoint(self.load_path, self.map_location or "cpu")
        # an object marked optional_in_checkpoint (the anatomy recogniser) is absent from older checkpoints: keep it
        full = self.load_dict
        self.load_dict = {k: v for k, v in full.items() if k in ckpt or not getattr(v, "optional_in_checkpoint", False)}
        try:
            self._load(engine, ckpt)
        finally:
            self.load_dict = full

    def _load(self, engine: Engine, ckpt: dict[str, Any]) -> None:
        missing = [k for k in self.load_dict if k not in ckpt]
        if missing and len(self.load_dict) > 1:
            raise CheckpointError(f"checkpoint {self.load_path}: has no {missing} (it holds {sorted(ckpt)}).")
        if "anatomies" in self.load_dict:  # before the weights: a domain mix-up says so, not "size mismatch"
            try:
                self.load_dict["anatomies"].load_state_dict(ckpt["anatomies"])
            except ValueError as e:
                raise ValueError(f"checkpoint {self.load_path}: {e}") from None
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {self.load_path}: does not fit this network/configuration: {e}") from None


def _epoch_of(path: str) -> int:
    m = re.search(r"epoch=(\d+)", os.path.basename(path))
    return int(m.group(1)) if m else -1


class ResumeFromLatest:
    """On ``STARTED``, load the newest readable ``checkpoint_epoch=N.pt`` in ``ckpt_dir``, if any.

    A run killed mid-epoch then resumes at the start of that epoch (model, optimizer, LR scheduler and the
    trainer's epoch/iteration counters restored). A checkpoint that cannot be read (killed while writing)
    is skipped with a warning in favour of the one before; one that belongs to another configuration
    (other anatomies) is an error.
    """

    def __init__(self, ckpt_dir: str, load_dict: dict, enabled: bool = True, map_location: Any = "cpu") -> None:
        self.ckpt_dir, self.load_dict, self.map_location = ckpt_dir, load_dict, map_location
        self.enabled = as_flag(enabled, "resume")  # `--resume false` arrives as the string 'false'

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        candidates = sorted(glob.glob(os.path.join(self.ckpt_dir, "checkpoint_epoch=*.pt")), key=_epoch_of, reverse=True)
        for path in candidates:
            try:
                read_checkpoint(path, self.map_location)
            except CheckpointError as e:
                logger.warning("skipping %s", e)
                continue
            CheckedCheckpointLoader(path, self.load_dict, map_location=self.map_location)(engine)
            engine.logger.info(f"Resumed from {path} (epoch {engine.state.epoch}, iteration {engine.state.iteration}).")
            return

