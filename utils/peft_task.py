"""Chapter 01's task, the same for every PEFT method: the sentiment of a movie review, as generation.

The data is Rotten Tomatoes (Pang and Lee, ACL 2005; on the Hub as cornell-movie-review-data/rotten_tomatoes:
8,530 training, 1,066 validation and 1,066 test sentences, `label` 0 = negative, 1 = positive). Smoke mode reads
fixtures in the same schema from data/fixtures/. The model reads "Review: ...\\nSentiment:" and learns to continue
with " positive" or " negative".
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from utils.checks import check_field, check_int, read_records
from utils.errors import CourseError
from utils.hub import hub_errors

DATASET = "cornell-movie-review-data/rotten_tomatoes"
LABELS = ("negative", "positive")  # the dataset's label 0 and 1 (its ClassLabel names are "neg" and "pos")


def review_prompt(text: str) -> str:
    """The prompt the model completes with a label word."""
    return f"Review: {text.strip()}\nSentiment:"


def _load_hub(source: str, split: str) -> list[tuple[str, dict]]:
    from datasets import load_dataset

    with hub_errors(source, "dataset"):
        dataset = load_dataset(source, split=split)
    return [(f"record {i}", record) for i, record in enumerate(dataset.to_list())]


def load_reviews(source: str | Path, split: str = "train", limit: int | None = None,
                 seed: int = 0) -> list[tuple[str, str]]:
    """Reviews as (prompt, completion) pairs, shuffled with `seed`, the first `limit` kept.

    `source` is a local .jsonl file (one {"text": ..., "label": 0 or 1} per line) or a Hub dataset id, whose `split`
    is read. A bad record is a CourseError naming the file, the record and the field.
    """
    check_int("limit", limit, minimum=1, optional=True, hint="None keeps every review")
    path = Path(source)
    if path.suffix == ".jsonl":
        where, records = str(path), read_records(path)
    else:
        where, records = f"{source} ({split})", _load_hub(str(source), split)
    if not records:
        raise CourseError(f"{where} has no reviews: nothing to train on")
    pairs = []
    for at, record in records:
        text, label = check_field(record, "text", f"{where}, {at}"), record.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise CourseError(f"{where}, {at}: field 'label' is {label!r}; use 0 (negative) or 1 (positive)")
        pairs.append((review_prompt(text), " " + LABELS[label]))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def collate(pairs: list[tuple[str, str]], tokenizer) -> dict:
    """Tokenize (prompt, completion) pairs into a right-padded batch whose labels are the completion tokens only
    (the prompt and the padding get -100, which the loss ignores); the completion ends with end-of-text."""
    import torch

    rows = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows]),
    }


def review_batches(pairs: list[tuple[str, str]], tokenizer, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """An endless stream of shuffled batches (a new order each epoch; the same stream for the same seed)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size={batch_size!r}: use a whole number from 1 to the {len(pairs)} reviews")
    rng = random.Random(seed)
    while True:
        order = rng.sample(pairs, len(pairs))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate(order[i:i + batch_size], tokenizer)
