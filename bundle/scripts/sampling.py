"""Batches that hold one anatomy each, interleaved at random across anatomies (the GU2Net recipe)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed
from ignite.engine import Engine, Events
from monai.data import DataLoader
from torch.utils.data import Dataset, Sampler

__all__ = ["AnatomyBatchSampler", "SetSamplerEpoch", "anatomy_dataloader"]


class AnatomyBatchSampler(Sampler[list[int]]):
    """Yield index batches of a single anatomy, the batches of all anatomies shuffled together.

    The order of an epoch is drawn from ``seed`` and the epoch number given by :meth:`set_epoch`, so runs are
    reproducible, no two epochs repeat, and a resumed run continues with the order it would have had: the
    epoch comes from the engine (:class:`SetSamplerEpoch`, attached by the training config), not from a count
    of ``iter()`` calls. Without ``set_epoch`` every epoch repeats epoch 0's order (as ``DistributedSampler``).

    **Several processes** (``num_replicas > 1``, DDP). GU2Net's per-anatomy layers only take part in the
    gradient all-reduce if every rank runs the *same anatomy at the same step*, so, with ``even_divisible``
    (training):

    - every rank draws the same global order (same ``seed`` and epoch, no rank in the draw);
    - each anatomy's shuffled indices are cut into *global* batches of ``batch_size * num_replicas``, and the
      global batches of all anatomies are shuffled together; step ``k`` of every rank is a slice of global
      batch ``k``: rank ``r`` takes its ``r``-th contiguous ``batch_size`` (so ranks take disjoint samples of
      one anatomy, and every rank has the same number of steps);
    - an anatomy whose sample count leaves a last global batch of ``m`` samples that ``num_replicas`` does not
      divide is **padded**, as ``DistributedSampler`` pads: with the first samples of that anatomy's shuffled
      order, up to the next multiple of ``num_replicas`` (at most ``num_replicas - 1`` repeats per anatomy and
      epoch; every rank then takes ``m / num_replicas`` rounded up). So an epoch covers every sample, and a few
      twice. ``drop_last=True`` **drops** each anatomy's incomplete last global batch instead (no repeats,
      up to ``batch_size * num_replicas - 1`` samples per anatomy left out of the epoch, not always the same ones).

    With ``even_divisible=False`` (validation and evaluation: nothing is all-reduced per step) the batches
    are the one-process batches, each rank takes a contiguous share of them in order, and nothing is padded:
    every sample is seen exactly once, ranks may take different numbers of batches, and the ranks' outputs
    concatenated in rank order are the one-process outputs in the one-process order (so metrics gathered
    over ranks equal a one-process evaluation). It needs at least ``num_replicas`` batches.

    Args:
        data: the dataset's items (mappings); ``data[i][key]`` is item ``i``'s domain (anatomy index).
        batch_size: images per batch (per rank).
        key: the item key holding the domain.
        shuffle: shuffle within anatomies and the order of batches (False: dataset order, anatomy by anatomy).
        drop_last: drop each anatomy's last incomplete (global) batch; else keep it (padded across ranks).
        seed: base seed of the random order; the same on every rank.
        num_replicas, rank: DDP world size and this process's rank.
        even_divisible: with several replicas, the lockstep training split above (True) or the exact
            evaluation split (False).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        batch_size: int,
        key: str = "domain",
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_divisible: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in a world of {num_replicas} replicas.")
        self.domains = [int(item[key]) for item in data]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.even_divisible = even_divisible
        self.epoch = 0
        if num_replicas > 1 and not even_divisible and len(self._batches(1)) < num_replicas:
            raise ValueError(
                f"AnatomyBatchSampler: {len(self._batches(1))} batch(es) of {batch_size} for {num_replicas} ranks; "
                "every rank needs at least one: lower the batch size or use fewer processes."
            )

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order ``iter()`` yields (0 for the first; the training config sets it from the engine)."""
        self.epoch = epoch

    def _batches(self, replicas: int) -> list[list[int]]:
        """Per-anatomy batches of ``batch_size * replicas`` (padded or dropped as documented), in epoch order."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        size = self.batch_size * replicas
        batches: list[list[int]] = []
        for domain in sorted(set(self.domains)):
            idx = [i for i, d in enumerate(self.domains) if d == domain]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            for s in range(0, len(idx), size):
                chunk = idx[s : s + size]
                if len(chunk) < size and self.drop_last:
                    continue
                short = -len(chunk) % replicas  # pad the last global batch to split evenly across the ranks
                batches.append(chunk + [idx[k % len(idx)] for k in range(short)])
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self.num_replicas == 1:
            return self._batches(1)
        if self.even_divisible:  # lockstep: step k of every rank is a slice of global batch k (one anatomy)
            out = []
            for batch in self._batches(self.num_replicas):
                share = len(batch) // self.num_replicas
                out.append(batch[self.rank * share : (self.rank + 1) * share])
            return out
        batches = self._batches(1)  # exact: a contiguous share of the one-process batches, nothing repeated
        n, r = len(batches), self.num_replicas
        return batches[self.rank * n // r : (self.rank + 1) * n // r]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._rank_batches())

    def __len__(self) -> int:
        return len(self._rank_batches())


class SetSamplerEpoch:
    """Ignite handler: at every ``EPOCH_STARTED``, ``set_epoch(engine.state.epoch - 1)`` on the engine's
    loader's batch sampler (and sampler) where they have one.

    The order of an epoch then follows the engine's epoch counter: every DDP rank draws the same one, and a run
    resumed from a checkpoint continues with the order of the epoch it resumes at.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        loader = engine.state.dataloader
        for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(engine.state.epoch - 1)


def anatomy_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    key: str = "domain",
    drop_last: bool = False,
    distributed: bool = False,
    even_divisible: bool = True,
) -> DataLoader:
    """MONAI's ``DataLoader`` over ``dataset`` (a MONAI dataset: its items are ``dataset.data``) in one-anatomy
    batches. The one place every workflow builds its loader, so that the sampler's rules live in one spot.

    ``distributed``: split the batches over the ranks of the initialised process group (``batch_size`` per
    rank), in lockstep for training (``even_divisible``) or exactly once each for evaluation; see
    :class:`AnatomyBatchSampler`.
    """
    replicas, rank = 1, 0
    if distributed:
        if not torch.distributed.is_initialized():
            raise RuntimeError("anatomy_dataloader(distributed=True) needs an initialised process group (torchrun).")
        replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    sampler = AnatomyBatchSampler(
        dataset.data, batch_size, key=key, shuffle=shuffle, drop_last=drop_last, seed=seed,
        num_replicas=replicas, rank=rank, even_divisible=even_divisible,
    )  # fmt: skip
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
