"""utils.batching's LengthGroupedBatchSampler (chapter 02's batches): every index once, less padding, the order
reproducible from torch's seed. (`make bench` measures transformers' LengthGroupedSampler instead: bench/padding.py.)"""

from __future__ import annotations

import torch

from bench.padding import padding_fraction, shuffled_batches
from utils.batching import LengthGroupedBatchSampler


def test_length_grouped_sampler_covers_every_index_once_and_pads_less():
    lengths = [(i * 37) % 100 + 1 for i in range(200)]
    sampler = LengthGroupedBatchSampler(lengths, batch_size=8, mega_batch_mult=5,
                                        generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25  # 5 mega-batches of 40
    assert sorted(i for b in batches for i in b) == list(range(200))
    plain = shuffled_batches(200, 8, torch.Generator().manual_seed(0))
    assert padding_fraction(lengths, batches) < padding_fraction(lengths, plain) / 2
    # every batch lies within one mega-batch sorted by length: within a batch, lengths are non-increasing
    assert all(lengths[b[i]] >= lengths[b[i + 1]] for b in batches for i in range(len(b) - 1))


def test_length_grouped_sampler_reproducible_from_the_global_seed_and_drop_last():
    lengths = list(range(1, 31))
    sampler = LengthGroupedBatchSampler(lengths, batch_size=4, mega_batch_mult=2)
    torch.manual_seed(3)
    first = list(sampler)
    torch.manual_seed(3)
    assert list(sampler) == first  # the order comes from torch's global random state, like shuffle=True
    assert list(sampler) != first  # the next epoch draws a new order
    dropped = LengthGroupedBatchSampler(lengths, batch_size=4, mega_batch_mult=2, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 7 and all(len(b) == 4 for b in dropped)
    assert len(sampler) == 8  # mega-batches of 8, 8, 8, 6 -> 2 + 2 + 2 + 2 batches
