"""Bad input, class by class: every loader the notebooks use, and every course function's arguments.

One parametrized test per class of bad input (encoding, syntax, structure, fields, empty input, ragged CSV rows,
model configs, arguments, full mode offline). Each case asserts that the error is the course's (CourseError, never
a raw KeyError or a library traceback) and that its message names what the learner must find: the file, the line
or record, the field, and what to do.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader, TensorDataset

from tools.nbexport import load
from utils.ch03_qlora import load_prompt_dataset
from utils.ch04_gpt2 import load_instruction_data
from utils.checks import read_text
from utils.errors import CourseArgumentError, CourseError
from utils.hub import hub_errors, hub_failure
from utils.lessons.gpt import GPTModel, calc_loss_loader, generate, load_gpt2, train_model
from utils.lessons.instruction_data import custom_collate_fn, split_data
from utils.lessons.memory_budget import memory_budget
from utils.real_models import meta_model
from utils.resume import load_checkpoint, save_checkpoint
from utils.smoke import fixture_path, tiny_checkpoint

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
collate_squad_batch = SQUAD.collate_squad_batch
encode_example = SQUAD.encode_example
encode_records = SQUAD.encode_records
load_squad = SQUAD.load_squad
squad_v2_scores = SQUAD.squad_v2_scores

LORA = load("04-instruction-gpt2/02_lora_from_scratch.ipynb")  # LoRA from scratch, from its notebook
LoRALayer = LORA.LoRALayer
replace_linear_with_lora = LORA.replace_linear_with_lora

generate_model_scores = load("04-instruction-gpt2/01_instruction_finetuning.ipynb").generate_model_scores

CH05 = load("05-lr-schedules/01_warmup_cosine_clipping.ipynb")  # the chapter's code, from its notebook
GPTDatasetV1, create_dataloader_v1 = CH05.GPTDatasetV1, CH05.create_dataloader_v1
CH03 = load("03-qlora-bloom/01_quantization_basics.ipynb")
quantize_symmetric, dequantize_symmetric = CH03.quantize_symmetric, CH03.dequantize_symmetric
train_with_schedule = CH05.train_with_schedule

TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 1, "drop_rate": 0.0,
        "qkv_bias": True}
GOOD_CONFIG = {"vocab_size": 64, "n_positions": 16, "n_embd": 32, "n_layer": 1, "n_head": 4}


def _model_and_optimizer():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


# Each kind of file the course reads: its name in a scratch folder and the loader that reads it.
LOADERS = {
    "instruction data": ("data.json", load_instruction_data),
    "SQuAD": ("squad.json", lambda path: load_squad(path, "train")),
    "prompts CSV": ("prompts.csv", load_prompt_dataset),
    "prompts JSON": ("prompts.json", load_prompt_dataset),
    "prompts JSON Lines": ("prompts.jsonl", load_prompt_dataset),
    "text": ("story.txt", read_text),
    "GPT-2 config.json": ("gpt2/config.json", lambda path: load_gpt2(path.parent)),
    "checkpoint": ("checkpoint/checkpoint.safetensors", lambda path: load_checkpoint(path, like={
        "model": _model_and_optimizer()[0].state_dict(), "optimizer": _model_and_optimizer()[1].state_dict()})),
}


def _error(tmp_path: Path, kind: str, content: bytes) -> tuple[Path, str]:
    """Write `content` as a file of `kind`, load it, and return (its path, the CourseError's message)."""
    name, loader = LOADERS[kind]
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(CourseError) as info:
        loader(path)
    return path, str(info.value)


def _assert_names(message: str, path: Path, *parts: str) -> None:
    """The message names the file (its full path, with the place after it where given as "{path}...") and parts."""
    for part in parts:
        part = part.replace("{path}", str(path))
        assert part in message, f"{part!r} not in {message!r}"
    assert str(path) in message, f"the file {path} is not named in {message!r}"


def _cases(table):
    return pytest.mark.parametrize(("kind", "content", "expected"), [(k, c, e) for _, k, c, e in table],
                                   ids=[i for i, *_ in table])


# --- encoding: a Latin-1 file (é is byte 0xe9, which is not UTF-8) on line 2 of every kind of file -------------

ENCODING = [
    (kind, kind, content.encode("latin-1"), ["{path}, line 2: byte", "is not UTF-8", "save the file as UTF-8"])
    for kind, content in [
        ("instruction data", '[\n{"instruction": "caf\xe9", "input": "", "output": "x"}]'),
        ("SQuAD", '{"data": [\n{"title": "caf\xe9", "paragraphs": []}]}'),
        ("prompts CSV", 'act,prompt\n"Chef","I want you to act as a caf\xe9 owner"\n'),
        ("prompts JSON", '[\n{"prompt": "caf\xe9"}]'),
        ("prompts JSON Lines", '{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'),
        ("text", "The story\nof a caf\xe9\n"),
        ("GPT-2 config.json", '{"n_embd": 8,\n"note": "caf\xe9"}'),
    ]
]


@_cases(ENCODING)
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


# --- syntax: JSON, JSON Lines and CSV that do not parse ----------------------------------------------------------

SYNTAX = [
    ("instruction data", "instruction data", b'[{"instruction": "x",\n "input": "" "output": "y"}]',
     ["{path}, line 2 column", "not valid JSON", "fix the file there"]),
    ("SQuAD", "SQuAD", b'{"data": [\n}', ["{path}, line 2 column", "not valid JSON"]),
    ("prompts JSON", "prompts JSON", b'[{"prompt": "a"},\n{"prompt": }]', ["{path}, line 2 column", "not valid JSON"]),
    ("prompts JSON Lines", "prompts JSON Lines", b'{"prompt": "a"}\n{"prompt": "b"\n',
     ["{path}, line 2: not valid JSON", "fix or delete that line"]),
    ("prompts CSV quotes", "prompts CSV", b'act,prompt\n"Chef","a "quoted" word"\n',
     ["{path}, line 2: not valid CSV", "quotes"]),
    ("config.json", "GPT-2 config.json", b'{"n_embd": 8,,}', ["{path}, line 1 column 14", "not valid JSON"]),
    ("checkpoint: JSON, not safetensors", "checkpoint", b'{"global_step": }',
     ["{path} is not a checkpoint that save_checkpoint wrote (SafetensorError", "start without resume=True"]),
]


@_cases(SYNTAX)
def test_a_file_that_does_not_parse_is_named_with_its_line(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


# --- structure: the top level, or a record, of the wrong JSON type ---------------------------------------------

STRUCTURE = [
    ("instruction data: one object", "instruction data", b'{"instruction": "x", "input": "", "output": "y"}',
     ["expected a JSON list of records", "got a dict", "put the records in a list"]),
    ("instruction data: a string record", "instruction data", b'[{"instruction": "x", "input": "", "output": "y"}, "z"]',
     ["{path}, record 1: a str, expected an object"]),
    ("SQuAD: a string", "SQuAD", b'"just text"', ["a JSON str", 'official SQuAD layout {"data": [...]}']),
    ("SQuAD: no data", "SQuAD", b'{"version": "v2.0"}', ["no field 'data'", "the official SQuAD layout is"]),
    ("SQuAD: paragraphs an object", "SQuAD", b'{"data": [{"title": "t", "paragraphs": {}}]}',
     ["{path}: data[0]: field 'paragraphs' is dict", "expected a list"]),
    ("SQuAD flat list: a number", "SQuAD", b"[1]", ["{path}, record 0: a int, expected an object"]),
    ("prompts JSON: one object", "prompts JSON", b'{"prompt": ["a", "b"]}',
     ["expected a JSON list of records", "got a dict with keys ['prompt']"]),
    ("prompts JSON Lines: an array line", "prompts JSON Lines", b'{"prompt": "a"}\n["b"]\n',
     ["{path}, line 2: a JSON list, expected an object"]),
    ("config.json: a list", "GPT-2 config.json", b"[1, 2]", ["expected a JSON object of the model's settings"]),
    ("checkpoint: model weights", "checkpoint", safetensors.torch.save({"w": torch.zeros(2)}),
     ["{path} is not a checkpoint that save_checkpoint wrote (KeyError: 'checkpoint')"]),
]


@_cases(STRUCTURE)
def test_a_file_of_the_wrong_structure_is_named(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


# --- fields: a record with a field missing, of the wrong type, or empty ----------------------------------------

QA = {"id": "q1", "question": "Who?", "is_impossible": False, "answers": [{"text": "Mara", "answer_start": 0}]}


def _squad(**qa) -> bytes:
    return json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "Mara built it.",
                                                                "qas": [{**QA, **qa}]}]}]}).encode()


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


