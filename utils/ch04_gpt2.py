"""Chapter 04's plumbing around the GPT-2 its notebook writes out (utils/lessons/gpt.py): the Hub's checkpoints, the
instruction data files, and the checks and errors of the LLM judge its evaluation asks (the scores themselves are the
notebook's own code)."""

from __future__ import annotations

import json
import os
import urllib.error
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.checks import bad_argument, check_field, check_flag, check_fraction, check_int, check_number, read_json
from utils.errors import CourseError
from utils.hub import download, hub_errors

#: The keys of a GPTModel config (GPT_CONFIG_124M in utils/lessons/gpt.py is one).
GPT_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def check_gpt_config(cfg, source: str = "the GPTModel config"):
    """`cfg` unchanged if GPTModel can be built from it; else a CourseError naming the field and what to do."""
    fix = f"a GPTModel config has the keys {GPT_CONFIG_KEYS} (see GPT_CONFIG_124M)"
    for key in GPT_CONFIG_KEYS[:5]:
        if check_field(cfg, key, source, kind=int, fix=fix) < 1:
            raise CourseError(f"{source}: field {key!r} is {cfg[key]}; it must be at least 1")
    rate = check_field(cfg, "drop_rate", source, kind=float | int, fix=fix)
    if not 0 <= rate < 1:
        raise CourseError(f"{source}: field 'drop_rate' is {rate}; a dropout rate lies in [0, 1)")
    check_field(cfg, "qkv_bias", source, kind=bool, fix=fix)
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise CourseError(f"{source}: emb_dim={cfg['emb_dim']} is not a multiple of n_heads={cfg['n_heads']}; each "
                          "head takes emb_dim / n_heads of the dimensions: change one of them")
    return cfg


class GPTConfigs(dict):
    """GPT_CONFIGS: its keys carry the size ("gpt2-medium (355M)"); the common name ("gpt2-medium", "gpt2", or the Hub
    id "openai-community/gpt2-medium") finds the same entry, and any other key is a CourseError listing the keys."""

    def __missing__(self, key):
        name = str(key).removeprefix("openai-community/").strip()
        for full in self:
            if full.split(" (")[0] in (name, f"{name}-small"):
                return self[full]
        raise CourseError(f"GPT_CONFIGS has no entry {key!r}; its keys are {list(self)} (the common name, such as "
                          "'gpt2-medium', finds the same entry)")


def config_from_hf(hf_config: dict, drop_rate: float = 0.0, source: str = "config.json") -> dict:
    """The GPTModel config of a GPT2LMHeadModel checkpoint's config.json (any size, the tiny smoke ones too)."""
    check_number("drop_rate", drop_rate, minimum=0, maximum=0.99, hint="a dropout rate lies in [0, 1)")
    if not isinstance(hf_config, dict):
        raise CourseError(f"{source}: expected a JSON object of the model's settings, got a {type(hf_config).__name__}; "
                          "pass a GPT2LMHeadModel checkpoint folder")
    if hf_config.get("model_type", "gpt2") != "gpt2":  # said by config.json, before any weight file is read
        raise CourseError(f"{source}: model_type {hf_config['model_type']!r}: GPTModel loads GPT-2 checkpoints only "
                          "(GPT2LMHeadModel, such as openai-community/gpt2-medium); pass one of those")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        check_field(hf_config, key, source, kind=int, fix="is this a GPT-2 (GPT2LMHeadModel) checkpoint?")
    if hf_config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CourseError(f"{source}: activation {hf_config['activation_function']!r}: GPTModel implements GPT-2's "
                          "tanh GELU only")
    return check_gpt_config({"vocab_size": hf_config["vocab_size"], "context_length": hf_config["n_positions"],
                             "emb_dim": hf_config["n_embd"], "n_heads": hf_config["n_head"],
                             "n_layers": hf_config["n_layer"], "drop_rate": drop_rate, "qkv_bias": True}, source)


