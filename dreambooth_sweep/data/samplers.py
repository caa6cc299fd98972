"""Batch order: a pure function of (``train.seed``, epoch), so a resumed run replays it exactly.

The trainer's position is (epoch, batches already taken in it): after a resume it sets the epoch and
skips that many batches. Both samplers yield the same number of batches every epoch, so the position
follows from the global step alone, and shard across processes by padding to a multiple of them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import torch

__all__ = ["BucketBatchSampler", "EpochBatchSampler", "EpochSampler"]


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices whose order is a pure function of (seed, epoch), sharded across processes.

    With it a run resumed at step k replays batch k exactly, without relying on RNG snapshots.
    """

    def __init__(self, length: int, seed: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.length, self.seed, self.num_replicas, self.rank = length, seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=_generator(self.seed, self.epoch)).tolist()
        # Pad so every process gets the same number of indices.
        per_rank = -(-self.length // self.num_replicas)
        order = (order * self.num_replicas)[: per_rank * self.num_replicas]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """:class:`EpochSampler`'s indices in consecutive batches (the last one may be shorter): exactly
    the batches of ``DataLoader(sampler=EpochSampler(...), batch_size=n)``."""

    def __init__(self, length: int, batch_size: int, seed: int, *, num_replicas: int = 1, rank: int = 0):
        self.indices = EpochSampler(length, seed, num_replicas=num_replicas, rank=rank)
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.indices.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.indices)
        return iter(order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size))

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches that never mix buckets: each bucket's indices shuffled and cut into batches (the last
    of a bucket may be shorter), then the batches shuffled; all of it seeded by (seed, epoch).

    Args:
        buckets: the bucket of every dataset index.
        batch_size: indices per batch (per process).
        seed: ``train.seed``.
        num_replicas, rank: processes share the epoch's batches round-robin (padded to a multiple).
    """

    def __init__(
        self,
        buckets: Sequence[Hashable],
        batch_size: int,
        seed: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        groups: dict[Hashable, list[int]] = {}
        for index, bucket in enumerate(buckets):
            groups.setdefault(bucket, []).append(index)
        self.groups = [groups[b] for b in sorted(groups)]  # a fixed order, whatever the dict's
        self.batch_size, self.seed = batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        g = _generator(self.seed, self.epoch)
        batches = []
        for members in self.groups:
            order = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            batches += [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        total = len(self) * self.num_replicas
        batches = (batches * self.num_replicas)[:total]
        return iter(batches[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        count = sum(-(-len(m) // self.batch_size) for m in self.groups)
        return -(-count // self.num_replicas)
