"""Instruction data for chapter 04 (after rasbt/LLMs-from-scratch, chapter 7): loading and validating it,
the Alpaca prompt format, the 85/10/5 split, the pre-tokenized dataset and the padding/masking collate function,
and the one small tokenizer interface the chapter uses in both modes.

The notebook writes `format_input`, `split_data`, `InstructionDataset` and `custom_collate_fn` out (a test proves
the copies identical); the rest is plumbing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from utils.checks import check_field, check_fraction, check_int, read_json
from utils.errors import CourseError
from utils.hub import hub_errors

#: The data sets the chapter can train on (same schema: a JSON list of {instruction, input, output}).
DATA_SOURCES = {
    # 1,100 entries, the source material's data (about 200 kB)
    "instruction-data": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    # 52,002 entries (about 22 MB): Stanford Alpaca; needs a smaller batch and allowed_max_length (see the README)
    "alpaca-52k": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
FIELDS = ("instruction", "input", "output")


def validate_instruction_data(data, source: str = "the data") -> list[dict]:
    """Check a non-empty list of {instruction, input, output} records; raise CourseError naming the source, the
    record index and the field for a record that is not an object, a missing key, a non-string value, or an empty
    instruction or output; warn with the count of duplicates."""
    if not isinstance(data, list):
        keys = f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else ""
        raise CourseError(f"{source}: expected a JSON list of records [{{\"instruction\": ..., \"input\": ..., "
                          f"\"output\": ...}}, ...], got a {type(data).__name__}{keys}; put the records in a list")
    if not data:
        raise CourseError(f"{source} holds no records (an empty list): there is nothing to train on; "
                          "pass a file with {instruction, input, output} records")
    seen, duplicates = set(), 0
    for i, record in enumerate(data):
        where = f"{source}, record {i}"
        for field in FIELDS:  # "" is a fine input (no input); instruction and output must say something
            check_field(record, field, where, nonempty=field != "input",
                        fix=f"every record needs {FIELDS} (use \"\" for an empty input)")
        key = tuple(record[field] for field in FIELDS)
        duplicates += key in seen
        seen.add(key)
    if duplicates:
        warnings.warn(f"{source}: {duplicates} duplicate record(s) (same instruction, input and output); "
                      "they are kept, but they weigh twice in training and can leak between splits", stacklevel=2)
    return data


def load_instruction_data(path_or_name: str | os.PathLike) -> list[dict]:
    """The validated records of a local UTF-8 JSON (or JSON Lines) file, or of one of `DATA_SOURCES` by name
    (downloaded once, cached). Bad encoding, syntax, structure or records are a CourseError naming the file, the
    record and the field."""
    if str(path_or_name) in DATA_SOURCES:
        from utils.download import download

        path = download(DATA_SOURCES[str(path_or_name)], f"{path_or_name}.json")
    else:
        path = Path(path_or_name)
        if not path.exists():
            raise CourseError(f"{path}: no such file; pass the path of a JSON file of {{instruction, input, output}} "
                              f"records, or one of the named data sets: {', '.join(DATA_SOURCES)}")
    return validate_instruction_data(read_json(path), source=str(path))


def format_input(entry):
    instruction_text = (
        f"Below is an instruction that describes a task. "
        f"Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text


def split_data(data, train_frac=0.85, test_frac=0.10):
    check_fraction("train_frac", train_frac)
    check_fraction("test_frac", test_frac)
    check_fraction("train_frac + test_frac", round(train_frac + test_frac, 9), hint="validation gets the rest")
    # The source's order: the first 85% train, the next 10% test, the rest (5%) validation
    train_portion = int(len(data) * train_frac)
    test_portion = int(len(data) * test_frac)
    train_data = data[:train_portion]
    test_data = data[train_portion:train_portion + test_portion]
    val_data = data[train_portion + test_portion:]
    for name, split, frac in (("train", train_data, train_frac), ("test", test_data, test_frac),
                              ("validation", val_data, 1 - train_frac - test_frac)):
        if frac > 1e-9 and not split:  # a split that was asked for but got no record
            raise CourseError(f"split_data: {len(data)} records leave the {name} split empty at train_frac={train_frac}, "
                              f"test_frac={test_frac}; use more records or change the fractions")
    return train_data, test_data, val_data


class InstructionDataset(Dataset):
    def __init__(self, data, tokenizer, mask_instructions=False):
        self.data = data
        self.mask_instructions = mask_instructions
        self.encoded_texts, self.instruction_lengths = [], []
        for entry in data:  # pre-tokenize every prompt + response once
            instruction_plus_input = format_input(entry)
            response_text = f"\n\n### Response:\n{entry['output']}"
            self.encoded_texts.append(tokenizer.encode(instruction_plus_input + response_text))
            self.instruction_lengths.append(len(tokenizer.encode(instruction_plus_input)))

    def __getitem__(self, index):
        if self.mask_instructions:  # the collate function then ignores the prompt's targets
            return self.instruction_lengths[index], self.encoded_texts[index]
        return self.encoded_texts[index]

    def __len__(self):
        return len(self.data)


def custom_collate_fn(batch, pad_token_id=50256, ignore_index=-100, allowed_max_length=None, device="cpu"):
    check_int("pad_token_id", pad_token_id, minimum=0, hint="GPT-2 pads with its <|endoftext|> id, 50256")
    check_int("allowed_max_length", allowed_max_length, minimum=1, optional=True)
    # Items are token lists, or (instruction_length, token list) pairs to mask the prompt's targets too
    items = [item if isinstance(item, tuple) else (0, item) for item in batch]
    batch_max_length = max(len(tokens) + 1 for _, tokens in items)  # +1: the <|endoftext|> appended below
    inputs_lst, targets_lst = [], []
    for instruction_length, tokens in items:
        new_item = list(tokens) + [pad_token_id]  # <|endoftext|> ends the response
        padded = new_item + [pad_token_id] * (batch_max_length - len(new_item))
        inputs = torch.tensor(padded[:-1])  # the last token is never an input
        targets = torch.tensor(padded[1:])  # targets: the inputs shifted by one
        targets[len(tokens):] = ignore_index  # keep the first <|endoftext|> target, ignore the padding after it
        if instruction_length > 0:
            targets[:instruction_length - 1] = ignore_index  # no loss on predicting the prompt
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


class Tokenizer:
    """The chapter's one small tokenizer interface: `encode(text) -> list[int]`, `decode(ids) -> str`, `eos_id`.

    Full mode: the GPT-2 BPE (transformers' tokenizer of openai-community/gpt2; <|endoftext|> = 50256);
    smoke mode: the tiny checkpoint's byte-level BPE. `<|endoftext|>` written in a text encodes to `eos_id`.
    """

    def __init__(self, name_or_path: str | os.PathLike):
        from transformers import AutoTokenizer

        with hub_errors(name_or_path, kind="tokenizer"):
            self.hf = AutoTokenizer.from_pretrained(str(name_or_path))
        if self.hf.eos_token_id is None:
            raise CourseError(f"the tokenizer of {name_or_path!r} has no end-of-text token")
        self.eos_id = self.hf.eos_token_id  # also the padding id: GPT-2 has no pad token
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids))
