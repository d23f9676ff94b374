"""Length-grouped batching, and the padding waste it removes (chapter 02's default).

Padding to the longest example in a batch (chapters 02 and 04 do) wastes the pad positions: the model computes
them and the loss ignores them. Batches of similar lengths waste little. `LengthGroupedBatchSampler` keeps the
randomness of shuffling: each epoch it shuffles the examples, cuts them into mega-batches of
`batch_size * mega_batch_mult`, sorts each mega-batch by length, cuts it into batches, and shuffles the batches
(the same idea as transformers' `group_by_length=True`).

Use: `DataLoader(dataset, batch_sampler=LengthGroupedBatchSampler(lengths, batch_size=8), collate_fn=...)`.
Without a `generator` it draws its seed from torch's global random state when an epoch starts, as
`DataLoader(shuffle=True)` does, so `torch.manual_seed` (and a training loop that saves and restores torch's
random state to resume) reproduce its order exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from utils.checks import check_int


class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of indices whose examples have similar lengths, in a random order each epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, mega_batch_mult: int = 16, drop_last: bool = False,
                 generator: torch.Generator | None = None):
        check_int("batch_size", batch_size, minimum=1)
        check_int("mega_batch_mult", mega_batch_mult, minimum=1)
        self.lengths = list(lengths)
        for i, length in enumerate(self.lengths):
            check_int(f"lengths[{i}]", length, minimum=0, hint="one token count per example")
        self.batch_size = batch_size
        self.mega_batch_size = batch_size * mega_batch_mult
        self.drop_last = drop_last
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        generator = self.generator
        if generator is None:  # like RandomSampler: a seed from the global random state, drawn at each epoch
            generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.mega_batch_size):
            mega = sorted(order[start:start + self.mega_batch_size], key=lambda i: self.lengths[i], reverse=True)
            batches += [mega[i:i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        if self.drop_last:
            batches = [batch for batch in batches if len(batch) == self.batch_size]
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]

    def __len__(self) -> int:
        n = len(self.lengths)
        if not self.drop_last:
            return sum(-(-min(self.mega_batch_size, n - s) // self.batch_size) for s in range(0, n, self.mega_batch_size))
        return sum(min(self.mega_batch_size, n - s) // self.batch_size for s in range(0, n, self.mega_batch_size))
