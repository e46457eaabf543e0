"""Samplers for iteration-based UDA training, single-process or distributed.

Lightning's automatic distributed sampler would shard an epoch of ``iters_per_epoch`` batches across
ranks, so adding GPUs would cut the number of iterations. UDA recipes are stated in iterations, so each
rank here draws ``iters_per_epoch`` batches itself, disjoint from the other ranks' (the global batch
grows with the number of ranks, the iteration count does not).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class RandomStreamSampler(Sampler[int]):
    """``num_samples`` indices for this rank from a stream of fresh random permutations of the dataset.

    Every rank builds the same stream (seeded by ``seed`` and the epoch) and takes every ``world``-th
    index starting at ``rank``, so ranks draw disjoint samples at each step. Within a rank every sample
    is seen once per pass over the data and the order changes at every pass.
    """

    def __init__(self, dataset_size: int, num_samples: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.dataset_size, self.num_samples = int(dataset_size), int(num_samples)
        self.rank, self.world, self.seed = int(rank), int(world), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch; gives each epoch its own permutations."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.world
        passes = -(-total // self.dataset_size)
        stream = torch.cat([torch.randperm(self.dataset_size, generator=generator) for _ in range(passes)])
        return iter(stream[self.rank : total : self.world].tolist())


class ShardSampler(Sampler[int]):
    """Evaluation shard: indices rank, rank + world, ...; no padding, so metrics count every sample once."""

    def __init__(self, dataset_size: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, dataset_size, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
