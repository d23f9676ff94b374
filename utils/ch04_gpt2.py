"""Chapter 04's plumbing around the GPT-2 its notebook writes out (utils/lessons/gpt.py): the Hub's checkpoints and
tokenizer, the instruction data files, and the checks and errors of the LLM judge its evaluation asks (the scores
themselves are the notebook's own code)."""

from __future__ import annotations

import json
import os
import urllib.error
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.checks import check_field, check_number, read_json
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


def config_from_hf(hf_config: dict, drop_rate: float = 0.0, source: str = "config.json") -> dict:
    """The GPTModel config of a GPT2LMHeadModel checkpoint's config.json (any size, the tiny smoke ones too)."""
    check_number("drop_rate", drop_rate, minimum=0, maximum=0.99, hint="a dropout rate lies in [0, 1)")
    if not isinstance(hf_config, dict):
        raise CourseError(f"{source}: expected a JSON object of the model's settings, got a {type(hf_config).__name__}; "
                          "pass a GPT2LMHeadModel checkpoint folder")
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
    from huggingface_hub import snapshot_download

    with hub_errors(model_id_or_path):  # offline, unknown id, no token: a CourseError that says what to do
        # the model's config and safetensors weights only (the Hub repos also hold TF, Flax, ONNX and pickle files)
        return Path(snapshot_download(str(model_id_or_path),
                                      allow_patterns=["config.json", "model*.safetensors", "model.safetensors.index.json"]))


class Tokenizer:
    """GPT-2's BPE (full mode) or the tiny checkpoint's (smoke mode) as `encode`, `decode` and `eos_id`."""

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


#: The data sets the chapter can train on (same schema: a JSON list of {instruction, input, output}).
DATA_SOURCES = {
    # 1,100 entries, the source material's data (about 200 kB)
    "instruction-data": "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json",
    # 52,002 entries (about 22 MB): Stanford Alpaca; needs a smaller batch and allowed_max_length (see the README)
    "alpaca-52k": "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json",
}
FIELDS = ("instruction", "input", "output")


def validate_instruction_data(data, source: str = "the data") -> list[dict]:
    """`data` if it is a non-empty list of {instruction, input, output} records, else a CourseError naming the
    record and the field (input may be ""); duplicates are counted in a warning."""
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
    """The checked records of a local JSON (or JSON Lines) file, or of one of `DATA_SOURCES` (downloaded once)."""
    if str(path_or_name) in DATA_SOURCES:
        path = download(DATA_SOURCES[str(path_or_name)], f"{path_or_name}.json")
    else:
        path = Path(path_or_name)
        if not path.exists():
            raise CourseError(f"{path}: no such file; pass the path of a JSON file of {{instruction, input, output}} "
                              f"records, or one of the named data sets: {', '.join(DATA_SOURCES)}")
    return validate_instruction_data(read_json(path), source=str(path))


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