def resolve_checkpoint(model_id_or_path: str | os.PathLike) -> Path:
    """A local folder holding config.json and model.safetensors: the path itself, or a Hub snapshot of the id."""
    path = Path(model_id_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import hf_hub_download, snapshot_download

    with hub_errors(model_id_or_path):  # offline, unknown id, no token: a CourseError that says what to do
        # config.json first: a checkpoint of another model type is refused before its weights are downloaded
        config_from_hf(read_json(hf_hub_download(str(model_id_or_path), "config.json")),
                       source=f"{model_id_or_path}: config.json")
        # the model's config and safetensors weights only (the Hub repos also hold TF, Flax, ONNX and pickle files)
        return Path(snapshot_download(str(model_id_or_path),
                                      allow_patterns=["config.json", "model*.safetensors", "model.safetensors.index.json"]))


#: The data sets the chapter can train on (same schema: a JSON list of {instruction, input, output}).
DATA_SOURCES = {
    # 1,100 entries, the source material's data (about 200 kB)
    "instruction-data": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    # 52,002 entries (about 22 MB): Stanford Alpaca; needs a smaller batch and allowed_max_length (see the README)
    "alpaca-52k": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
FIELDS = ("instruction", "input", "output")


def check_records(data, source: str = "the data") -> None:
    """CourseError naming the record and the field unless `data` is a non-empty list of {instruction, input, output}
    records of strings (input may be "")."""
    if not isinstance(data, list):
        keys = f" with keys {sorted(data)[:5]}" if isinstance(data, dict) else ""
        raise CourseError(f"{source}: expected a JSON list of records [{{\"instruction\": ..., \"input\": ..., "
                          f"\"output\": ...}}, ...], got a {type(data).__name__}{keys}; put the records in a list")
    if not data:
        raise CourseError(f"{source} holds no records (an empty list): there is nothing to train on; "
                          "pass a file with {instruction, input, output} records")
    for i, record in enumerate(data):
        for field in FIELDS:  # "" is a fine input (no input); instruction and output must say something
            check_field(record, field, f"{source}, record {i}", nonempty=field != "input",
                        fix=f"every record needs {FIELDS} (use \"\" for an empty input)")


def validate_instruction_data(data, source: str = "the data") -> list[dict]:
    """`data` if `check_records` passes it; duplicates are counted in a warning."""
    check_records(data, source)
    duplicates = len(data) - len({tuple(record[field] for field in FIELDS) for record in data})
    if duplicates:
        warnings.warn(f"{source}: {duplicates} duplicate record(s) (same instruction, input and output); "
                      "they are kept, but they weigh twice in training and can leak between splits", stacklevel=2)
    return data


def load_instruction_data(path_or_name: str | os.PathLike) -> list[dict]:
    """The checked records of a local JSON (or JSON Lines) file, or of one of `DATA_SOURCES` (downloaded once)."""
    if str(path_or_name) in DATA_SOURCES:
        path = download(DATA_SOURCES[str(path_or_name)], f"{path_or_name}.json")
    else:
        path = Path(path_or_name)
        if not path.exists():
            raise CourseError(f"{path}: no such file; pass the path of a JSON file of {{instruction, input, output}} "
                              f"records, or one of the named data sets: {', '.join(DATA_SOURCES)}")
    return validate_instruction_data(read_json(path), source=str(path))


def check_split_args(data, train_frac, test_frac) -> None:
    """split_data's arguments: fractions in [0, 1] summing to at most 1, and no split that is asked for left empty."""
    if not isinstance(data, list | tuple):
        raise bad_argument("data", data, "a list of records")
    check_fraction("train_frac", train_frac)
    check_fraction("test_frac", test_frac)
    check_fraction("train_frac + test_frac", round(train_frac + test_frac, 9), hint="validation gets the rest")
    train, test = int(len(data) * train_frac), int(len(data) * test_frac)
    for name, size, frac in (("train", train, train_frac), ("test", test, test_frac),
                             ("validation", len(data) - train - test, 1 - train_frac - test_frac)):
        if frac > 1e-9 and not size:  # a split that was asked for but would get no record
            raise CourseError(f"split_data: {len(data)} records leave the {name} split empty at train_frac={train_frac}, "
                              f"test_frac={test_frac}; use more records or change the fractions")


def check_dataset_args(data, mask_instructions) -> None:
    """InstructionDataset's arguments: records of strings (a record built in code with output=None is named), a bool."""
    check_records(data, "InstructionDataset: data")
    check_flag("mask_instructions", mask_instructions)


def check_collate_args(batch, pad_token_id, ignore_index, allowed_max_length) -> None:
    """custom_collate_fn's arguments: a non-empty batch of token lists (or (prompt length, tokens) pairs), int ids."""
    if not isinstance(batch, list | tuple) or not batch:
        raise bad_argument("batch", batch, "a non-empty list of token lists", "is the dataset empty?")
    check_int("pad_token_id", pad_token_id, minimum=0, hint="GPT-2 pads with its <|endoftext|> id, 50256")
    check_int("ignore_index", ignore_index, hint="cross_entropy ignores -100 by default")
    check_int("allowed_max_length", allowed_max_length, minimum=1, optional=True)


def check_generate_args(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id) -> None:
    """generate's arguments, before the first token: counts that are ints, top_k within the model's vocabulary."""
    if not isinstance(idx, torch.Tensor) or idx.ndim != 2 or idx.is_floating_point():
        raise bad_argument("idx", idx, "a [batch, tokens] tensor of token ids", "text_to_token_ids(text, tokenizer) makes one")
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    check_int("context_size", context_size, minimum=1)
    check_number("temperature", temperature, minimum=0, hint="0 for greedy decoding")
    vocab = getattr(getattr(model, "tok_emb", None), "num_embeddings", None)  # GPTModel's vocabulary size
    check_int("top_k", top_k, minimum=1, maximum=vocab, optional=True, hint=f"the vocabulary has {vocab} tokens")
    check_int("eos_id", eos_id, minimum=0, optional=True)


def check_lora_args(rank, alpha) -> None:
    """LoRA's rank (a positive integer: alpha / rank scales the update) and alpha (a finite number)."""
    check_int("rank", rank, minimum=1)
    check_number("alpha", alpha)


@contextmanager
def ollama_errors(url: str, model: str) -> Iterator[None]:
    """Turn a failed request to the Ollama server at `url` into a CourseError that says what to do."""
    try:
        yield
    except urllib.error.HTTPError as exc:  # 404: the model is not pulled
        raise CourseError(f"the Ollama server at {url} answered {exc.code} {exc.reason} for model {model!r}: run "
                          f"`ollama pull {model}`, or pass another model=") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CourseError(f"the server at {url} sent a reply that is not Ollama's JSON ({type(exc).__name__}: {exc}); "
                          "is it an Ollama server?") from None
    except (OSError, UnicodeDecodeError) as exc:  # the server went away, timed out, or answered garbage
        raise CourseError(f"no reply from the Ollama server at {url} ({type(exc).__name__}: {exc}); check that "
                          "`ollama serve` still runs") from None


def check_judge_entries(entries, response_key: str) -> None:
    """CourseError unless `entries` is a non-empty list of records with FIELDS and a response under `response_key`."""
    if not isinstance(entries, list) or not entries:
        raise CourseError(f"generate_model_scores: entries must be a non-empty list of records, got {entries!r:.60}")
    for i, entry in enumerate(entries):
        for name in (*FIELDS, response_key):
            check_field(entry, name, f"entry {i}", nonempty=False,
                        fix=f"each entry needs {FIELDS} and the response to judge under {response_key!r}")