FLAT = {"id": "q1", "title": "T", "context": "Mara built it.", "question": "Who?",
        "answers": {"text": ["Mara"], "answer_start": [0]}}
FIELDS = [
    ("instruction: missing input", "instruction data",
     b'[{"instruction": "x", "input": "", "output": "y"}, {"instruction": "x", "output": "y"}]',
     ["{path}, record 1: no field 'input'", 'use "" for an empty input']),
    ("instruction: a number", "instruction data", b'[{"instruction": "x", "input": "", "output": 5}]',
     ["{path}, record 0: field 'output' is int 5, expected text"]),
    ("instruction: empty output", "instruction data", b'[{"instruction": "x", "input": "", "output": "  "}]',
     ["{path}, record 0: field 'output' is empty", "fill it in or remove the record"]),
    ("SQuAD: no question", "SQuAD", _squad(question=None).replace(b'"question": null, ', b""),
     ["{path}: data[0].paragraphs[0].qas[0] (id 'q1'): no field 'question'"]),
    ("SQuAD: answer_start a string", "SQuAD", _squad(answers=[{"text": "Mara", "answer_start": "0"}]),
     ["qas[0] (id 'q1').answers[0]: field 'answer_start' is str '0', expected an integer"]),
    ("SQuAD: is_impossible a string", "SQuAD", _squad(is_impossible="no"), ["field 'is_impossible' is str 'no'"]),
    ("SQuAD: qas an object", "SQuAD", b'{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": {}}]}]}',
     ["data[0].paragraphs[0]: field 'qas' is dict"]),
    ("SQuAD flat: no answers.text", "SQuAD", json.dumps([{**FLAT, "answers": {"answer_start": [0]}}]).encode(),
     ["{path}, record 0 (id 'q1'), field 'answers': no field 'text'"]),
    ("SQuAD flat: lengths differ", "SQuAD", json.dumps([{**FLAT, "answers": {"text": ["Mara"], "answer_start": []}}]).encode(),
     ["{path}, record 0 (id 'q1'): field 'answers' has 1 text(s) but 0 answer_start(s)"]),
    ("SQuAD flat: no context", "SQuAD", json.dumps([FLAT, _without(FLAT, "context")]).encode(),
     ["{path}, record 1 (id 'q1'): no field 'context'"]),
    ("prompts CSV: no prompt column", "prompts CSV", b"act,instruction\nPoet,write a poem\n",
     ["{path}, line 2: no field 'prompt' (its fields: ['act', 'instruction'])", "pass column="]),
    ("prompts JSON: a number", "prompts JSON", b'[{"prompt": "a"}, {"prompt": 7}]',
     ["{path}, record 1: field 'prompt' is int 7, expected text"]),
    ("prompts JSON Lines: blank prompt", "prompts JSON Lines", b'{"prompt": "I want you to act as a poet."}\n{"prompt": "  "}\n',
     ["{path}, line 2: field 'prompt' is empty"]),
    ("checkpoint: another loop's", "checkpoint", safetensors.torch.save({}, {"checkpoint": '{"adapter": {}}'}),
     ["{path}: no field 'model' (its fields: ['adapter']); start without resume=True"]),
]


