"""Multi-GPU training (``configs/multi_gpu_train.yaml``, one process per device under ``torchrun``).

What the config needs beyond MONAI and PyTorch: the process group (``nccl`` on GPUs, ``gloo`` on CPUs), this
process's device, the handlers that only rank 0 runs (logs, progress, checkpoints, MLflow) and a landmark
metric whose records are gathered over the ranks, so that a sharded validation gives the figures of a
one-process validation. The sampler that keeps every rank on the same anatomy at each step is
:class:`scripts.sampling.AnatomyBatchSampler`.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointSaver, MLFlowHandler, StatsHandler, TensorBoardStatsHandler

from .metrics import LandmarkErrorMetric

__all__ = [
    "BroadcastBuffers",
    "DistributedLandmarkErrorMetric",
    "RANK_ZERO_HANDLERS",
    "check_distributed_settings",
    "finalize_distributed",
    "init_distributed",
    "local_device",
    "rank",
    "rank_zero_only",
    "tracking_store_first",
    "world_size",
]

# handler types that only rank 0 runs: what it logs, shows and writes (the copies on other ranks would repeat it)
RANK_ZERO_HANDLERS: tuple[type, ...] = (StatsHandler, TensorBoardStatsHandler, ProgressBar, CheckpointSaver, MLFlowHandler)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` (torchrun's variable) where there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_minutes: float = 60) -> str:
    """Initialise the default process group from torchrun's environment; returns the backend.

    ``backend``: ``nccl`` where there are GPUs, else ``gloo`` (chosen automatically when None). ``timeout_minutes``
    bounds how long a rank waits for the others in a collective (e.g. while rank 0 logs to MLflow).
    """
    if dist.is_initialized():
        return str(dist.get_backend())
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.yaml runs one process per device under torchrun, e.g. from bundle/: torchrun --standalone "
            "--nnodes=1 --nproc_per_node=2 -m monai.bundle run training --config_file "
            "\"['configs/inference.yaml','configs/train.yaml','configs/multi_gpu_train.yaml']\""
        )
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    if dist.get_rank() > 0:  # one log: the other ranks' engines report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)
    return backend


def tracking_store_first(tracking_uri: str | None) -> None:
    """Rank 0 opens the MLflow store first (creating a new SQLite file's tables), then every rank goes on.

    Every rank builds the config's handlers before :func:`rank_zero_only` drops rank 0's ones elsewhere, and
    MLflow's handler opens its store when it is built: two processes creating a new SQLite store's tables at
    once fail. Other ranks then only open the existing store; they log nothing to it.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri  # the URI MONAI's MLFlowHandler resolves
    if rank() == 0 and uri and str(uri).startswith("sqlite:"):
        import mlflow

        mlflow.MlflowClient(str(uri)).search_experiments(max_results=1)
    if world_size() > 1:
        dist.barrier()


def finalize_distributed() -> None:
    """Destroy the process group, if any (the config's ``finalize``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_distributed_settings(time_limit_minutes: float | None = None) -> None:
    """Refuse the settings that would let ranks part ways (and wait for each other until the timeout)."""
    if time_limit_minutes:
        raise ValueError(
            "time_limit_minutes stops each process on its own clock, so ranks would stop at different steps and "
            "wait for each other; leave it null with multi_gpu_train.yaml (use max_epochs)."
        )


def rank_zero_only(handlers: Sequence[Any] | None, types: tuple[type, ...] = RANK_ZERO_HANDLERS) -> list[Any]:
    """``handlers`` on rank 0; on other ranks, those that are not of ``types`` (the ones every rank needs:
    LR schedule, validation, resuming, the sampler's epoch)."""
    handlers = list(handlers or [])
    if rank() == 0:
        return handlers
    from .mlflow_model import MLflowModelLogger  # rank 0 logs the model with its run

    return [h for h in handlers if not isinstance(h, types + (MLflowModelLogger,))]


class BroadcastBuffers:
    """Evaluator handler: at ``EPOCH_STARTED``, every rank takes rank 0's buffers (batch-norm running statistics).

    ``EPOCH_STARTED`` comes after every ``STARTED`` handler, so the copy also covers weights swapped in there (the
    EMA's average, whose buffers each rank averaged from its own batches).

    DDP keeps the parameters equal on every rank, but each rank's forward pass updates its batch-norm
    statistics from its own samples (DDP copies rank 0's only at the start of the next training forward pass).
    A sharded validation must run every shard with the same network, and with the one that rank 0 saves as
    the checkpoint; this is the copy DDP would make anyway. All ranks must run it (a collective).
    """

    def __init__(self, network: torch.nn.Module, src: int = 0) -> None:
        self.network, self.src = network, src

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Any = None) -> None:
        if world_size() > 1:
            module = getattr(self.network, "module", self.network)
            for buffer in module.buffers():
                dist.broadcast(buffer.data, self.src)


class DistributedLandmarkErrorMetric(LandmarkErrorMetric):
    """:class:`~scripts.metrics.LandmarkErrorMetric` over all ranks: ``compute()`` first gathers every rank's
    records (``all_gather_object``), in rank order, so each rank computes the figures of the whole split.

    With the validation loader's exact split (``AnatomyBatchSampler(even_divisible=False)``: contiguous shares of
    the one-process batches, nothing repeated), the gathered records are the one-process records in the
    one-process order, so the figures equal a one-process validation of the same weights. Every rank must
    compute it (it is a collective); without a process group it is the plain metric.
    """

    def reset(self) -> None:
        super().reset()
        self._gathered = False

    def compute(self) -> float:
        if world_size() > 1 and not getattr(self, "_gathered", False):
            parts: list[Any] = [None] * world_size()
            dist.all_gather_object(parts, self.records)
            self.records = [record for part in parts for record in part]
            self._gathered = True
        return super().compute()
