"""Batches that hold one anatomy each, interleaved at random across anatomies (the GU2Net recipe)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader
from torch.utils.data import Dataset, Sampler

__all__ = ["AnatomyBatchSampler", "anatomy_dataloader"]


class AnatomyBatchSampler(Sampler[list[int]]):
    """Yield index batches of a single anatomy, the batches of all anatomies shuffled together.

    Every ``iter()`` (one per epoch) draws a fresh order from ``seed`` and an epoch counter, so runs are
    reproducible and no two epochs repeat. With ``num_replicas > 1`` (DDP) each rank takes every
    ``num_replicas``-th batch of the same global order; ``set_epoch`` keeps ranks (and resumed runs) in step.

    Args:
        data: the dataset's items (mappings); ``data[i][key]`` is item ``i``'s domain (anatomy index).
        batch_size: images per batch.
        key: the item key holding the domain.
        shuffle: shuffle within anatomies and the order of batches (False: dataset order, anatomy by anatomy).
        drop_last: drop each anatomy's last incomplete batch.
        seed: base seed of the random order.
        num_replicas, rank: DDP world size and this process's rank.
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.domains = [int(item[key]) for item in data]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[list[int]] = []
        for domain in sorted(set(self.domains)):
            idx = [i for i, d in enumerate(self.domains) if d == domain]
            if self.shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas  # every rank takes the same number of steps
            batches = batches[self.rank : usable : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


def anatomy_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    key: str = "domain",
) -> DataLoader:
    """MONAI's ``DataLoader`` over ``dataset`` (a MONAI dataset: its items are ``dataset.data``) in one-anatomy
    batches. The one place every workflow builds its loader, so that the sampler's rules live in one spot."""
    sampler = AnatomyBatchSampler(dataset.data, batch_size, key=key, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)