@_cases(FIELDS)
def test_a_bad_field_is_named_with_its_record(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


# --- empty input: a file with nothing in it, or records with none --------------------------------------------

EMPTY = [
    *[(f"{kind}: 0 bytes", kind, b"", ["{path} is empty"]) for kind in LOADERS if kind != "checkpoint"],
    ("checkpoint: 0 bytes", "checkpoint", b"", ["{path} is not a checkpoint that save_checkpoint wrote", "too small"]),
    ("text: whitespace", "text", b"  \n\n\t\n", ["{path} is empty"]),
    ("instruction data: []", "instruction data", b"[]", ["holds no records", "nothing to train on"]),
    ("SQuAD: no articles", "SQuAD", b'{"data": []}', ["holds no questions"]),
    ("SQuAD: no questions", "SQuAD", b'{"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": []}]}]}',
     ["holds no questions"]),
    ("SQuAD flat: []", "SQuAD", b"[]", ["holds no questions"]),
    ("prompts CSV: header only", "prompts CSV", b"act,prompt\n", ["has a header but no records"]),
    ("prompts JSON: []", "prompts JSON", b"[]", ["has no records"]),
]


@_cases(EMPTY)
def test_an_empty_file_is_named(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


@pytest.mark.parametrize("kind", ["instruction data", "SQuAD", "prompts CSV", "prompts JSON", "prompts JSON Lines",
                                  "text"])
def test_a_missing_file_is_named(tmp_path, kind):
    name, loader = LOADERS[kind]
    with pytest.raises(CourseError) as info:
        loader(tmp_path / name)
    assert f"{tmp_path / name}: no such file" in str(info.value)


def _tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    tok.pad_token = tok.eos_token
    return tok


@pytest.mark.parametrize(("call", "message"), [
    (lambda: split_data([]), "split_data: 0 records leave the train split empty"),
    (lambda: split_data(list(range(5))), "split_data: 5 records leave the test split empty"),
    (lambda: encode_records([], _tokenizer(), 256), "encode_records: no records to encode"),
    (lambda: squad_v2_scores({}, []), "squad_v2_scores: no records to score"),
    (lambda: generate_model_scores([]), "generate_model_scores: entries must be a non-empty list"),
    (lambda: train_model(*_model_and_optimizer()[:1], DataLoader([], batch_size=1), [],
                         torch.optim.SGD([torch.zeros(1, requires_grad=True)]), "cpu", 1, 1, 1),
     "the training loader has no batches"),
], ids=["split of nothing", "split too small for a test split", "encode nothing", "score nothing",
        "judge nothing", "train on an empty loader"])
def test_empty_data_given_to_a_function_is_named(call, message):
    with pytest.raises(CourseError, match=message):
        call()


# --- ragged CSV rows: a row with more or fewer fields than the header, a bad header ---------------------------

RAGGED = [
    ("a comma in an unquoted field", "prompts CSV", b"act,prompt\nPoet,I want you, to act as a poet\n",
     ["{path}, line 2: 3 fields where the header has 2 (act, prompt)", "needs double quotes around the field"]),
    ("a missing field", "prompts CSV", b"act,prompt\nPoet,I want you to act as a poet\nChef\n",
     ["{path}, line 3: 1 field where the header has 2"]),
    ("after a quoted field of two lines", "prompts CSV", b'act,prompt\n"Poet","line one\nline two"\nChef,a,b\n',
     ["{path}, line 4: 3 fields"]),
    ("an empty column name", "prompts CSV", b"act,,prompt\na,b,c\n", ["{path}, line 1: the header row", "empty or repeated"]),
    ("a repeated column name", "prompts CSV", b"prompt,prompt\na,b\n", ["{path}, line 1: the header row"]),
]


@_cases(RAGGED)
def test_a_ragged_csv_row_is_named_with_its_line(tmp_path, kind, content, expected):
    path, message = _error(tmp_path, kind, content)
    _assert_names(message, path, *expected)


# --- model configs: a config.json of a checkpoint, or a GPTModel config dict ---------------------------------

@pytest.mark.parametrize(("config", "expected"), [
    ({**GOOD_CONFIG, "n_embd": "32"}, "field 'n_embd' is str '32', expected an integer"),
    (_without(GOOD_CONFIG, "n_head"), "no field 'n_head'"),
    ({**GOOD_CONFIG, "n_embd": 30}, "emb_dim=30 is not a multiple of n_heads=4"),
    ({**GOOD_CONFIG, "n_layer": 0}, "field 'n_layers' is 0; it must be at least 1"),
    ({**GOOD_CONFIG, "activation_function": "relu"}, "activation 'relu'"),
], ids=["a string size", "no n_head", "heads do not divide", "no layers", "another activation"])
def test_a_bad_config_json_is_named(tmp_path, config, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CourseError) as info:
        load_gpt2(tmp_path)
    assert f"{tmp_path / 'config.json'}" in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize(("config", "expected"), [
    (_without(TINY, "n_heads"), "the GPTModel config: no field 'n_heads'"),
    ({**TINY, "emb_dim": 30}, "emb_dim=30 is not a multiple of n_heads=4"),
    ({**TINY, "drop_rate": 1.5}, "field 'drop_rate' is 1.5; a dropout rate lies in [0, 1)"),
    ({**TINY, "qkv_bias": "yes"}, "field 'qkv_bias' is str 'yes', expected true or false"),
    ({**TINY, "context_length": 16.0}, "field 'context_length' is float 16.0, expected an integer"),
], ids=["no n_heads", "heads do not divide", "dropout above 1", "qkv_bias a string", "a float size"])
def test_a_bad_gptmodel_config_is_named(config, expected):
    with pytest.raises(CourseError) as info:
        GPTModel(config)
    assert expected in str(info.value)


# --- arguments: every numeric or choice argument, checked before any work ------------------------------------

def _loader():
    data = torch.randint(0, TINY["vocab_size"], (8, 6), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(data, data), batch_size=4)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1.0)


@functools.cache
def _bloom():
    return meta_model("bigscience/bloomz-560m")


SCHEDULE = {"peak_lr": 1e-2, "initial_lr": 1e-4, "min_lr": 1e-4}
ARGUMENTS = [  # (id, call on a fresh tiny GPTModel, the message)
    ("LoRA rank 0", lambda m: replace_linear_with_lora(m, rank=0, alpha=8),
     r"replace_linear_with_lora\(\): rank must be an integer >= 1, got 0"),
    ("LoRA rank 1.5", lambda m: replace_linear_with_lora(m, rank=1.5, alpha=8), r"rank must be an integer >= 1, got 1.5"),
    ("LoRA rank True", lambda m: replace_linear_with_lora(m, rank=True, alpha=8), r"rank must be an integer >= 1, got True"),
    ("LoRA alpha NaN", lambda m: replace_linear_with_lora(m, rank=4, alpha=float("nan")),
     r"replace_linear_with_lora\(\): alpha must be a finite number, got nan"),
    ("LoRA alpha inf", lambda m: replace_linear_with_lora(m, rank=4, alpha=math.inf), r"alpha must be a finite number, got inf"),
    ("LoRALayer rank -1", lambda m: LoRALayer(8, 4, rank=-1, alpha=1), r"LoRALayer.__init__\(\): rank must be an integer >= 1"),
    ("train eval_freq 0", lambda m: train_model(m, _loader(), _loader(), _sgd(m), "cpu", 1, 0, 1),
     r"train_model\(\): eval_freq must be an integer >= 1, got 0"),
    ("train eval_iter 0", lambda m: train_model(m, _loader(), _loader(), _sgd(m), "cpu", 1, 1, 0),
     r"train_model\(\): eval_iter must be an integer >= 1 \(or None\), got 0"),
    ("train num_epochs 0.5", lambda m: train_model(m, _loader(), _loader(), _sgd(m), "cpu", 0.5, 1, 1),
     r"train_model\(\): num_epochs must be an integer >= 1, got 0.5"),
    ("train checkpoint_every 0", lambda m: train_model(m, _loader(), _loader(), _sgd(m), "cpu", 1, 1, 1,
                                                       checkpoint_dir="x", checkpoint_every=0),
     r"checkpoint_every must be an integer >= 1"),
    ("train resume without a folder", lambda m: train_model(m, _loader(), _loader(), _sgd(m), "cpu", 1, 1, 1, resume=True),
     r"train_model\(\): resume=True and checkpoint_every need a checkpoint_dir"),
    ("schedule eval_freq 0", lambda m: train_with_schedule(m, _loader(), _loader(), _sgd(m), "cpu", 1, 0, 1, **SCHEDULE),
     r"train_with_schedule\(\): eval_freq must be an integer >= 1, got 0"),
    ("quantize 1 bit", lambda m: quantize_symmetric(0.5, bits=1), r"quantize_symmetric\(\): bits must be an integer >= 2 and <= 32, got 1"),
    ("quantize 2.5 bits", lambda m: quantize_symmetric(0.5, bits=2.5), r"bits must be an integer >= 2 and <= 32, got 2.5"),
    ("quantize max_abs 0", lambda m: quantize_symmetric(0.5, bits=4, max_abs=0), r"max_abs must be a finite number > 0, got 0"),
    ("dequantize 0 bits", lambda m: dequantize_symmetric(3, bits=0), r"dequantize_symmetric\(\): bits must be"),
    ("budget seq_len -1", lambda m: memory_budget(_bloom(), seq_len=-1), r"memory_budget\(\): seq_len must be an integer >= 1, got -1"),
    ("budget batch 0", lambda m: memory_budget(_bloom(), batch_size=0), r"batch_size must be an integer >= 1, got 0"),
    ("budget target the model lacks", lambda m: memory_budget(_bloom(), target_modules=["q_proj"]),
     r"target_modules \['q_proj'\] are not linear layers of BloomForCausalLM \(its linear layers: \[.*'query_key_value'"),
    ("budget target a string", lambda m: memory_budget(_bloom(), target_modules="query_key_value"),
     r"target_modules must be a non-empty list of names"),
    ("budget 3 bits", lambda m: memory_budget(_bloom(), weight_bits=3), r"weight_bits must be one of 4, 8, 16, 32, got 3"),
    ("budget 3 bytes", lambda m: memory_budget(_bloom(), unquantized_bytes=3), r"unquantized_bytes must be one of"),
    ("budget dropout 1.5", lambda m: memory_budget(_bloom(), lora_dropout=1.5),
     r"memory_budget\(\): lora_dropout must be a finite number >= 0 and <= 1, got 1.5"),
    ("split train 1.5", lambda m: split_data(list(range(20)), train_frac=1.5), r"split_data\(\): train_frac must be a finite number >= 0 and <= 1, got 1.5"),
    ("split test -0.1", lambda m: split_data(list(range(20)), test_frac=-0.1), r"test_frac must be a finite number >= 0"),
    ("split sum above 1", lambda m: split_data(list(range(20)), train_frac=0.9, test_frac=0.2),
     r"split_data\(\): train_frac \+ test_frac must be a finite number >= 0 and <= 1, got 1.1; validation gets"),
    ("split NaN", lambda m: split_data(list(range(20)), train_frac=float("nan")), r"train_frac must be a finite number"),
    ("SQuAD max_length above the context", lambda m: encode_example(
        load_squad(fixture_path("squad_train"), "train", n=1)[0], _tokenizer(), 300),
     r"encode_example\(\): max_length must be an integer >= 1 and <= 256, got 300; the model has no position"),
    ("SQuAD encode max_length 0", lambda m: encode_records([{"id": "x"}], _tokenizer(), 0), r"encode_records\(\): max_length"),
    ("SQuAD pad id None", lambda m: collate_squad_batch([{"input_ids": [1], "labels": [1]}], None),
     r"collate_squad_batch\(\): pad_token_id must be an integer >= 0, got None; GPT-J has no pad token"),
    ("collate allowed_max_length 0", lambda m: custom_collate_fn([[1, 2]], allowed_max_length=0),
     r"custom_collate_fn\(\): allowed_max_length must be an integer >= 1 \(or None\), got 0"),
    ("loss on 0 batches", lambda m: calc_loss_loader(_loader(), m, "cpu", num_batches=0),
     r"calc_loss_loader\(\): num_batches must be an integer >= 1 \(or None\), got 0"),
    ("generate -1 tokens", lambda m: generate(m, torch.tensor([[1]]), max_new_tokens=-1, context_size=16),
     r"generate\(\): max_new_tokens must be an integer >= 0, got -1"),
    ("generate top_k 0", lambda m: generate(m, torch.tensor([[1]]), 3, 16, top_k=0), r"top_k must be an integer >= 1"),
    ("generate temperature NaN", lambda m: generate(m, torch.tensor([[1]]), 3, 16, temperature=float("nan")),
     r"temperature must be a finite number >= 0, got nan"),
    ("a sequence above the context", lambda m: m(torch.zeros(1, 17, dtype=torch.long)),
     r"a sequence of 17 tokens is longer than the model's context_length \(16\)"),
    ("prompts limit 0", lambda m: load_prompt_dataset(str(fixture_path("prompts")), limit=0),
     r"load_prompt_dataset\(\): limit must be an integer >= 1 \(or None\), got 0"),
    ("SQuAD n 0", lambda m: load_squad(fixture_path("squad_train"), "train", n=0), r"load_squad\(\): n must be"),
    ("text batch '4'", lambda m: create_dataloader_v1("abc", batch_size="4", tokenizer=object()),
     r"create_dataloader_v1\(\): batch_size must be an integer >= 1, got '4'"),
    ("text windows of 0", lambda m: GPTDatasetV1("abc", object(), max_length=0, stride=1), r"max_length must be an integer >= 1"),
]


def _snapshot(model):
    return [type(m).__name__ for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("call", "message"), [(c, m) for _, c, m in ARGUMENTS], ids=[i for i, *_ in ARGUMENTS])
def test_a_bad_argument_is_named_before_any_work(call, message):
    model = GPTModel(TINY)
    modules, weights = _snapshot(model)
    with pytest.raises(CourseArgumentError, match=message) as info:
        call(model)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CourseError)
    after_modules, after_weights = _snapshot(model)  # nothing replaced, nothing trained
    assert after_modules == modules and all(torch.equal(after_weights[k], v) for k, v in weights.items())


