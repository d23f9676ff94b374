"""Chapter 04's bad input, class by class (issue 23): each class answers with the course's error, naming the argument,
file, record or field and what to do, before any model is loaded or step trained. Several inputs per class."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tools.nbexport import load
from utils.errors import CourseArgumentError, CourseError
from utils.lessons.gpt import GPT_CONFIGS, GPTModel, calc_loss_loader, generate, load_gpt2, train_model
from utils.lessons.instruction_data import InstructionDataset, custom_collate_fn, split_data
from utils.smoke import tiny_checkpoint

LORA = load("04-instruction-gpt2/02_lora_from_scratch.ipynb")  # LoRA from scratch, from its notebook

TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 1, "drop_rate": 0.0,
        "qkv_bias": True}
RECORD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


class CharTokenizer:  # enough of Tokenizer for InstructionDataset
    def encode(self, text):
        return [ord(c) % 64 for c in text]


def _model():
    torch.manual_seed(0)
    return GPTModel(TINY)


def _loader():
    data = torch.randint(0, TINY["vocab_size"], (8, 6), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(data, data), batch_size=4)


# --- an empty (or not a) batch to the collate function -------------------------------------------------------

@pytest.mark.parametrize("batch", [[], (), None, {}, "", 0], ids=repr)
def test_collate_empty_batch(batch):
    with pytest.raises(CourseArgumentError, match=r"custom_collate_fn\(\): batch must be a non-empty list of token lists"):
        custom_collate_fn(batch)


# --- a checkpoint folder that is a file: refused before the first step --------------------------------------

@pytest.mark.parametrize("name", ["checkpoint", "checkpoint.safetensors", "notes.txt"])
@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_train_checkpoint_dir_is_a_file(tmp_path, name, as_str):
    path = tmp_path / name
    path.write_text("not a folder")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(CourseArgumentError, match=r"train_model\(\): checkpoint_dir must be a folder, not an existing file"):
        train_model(model, _loader(), _loader(), optimizer, "cpu", 1, 1, 1,
                    checkpoint_dir=str(path) if as_str else path)
    for key, value in model.state_dict().items():  # no step was taken
        assert torch.equal(value, before[key]), key
    assert path.read_text() == "not a folder"


# --- load_gpt2 on a checkpoint of another architecture: config.json says so, no weight file is read ----------

@pytest.mark.parametrize("arch", ["gptj", "bloom", "llama"])
def test_load_gpt2_other_architecture(tmp_path, arch):
    shutil.copy(Path(tiny_checkpoint(arch)) / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage: reading it would fail with another message")
    model_type = json.loads((tmp_path / "config.json").read_text())["model_type"]
    with pytest.raises(CourseError, match=rf"config.json: model_type '{model_type}': GPTModel loads GPT-2 checkpoints"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("model_type", ["gpt_neo", "gpt_bigcode", "bert"])
def test_load_gpt2_other_model_type_with_gpt2_fields(tmp_path, model_type):
    config = {"model_type": model_type, "vocab_size": 64, "n_positions": 16, "n_embd": 32, "n_layer": 1, "n_head": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CourseError, match=rf"model_type '{model_type}'"):
        load_gpt2(tmp_path)


# --- GPT configs by their common name ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "key"), [("gpt2-medium", "gpt2-medium (355M)"), ("gpt2", "gpt2-small (124M)"),
                                           ("gpt2-small", "gpt2-small (124M)"), ("gpt2-xl", "gpt2-xl (1558M)"),
                                           ("openai-community/gpt2-large", "gpt2-large (774M)")])
def test_gpt_configs_common_name(name, key):
    assert GPT_CONFIGS[name] == GPT_CONFIGS[key]
    assert GPT_CONFIGS[name]["emb_dim"] == {"gpt2-small (124M)": 768, "gpt2-medium (355M)": 1024,
                                            "gpt2-large (774M)": 1280, "gpt2-xl (1558M)": 1600}[key]


@pytest.mark.parametrize("name", ["gpt2-huge", "medium", "", "355M", 355, None])
def test_gpt_configs_unknown_name(name):
    with pytest.raises(CourseError, match=r"GPT_CONFIGS has no entry .*; its keys are \['gpt2-small \(124M\)'"):
        GPT_CONFIGS[name]  # noqa: B018


# --- generate's top_k beyond the vocabulary, and its other arguments -----------------------------------------

@pytest.mark.parametrize("top_k", [65, 100, 50257, 10**9])
def test_generate_top_k_above_vocabulary(top_k):
    with pytest.raises(CourseArgumentError, match=r"generate\(\): top_k must be an integer >= 1 and <= 64 .*"
                                                  r"the vocabulary has 64 tokens"):
        generate(_model(), torch.tensor([[1, 2]]), 3, 16, temperature=1.0, top_k=top_k)


def test_generate_top_k_equal_to_vocabulary_runs():
    out = generate(_model(), torch.tensor([[1, 2]]), 3, 16, temperature=1.0, top_k=64)
    assert out.shape == (1, 5)


@pytest.mark.parametrize("idx", [[[1, 2]], torch.tensor([1, 2]), torch.tensor([[1.0, 2.0]]), "hello"], ids=repr)
def test_generate_idx_not_token_ids(idx):
    with pytest.raises(CourseArgumentError, match=r"generate\(\): idx must be a \[batch, tokens\] tensor of token ids"):
        generate(_model(), idx, 3, 16)


# --- records built in code with a field that is not a string ---------------------------------------------------

@pytest.mark.parametrize(("records", "where"), [
    ([{**RECORD, "output": None}], r"record 0: field 'output' is NoneType None"),
    ([RECORD, {**RECORD, "output": 42}], r"record 1: field 'output' is int 42"),
    ([RECORD, RECORD, {**RECORD, "instruction": ["a", "list"]}], r"record 2: field 'instruction' is list"),
    ([{**RECORD, "input": None}], r"record 0: field 'input' is NoneType None"),
    ([{"instruction": "x", "input": ""}], r"record 0: no field 'output'"),
    ([RECORD, "not a record"], r"record 1: a str, expected an object"),
], ids=["output None", "output int", "instruction list", "input None", "no output", "a string"])
def test_instruction_dataset_bad_record(records, where):
    with pytest.raises(CourseError, match=r"InstructionDataset: data, " + where):
        InstructionDataset(records, CharTokenizer())


@pytest.mark.parametrize("data", [[], {"instruction": "x"}, None], ids=["empty", "a dict", "None"])
def test_instruction_dataset_not_records(data):
    with pytest.raises(CourseError, match=r"InstructionDataset: data"):
        InstructionDataset(data, CharTokenizer())


# --- strings (and other wrong kinds) for numbers and booleans, in the chapter's public functions ------------------

STRINGS = [  # (id, call, message)
    ("split train_frac", lambda: split_data(list(range(20)), train_frac="0.85"),
     r"split_data\(\): train_frac must be a finite number"),
    ("split test_frac", lambda: split_data(list(range(20)), test_frac="0.1"), r"split_data\(\): test_frac must be"),
    ("split data a string", lambda: split_data("records.json"), r"split_data\(\): data must be a list of records"),
    ("collate pad id", lambda: custom_collate_fn([[1, 2]], pad_token_id="50256"),
     r"custom_collate_fn\(\): pad_token_id must be an integer >= 0, got '50256'"),
    ("collate ignore_index", lambda: custom_collate_fn([[1, 2]], ignore_index="-100"),
     r"custom_collate_fn\(\): ignore_index must be an integer, got '-100'"),
    ("collate max length", lambda: custom_collate_fn([[1, 2]], allowed_max_length="512"),
     r"custom_collate_fn\(\): allowed_max_length must be an integer >= 1 \(or None\), got '512'"),
    ("dataset mask 'False'", lambda: InstructionDataset([RECORD], CharTokenizer(), mask_instructions="False"),
     r"InstructionDataset.__init__\(\): mask_instructions must be True or False, got 'False'"),
    ("dataset mask 0", lambda: InstructionDataset([RECORD], CharTokenizer(), mask_instructions=0),
     r"mask_instructions must be True or False, got 0"),
    ("generate max_new_tokens", lambda: generate(_model(), torch.tensor([[1]]), "10", 16),
     r"generate\(\): max_new_tokens must be an integer >= 0, got '10'"),
    ("generate temperature", lambda: generate(_model(), torch.tensor([[1]]), 3, 16, temperature="0.7"),
     r"generate\(\): temperature must be a finite number >= 0, got '0.7'"),
    ("generate top_k", lambda: generate(_model(), torch.tensor([[1]]), 3, 16, top_k="5"),
     r"generate\(\): top_k must be an integer"),
    ("generate eos_id", lambda: generate(_model(), torch.tensor([[1]]), 3, 16, eos_id="50256"),
     r"generate\(\): eos_id must be an integer >= 0 \(or None\), got '50256'"),
    ("train resume 'False'", lambda: train_model(_model(), _loader(), _loader(), None, "cpu", 1, 1, 1, resume="False"),
     r"train_model\(\): resume must be True or False, got 'False'"),
    ("train num_epochs", lambda: train_model(_model(), _loader(), _loader(), None, "cpu", "2", 1, 1),
     r"train_model\(\): num_epochs must be an integer >= 1, got '2'"),
    ("loss num_batches", lambda: calc_loss_loader(_loader(), _model(), "cpu", num_batches="5"),
     r"calc_loss_loader\(\): num_batches must be an integer >= 1 \(or None\), got '5'"),
    ("load_gpt2 drop_rate", lambda: load_gpt2(tiny_checkpoint("gpt2"), drop_rate="0.1"),
     r"drop_rate must be a finite number >= 0 and <= 0.99, got '0.1'"),
    ("GPTModel emb_dim", lambda: GPTModel({**TINY, "emb_dim": "32"}), r"field 'emb_dim' is str '32', expected"),
    ("GPTModel qkv_bias", lambda: GPTModel({**TINY, "qkv_bias": "False"}), r"field 'qkv_bias' is str 'False'"),
    ("LoRA rank", lambda: LORA.replace_linear_with_lora(_model(), rank="8", alpha=16),
     r"replace_linear_with_lora\(\): rank must be an integer >= 1, got '8'"),
    ("LoRA alpha", lambda: LORA.lora_model(_model(), rank=8, alpha="16"), r"lora_model\(\): alpha must be a finite number"),
    ("LoRALayer rank", lambda: LORA.LoRALayer(8, 4, rank="2", alpha=1), r"LoRALayer.__init__\(\): rank must be an integer"),
]


@pytest.mark.parametrize(("call", "message"), [case[1:] for case in STRINGS], ids=[case[0] for case in STRINGS])
def test_strings_for_numbers_and_booleans(call, message):
    with pytest.raises(CourseError, match=message):
        call()


@pytest.mark.parametrize("arch", ["gptj", "bloom"])
def test_load_gpt2_hub_id_other_architecture_before_download(monkeypatch, arch):
    """A Hub id of another model type: its config.json is fetched and refused before any weight is downloaded."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(Path(tiny_checkpoint(arch)) / name))

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were downloaded before config.json was checked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_weights)
    with pytest.raises(CourseError, match=r"some-user/a-model: config.json: model_type '\w+': GPTModel loads GPT-2"):
        load_gpt2("some-user/a-model")
