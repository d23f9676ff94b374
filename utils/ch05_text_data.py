"""Chapter 05's data: every window of a long text as next-token examples (`GPTDatasetV1`, `create_dataloader_v1`, after
rasbt/LLMs-from-scratch chapter 2), with any tokenizer that has `encode(text)` instead of tiktoken (which downloads its
files at first use): GPT-2's BPE from the Hub in full mode, the tiny local one in smoke mode."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from utils.checks import check_int
from utils.errors import CourseArgumentError
from utils.hub import hub_errors

GPT2_TOKENIZER_ID = "openai-community/gpt2"


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a whole text, without the "longer than the model's maximum length" warning (windows cut it)."""
    try:
        return list(tokenizer.encode(text, verbose=False))  # transformers' tokenizers
    except TypeError:  # tokenizers without the `verbose` keyword (tiktoken, test doubles)
        return list(tokenizer.encode(text))


class GPTDatasetV1(Dataset):
    """Every window of `max_length` tokens, `stride` tokens apart; the target is the input shifted by one token."""

    def __init__(self, txt: str, tokenizer, max_length: int, stride: int):
        check_int("max_length", max_length, minimum=1)
        check_int("stride", stride, minimum=1)
        if not isinstance(txt, str):
            raise CourseArgumentError(f"GPTDatasetV1(): txt must be the text itself (a str), got a {type(txt).__name__}: "
                                  "read the file first (utils.checks.read_text)")
        token_ids = encode_text(tokenizer, txt)
        if len(token_ids) <= max_length:
            raise ValueError(f"the text has {len(token_ids)} tokens: a window of max_length={max_length} needs at "
                             f"least {max_length + 1} (inputs plus the next token); use a longer text or a smaller "
                             "max_length")
        starts = range(0, len(token_ids) - max_length, stride)
        self.input_ids = [torch.tensor(token_ids[i:i + max_length]) for i in starts]
        self.target_ids = [torch.tensor(token_ids[i + 1:i + max_length + 1]) for i in starts]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                         shuffle: bool = True, drop_last: bool = True, num_workers: int = 0, *,
                         tokenizer=None) -> DataLoader:
    """A DataLoader of (inputs, targets) windows over `txt`; `tokenizer` defaults to GPT-2's BPE from the Hub."""
    check_int("batch_size", batch_size, minimum=1)
    check_int("num_workers", num_workers, minimum=0)
    if tokenizer is None:
        from transformers import AutoTokenizer

        with hub_errors(GPT2_TOKENIZER_ID, kind="tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER_ID)
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(f"only {len(dataset)} windows of {max_length} tokens, fewer than batch_size={batch_size} "
                         "with drop_last=True: the loader would be empty; lower batch_size or max_length")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers)