# --- full mode without the Hub: the README's message, naming the id and the way out ---------------------------

OFFLINE = [
    ("GPT-2 weights", lambda: load_gpt2("openai-community/gpt2-medium"), "openai-community/gpt2-medium"),
    ("SQuAD from the Hub", lambda: load_squad("rajpurkar/squad_v2", "train"), "rajpurkar/squad_v2"),
    ("prompts from the Hub", lambda: load_prompt_dataset("fka/awesome-chatgpt-prompts"), "fka/awesome-chatgpt-prompts"),
]


def _from_pretrained(model_id):
    from transformers import AutoModelForCausalLM

    with hub_errors(model_id):
        AutoModelForCausalLM.from_pretrained(model_id)


def _hub_tokenizer(tokenizer_id):
    from transformers import AutoTokenizer

    with hub_errors(tokenizer_id, kind="tokenizer"):
        AutoTokenizer.from_pretrained(tokenizer_id)


@pytest.mark.parametrize(("call", "model_id"), [(c, i) for _, c, i in OFFLINE] + [
    (functools.partial(_from_pretrained, "bigscience/bloom-7b1"), "bigscience/bloom-7b1"),
    (functools.partial(_from_pretrained, "EleutherAI/gpt-j-6b"), "EleutherAI/gpt-j-6b"),
    (functools.partial(_hub_tokenizer, "openai-community/gpt2"), "openai-community/gpt2"),
], ids=[i for i, *_ in OFFLINE] + ["a notebook's from_pretrained (bloom-7b1)", "a notebook's from_pretrained (GPT-J)",
                                   "a notebook's tokenizer (GPT-2)"])
