"""Chapter 04: instruction data validation, format_input, the split, InstructionDataset and custom_collate_fn."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from utils.ch04_gpt2 import load_instruction_data, validate_instruction_data
from utils.errors import CourseError
from utils.lessons.instruction_data import (
    ALPACA_TEMPLATE,
    InstructionDataset,
    custom_collate_fn,
    format_input,
    split_data,
)
from utils.smoke import fixture_path, tiny_checkpoint

# the 1,100-entry data, where this machine has it: in shared/ beside the checkout (as on the course's machines and CI)
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data.json"
GOOD = {"instruction": "Name a color.", "input": "", "output": "Blue."}


def test_format_input_with_and_without_input():
    assert format_input(GOOD) == ("Below is an instruction that describes a task. Write a response that "
                                  "appropriately completes the request.\n\n### Instruction:\nName a color.")
    entry = {"instruction": "Translate.", "input": "Hallo", "output": "Hello"}
    assert format_input(entry).endswith("### Instruction:\nTranslate.\n\n### Input:\nHallo")


@pytest.mark.parametrize("record,match", [
    ({"instruction": "x", "output": "y"}, r"data.json, record 1: no field 'input'.*use \"\" for an empty input"),
    ({"instruction": "x", "input": 3, "output": "y"}, r"data.json, record 1: field 'input' is int 3, expected text"),
    ({"instruction": "  ", "input": "", "output": "y"}, r"data.json, record 1: field 'instruction' is empty; fill"),
    ({"instruction": "x", "input": "", "output": ""}, r"data.json, record 1: field 'output' is empty"),
    ("text", r"data.json, record 1: a str, expected an object"),
])
def test_validation_names_record_and_field(record, match):
    with pytest.raises(CourseError, match=match):
        validate_instruction_data([GOOD, record], source="data.json")


def test_duplicates_warn_with_count(tmp_path):
    other = {**GOOD, "output": "Red."}
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, other, GOOD, GOOD, other]))
    with pytest.warns(UserWarning, match="3 duplicate record"):
        assert len(load_instruction_data(path)) == 5


def test_fixture_loads_without_warnings(recwarn):
    data = load_instruction_data(fixture_path("instructions"))
    assert len(data) == 60 and not [w for w in recwarn if "duplicate" in str(w.message)]


def test_split_sizes_and_order_on_the_fixture():
    data = list(range(60))
    train, test, val = split_data(data)
    assert (len(train), len(test), len(val)) == (51, 6, 3)
    assert train + test + val == data and train[-1] == 50 and test[0] == 51 and val[0] == 57


@pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"the real 1,100-entry data is not on this machine ({REAL_DATA})")
def test_split_sizes_on_the_real_data():
    data = load_instruction_data(REAL_DATA)
    train, test, val = split_data(data)
    assert (len(data), len(train), len(test), len(val)) == (1100, 935, 110, 55)
    assert val[0] == data[1045] and test[0] == data[935]


def test_collate_pads_shifts_and_masks():
    inputs, targets = custom_collate_fn([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    assert inputs.dtype == targets.dtype == torch.int64


def test_collate_truncates_and_uses_the_given_pad_id():
    inputs, targets = custom_collate_fn([[10, 11, 12, 13], [14]], pad_token_id=0, ignore_index=-1,
                                        allowed_max_length=3)
    assert inputs.tolist() == [[10, 11, 12], [14, 0, 0]]
    assert targets.tolist() == [[11, 12, 13], [0, -1, -1]]


def test_collate_keeps_a_pad_id_inside_the_text():
    # an <|endoftext|> inside the text is a real target; only the padding after the appended one is ignored
    _, targets = custom_collate_fn([[1, 50256, 2], [3]])
    assert targets.tolist() == [[50256, 2, 50256], [50256, -100, -100]]


def test_collate_masks_the_instruction():
    # (instruction_length, tokens): the targets predicting prompt tokens 1..3 are ignored, the response's kept
    inputs, targets = custom_collate_fn([(3, [1, 2, 3, 4, 5]), (2, [6, 7, 8])])
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 50256, 50256]]
    assert targets.tolist() == [[-100, -100, 4, 5, 50256], [-100, 8, 50256, -100, -100]]


def test_dataset_tokenizes_prompt_and_response_and_masks_on_request():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2"))
    entry = {"instruction": "Rewrite the sentence.", "input": "The cat sat.", "output": "The cat was sitting."}
    plain = InstructionDataset([entry], tok)
    full_text = format_input(entry) + ALPACA_TEMPLATE["response"] + "The cat was sitting."
    assert plain[0] == tok.encode(full_text) and tok.decode(plain[0]) == full_text
    masked = InstructionDataset([entry], tok, mask_instructions=True)
    length, tokens = masked[0]
    assert tokens == plain[0] and tokens[:length] == tok.encode(format_input(entry))


def test_tiny_loader_shapes_and_pad_id():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2"))
    data = load_instruction_data(fixture_path("instructions"))
    train, _, _ = split_data(data)
    torch.manual_seed(123)
    loader = DataLoader(InstructionDataset(train, tok), batch_size=8, shuffle=True, drop_last=True,
                        collate_fn=partial(custom_collate_fn, pad_token_id=tok.eos_token_id))
    batches = list(loader)
    assert len(batches) == 51 // 8
    for inputs, targets in batches:
        assert inputs.shape == targets.shape and inputs.shape[0] == 8
        assert (targets[:, :-1][inputs[:, 1:] != tok.eos_token_id] == inputs[:, 1:][inputs[:, 1:] != tok.eos_token_id]).all()


def _offline_gpt2_tokenizer():
    """The real GPT-2 BPE, converted from the openai-whisper sdist's gpt2.tiktoken (`make gpt2-bpe` caches it)."""
    from tools.real_width import gpt2_tokenizer

    try:
        return AutoTokenizer.from_pretrained(gpt2_tokenizer())
    except CourseError as exc:
        if os.environ.get("CI"):  # CI runs `make gpt2-bpe` first: a missing tokenizer there is a failure
            raise
        pytest.skip(f"the GPT-2 BPE is not cached and PyPI cannot be reached from the tests ({exc}); "
                    "run `make gpt2-bpe` once")


# The first train batches' shapes the source prints (torch.manual_seed(123), batch size 8, shuffle, drop_last).
SOURCE_SHAPES = [61, 76, 73, 68, 65, 72, 80, 67, 62, 75, 62, 68, 67, 77, 69, 79, 71, 66, 83, 68, 80, 71, 69, 65]


@pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"the real 1,100-entry data is not on this machine ({REAL_DATA})")
def test_real_batch_shapes_match_the_source():
    tok = _offline_gpt2_tokenizer()
    train, _, _ = split_data(load_instruction_data(REAL_DATA))
    assert tok.eos_token_id == 50256
    torch.manual_seed(123)
    loader = DataLoader(InstructionDataset(train, tok), batch_size=8, shuffle=True, drop_last=True,
                        collate_fn=partial(custom_collate_fn, allowed_max_length=1024))
    shapes = [inputs.shape[1] for inputs, _ in loader]
    assert len(shapes) == 116 and shapes[:len(SOURCE_SHAPES)] == SOURCE_SHAPES
