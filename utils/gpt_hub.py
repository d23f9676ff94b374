"""GPT-2 from the Hugging Face Hub, or from a local checkpoint folder: the folder of a Hub id (config and safetensors
only), its config.json turned into a GPTModel config, the check of such a config (GPTModel runs it first), and the
one small tokenizer interface chapter 04 uses in both modes. Plumbing for the GPT-2 that chapter 04's notebook writes
out (`utils/gpt.py`, generated from it): the notebook names these and imports them.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.checks import check_field, check_number
from utils.errors import CourseError
from utils.hub import hub_errors

#: The keys of a GPTModel config (GPT_CONFIG_124M in utils/gpt.py is one).
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
    return check_gpt_config({
        "vocab_size": hf_config["vocab_size"],
        "context_length": hf_config["n_positions"],
        "emb_dim": hf_config["n_embd"],
        "n_heads": hf_config["n_head"],
        "n_layers": hf_config["n_layer"],
        "drop_rate": drop_rate,
        "qkv_bias": True,
    }, source)


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
