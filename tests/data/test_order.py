"""Sample order and per-item seeding do not depend on the number of processes or on resuming."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from s4v_data.order import SeededItems, ShardSampler


class RandomItems(Dataset):
    """Each item is a draw from torch's global generator, like an augmented clip."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3)


def test_two_ranks_see_the_same_global_batches_as_one_process() -> None:
    one = list(ShardSampler(10, shuffle=True, seed=5, drop_last=True))
    ranks = [
        list(ShardSampler(10, rank=r, world_size=2, shuffle=True, seed=5, drop_last=True))
        for r in range(2)
    ]
    # Global step s of batch 2 per rank = items 4s..4s+3 of the single-process order.
    for step in range(2):
        single = set(one[4 * step : 4 * step + 4])
        assert (
            set(ranks[0][2 * step : 2 * step + 2]) | set(ranks[1][2 * step : 2 * step + 2])
            == single
        )


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    sampler = ShardSampler(10, shuffle=True, seed=5, drop_last=False)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    fresh = ShardSampler(10, shuffle=True, seed=5, drop_last=False)
    fresh.set_epoch(1)
    assert list(fresh) == second  # a resumed run rebuilds the same order


def test_evaluation_shards_cover_every_item_once() -> None:
    shards = [
        list(ShardSampler(7, rank=r, world_size=3, shuffle=False, drop_last=False))
        for r in range(3)
    ]
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    assert [
        len(ShardSampler(7, rank=r, world_size=3, shuffle=False, drop_last=False)) for r in range(3)
    ] == [3, 2, 2]


def test_items_are_seeded_by_epoch_and_index_and_leave_the_caller_generator_alone() -> None:
    items = SeededItems(RandomItems(), seed=1)
    torch.manual_seed(0)
    expected_next = torch.rand(1)

    torch.manual_seed(0)
    a = items[3]
    assert torch.equal(torch.rand(1), expected_next)  # the caller's stream did not move
    torch.manual_seed(123)
    assert torch.equal(items[3], a)  # the item does not depend on the caller's state
    assert not torch.equal(items[4], a)
    items.set_epoch(1)
    assert not torch.equal(items[3], a)
