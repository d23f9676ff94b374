"""Padding waste of a batching plan (`make bench`, section 4): plain shuffling against length-grouped batching.

Padding to the longest example in a batch (chapters 02 and 04 do) wastes the pad positions: the model computes them
and the loss ignores them. Length-grouped batching is transformers' `LengthGroupedSampler`, as chapter 02 uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Plain shuffling, as DataLoader(shuffle=True) batches it: a random permutation cut into consecutive batches."""
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """transformers' LengthGroupedSampler's order (chapter 02's; Trainer's `group_by_length`) cut into batches."""
    order = list(LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The fraction of the padded batches' positions that are padding: each batch pads to its longest example,
    so it holds len(batch) x max length positions of which sum(lengths) are real tokens."""
    positions = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1 - real / positions if positions else 0.0