def test_full_mode_offline_names_the_model_and_the_way_out(call, model_id):
    with pytest.raises(CourseError) as info:
        call()
    message = str(info.value)
    assert f"{model_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading" in message
    assert "run with COURSE_SMOKE=1" in message and "go online" in message


def test_the_hub_message_online_says_to_check_the_id_and_the_connection(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    message = hub_failure("bigscience/bloom-7b1", "model", OSError("We couldn't connect to 'https://huggingface.co'"))
    assert message.startswith("could not load model 'bigscience/bloom-7b1' from the Hugging Face Hub (OSError: We")
    assert "check the id and your connection" in message and "COURSE_SMOKE=1" in message
    with pytest.raises(OSError, match="disk"), hub_errors(str(fixture_path("story"))):  # a local path: its own error
        raise OSError("disk full")


def test_a_checkpoint_loader_error_leaves_model_and_optimizer_as_they_were(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "checkpoint.safetensors",
                           {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "global_step": 1})
    path.write_bytes(path.read_bytes()[:-8])  # truncated: the last tensor's bytes are missing
    other, other_optimizer = _model_and_optimizer()
    with torch.no_grad():
        other.out_head.weight.add_(1.0)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CourseError, match="checkpoint.safetensors is not a checkpoint that save_checkpoint wrote"):
        train_model(other, _loader(), _loader(), other_optimizer, "cpu", 1, 1, 1, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # the weights were not loaded
    assert other_optimizer.state_dict()["state"] == {}  # nor the optimizer's state
