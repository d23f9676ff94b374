"""The batch orders `make bench` compares, and the padding waste of each.

Padding every batch to its longest example (chapters 02 and 04 do) wastes the pad positions: the model computes them
and the loss ignores them. Plain shuffling mixes long and short examples; transformers' `LengthGroupedSampler` (what
`TrainingArguments(train_sampling_strategy="group_by_length")` uses) shuffles, cuts the order into mega-batches, and
sorts each by length, so that consecutive examples have similar lengths and batches pad little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from utils.checks import check_int


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Plain shuffling, as DataLoader(shuffle=True) batches it: a random permutation cut into consecutive batches."""
    check_int("n", n, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """transformers' LengthGroupedSampler order (its default mega-batches: min(n // (4 x batch_size), 50) batches),
    cut into consecutive batches as DataLoader(sampler=..., batch_size=...) does."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    check_int("batch_size", batch_size, minimum=1)
    order = list(LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded_positions(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Positions a model computes when each batch is padded to its longest example: len(batch) x its max length."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The fraction of the padded batches' positions that are padding (sum(lengths) of them are real tokens)."""
    positions = padded_positions(lengths, batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1 - real / positions if positions else 0.0
