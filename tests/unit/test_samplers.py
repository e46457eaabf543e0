"""Iteration-based samplers: passes over the data, disjoint ranks, epochs."""

from __future__ import annotations

from uda.data.samplers import RandomStreamSampler, ShardSampler


def test_each_pass_is_a_new_permutation() -> None:
    indices = list(RandomStreamSampler(10, 30, seed=1))
    passes = [indices[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert passes[0] != passes[1]


def test_ranks_draw_disjoint_samples_from_one_stream() -> None:
    rank0 = list(RandomStreamSampler(10, 5, rank=0, world=2, seed=3))
    rank1 = list(RandomStreamSampler(10, 5, rank=1, world=2, seed=3))
    assert len(rank0) == len(rank1) == 5
    assert sorted(rank0 + rank1) == list(range(10))  # together: exactly one pass, no overlap
    single = list(RandomStreamSampler(10, 10, seed=3))
    assert rank0 == single[0::2] and rank1 == single[1::2]


def test_epochs_and_seeds_change_the_order_reproducibly() -> None:
    sampler = RandomStreamSampler(50, 50, seed=0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(RandomStreamSampler(50, 50, seed=1)) != first


def test_eval_shards_cover_every_sample_once() -> None:
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
