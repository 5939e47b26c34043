"""Length-grouped batches (persodpo.train.batching) under accelerate's real rank sharding:
every pair once per epoch across ranks, the order fixed by seed + epoch, resumable mid-epoch."""

from __future__ import annotations

import random

import pytest
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from torch.utils.data import BatchSampler

from persodpo.train.batching import LengthGroupedPairSampler, grouped_order, padded_share, random_order

PER_DEVICE, WORLD = 2, 2


def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(50, 900) for _ in range(n)]


def _rank_batches(sampler, rank, skip=0):
    """What rank ``rank`` of WORLD receives: accelerate's BatchSamplerShard over the per-device
    BatchSampler, as ``accelerator.prepare`` builds it (and SkipBatchSampler for a resume)."""
    shard = BatchSamplerShard(BatchSampler(sampler, PER_DEVICE, drop_last=False), num_processes=WORLD,
                              process_index=rank, even_batches=True)
    return list(SkipBatchSampler(shard, skip) if skip else shard)


@pytest.mark.parametrize("n", [64, 61])
def test_every_pair_once_per_epoch_across_two_ranks(n):
    lengths = _lengths(n)
    for epoch in (0, 1):
        sampler = LengthGroupedPairSampler(lengths, batch_size=PER_DEVICE * WORLD, seed=42)
        sampler.set_epoch(epoch)
        seen = [i for r in range(WORLD) for b in _rank_batches(sampler, r) for i in b]
        assert set(seen) == set(range(n))
        # A remainder is filled by accelerate (even_batches) with pairs from the epoch's start,
        # as with the default sampler; nothing else repeats.
        global_batch = PER_DEVICE * WORLD
        assert len(seen) == -(-n // global_batch) * global_batch
        assert len(seen) - len(set(seen)) == len(seen) - n


def test_order_depends_on_seed_and_epoch_only():
    lengths = _lengths(100)
    a, b = (LengthGroupedPairSampler(lengths, batch_size=4, seed=7) for _ in range(2))
    assert list(a) == list(b) and sorted(a) == list(range(100))
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(LengthGroupedPairSampler(lengths, batch_size=4, seed=9)) != list(b)


def test_a_run_resumed_mid_epoch_gets_the_rest_of_that_epoch():
    """A fresh process (new sampler), epoch 1, 5 steps done: each rank gets exactly the batches the
    uninterrupted run would have had from step 6 on."""
    lengths = _lengths(64)
    full = LengthGroupedPairSampler(lengths, batch_size=PER_DEVICE * WORLD, seed=42)
    full.set_epoch(1)
    fresh = LengthGroupedPairSampler(lengths, batch_size=PER_DEVICE * WORLD, seed=42)
    fresh.set_epoch(1)
    for r in range(WORLD):
        assert _rank_batches(fresh, r, skip=5) == _rank_batches(full, r)[5:]


def test_two_ranks_see_the_global_batches_of_one_rank_with_twice_the_batch():
    lengths = _lengths(40)
    order = grouped_order(lengths, PER_DEVICE * WORLD, seed=3)
    ranks = [_rank_batches(LengthGroupedPairSampler(lengths, batch_size=PER_DEVICE * WORLD, seed=3), r)
             for r in range(WORLD)]
    for step in range(len(ranks[0])):
        assert ranks[0][step] + ranks[1][step] == order[step * 4:(step + 1) * 4]


def test_grouping_cuts_padding_and_puts_the_longest_batch_first():
    lengths = _lengths(512, seed=1)
    chosen, rejected = lengths, [max(1, x - 30) for x in lengths]
    bs = 8

    def share(order):
        return padded_share(chosen, rejected, [order[k:k + bs] for k in range(0, len(order), bs)])

    grouped, rand = share(grouped_order(lengths, bs, seed=0)), share(random_order(len(lengths), 0))
    assert rand > 0.3 and grouped < 0.15, (rand, grouped)
    order = grouped_order(lengths, bs, seed=0)
    assert max(lengths) in [lengths[i] for i in order[:bs]]


def test_padded_share_counts_trls_layout():
    # one batch of 2 pairs: rows 10, 4 (chosen) and 6, 2 (rejected), padded to 10: 22 real of 40
    assert padded_share([10, 4], [6, 2], [[0, 1]]) == pytest.approx(1 - 22 / 40)
    assert padded_share([5], [5], [[0]]) == 0.0


def test_the_epoch_hook_of_transformers_is_where_persodpo_expects_it():
    """PersoDPOTrainer sets the sampler's epoch in Trainer._run_epoch(epoch=...): pinned here, so an
    upgrade that renames the hook fails loudly instead of silently repeating epoch 0's order."""
    import inspect

    from transformers import Trainer

    assert "epoch" in inspect.signature(Trainer._run_epoch).parameters
    src = inspect.getsource(Trainer._inner_training_loop)
    assert "self._run_epoch(" in src and "epoch=epoch" in src
