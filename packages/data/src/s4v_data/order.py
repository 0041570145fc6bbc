"""Reproducible sample order and augmentation, independent of workers, processes and resume point.

Every training item is augmented from a torch generator seeded by ``(seed, epoch, index)``, and the
epoch's order is a permutation seeded by ``(seed, epoch)`` that ranks take turns from. So an epoch
sees the same clips whether it runs in one process or in several, with any number of loader
workers, and whether or not the run was interrupted before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_ORDER_INDEX = 2**32 - 1  # pseudo item index whose seed shuffles the epoch's order


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch."""
    state = np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SeededItems(Dataset):
    """Wraps a dataset whose randomness comes from torch's global generator (as ``s4v_data``'s).

    Each ``dataset[index]`` runs with the generator seeded from ``(seed, epoch, index)``; the
    caller's generator state is restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            return self.dataset[index]


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of a dataset: items ``rank, rank + world, ...`` of an order.

    Args:
        length: dataset size.
        rank: this process's rank; world_size: number of processes.
        shuffle: a permutation seeded by ``(seed, epoch)``; otherwise the dataset order.
        seed: shuffle seed.
        drop_last: cut the order to a multiple of ``world_size`` so every rank gets as many
            items (training); otherwise the last ranks may get one item fewer (evaluation: every
            item is seen exactly once).
    """

    def __init__(
        self,
        length: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool,
    ) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.length))
        else:
            generator = torch.Generator().manual_seed(
                item_seed(self.seed, self.epoch, _ORDER_INDEX)
            )
            order = torch.randperm(self.length, generator=generator).tolist()
        if self.drop_last:
            order = order[: self.length - self.length % self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        return len(range(self.rank, self.length, self.world_size))


def training_order(
    dataset: Dataset, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> tuple[SeededItems, ShardSampler]:
    """An epoch's training items (each augmented from its own seed) and rank ``rank``'s share.

    The order is a permutation of ``(seed, epoch)`` cut to whole batches on every rank
    (``drop_last``): a pure function of seed and epoch, so a resumed run sees the same clips.
    """
    items = SeededItems(dataset, seed=seed)
    items.set_epoch(epoch)
    sampler = ShardSampler(
        len(items), rank=rank, world_size=world_size, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return items, sampler


def evaluation_shard(dataset: Dataset, *, rank: int = 0, world_size: int = 1) -> ShardSampler:
    """Rank ``rank``'s share of an evaluation set, in order; every item is seen exactly once."""
    return ShardSampler(
        len(dataset),  # type: ignore[arg-type]
        rank=rank,
        world_size=world_size,
        shuffle=False,
        drop_last=False,
    )
