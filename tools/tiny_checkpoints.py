"""The tiny checkpoints smoke mode runs on: real architectures at hidden size 64, built locally, byte for byte
reproducible (utils.smoke.tiny_checkpoint calls this on first use).

Each tiny model gets a byte-level BPE tokenizer trained on the course's fixture text and the prompt templates' fixed
words, and is saved with `save_pretrained` in the cache; the same seed gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tools.nbexport import load
from utils.errors import CourseError
from utils.lessons.instruction_data import ALPACA_TEMPLATE
from utils.smoke import fixture_path

#: Bump when the builder changes what it writes, so old caches are rebuilt rather than reused.
BUILDER_VERSION = 3
TOKENIZER_VOCAB = 1024  # a multiple of 64, like every size of these models (bitsandbytes' CPU kernels want that)
HIDDEN = 64
LAYERS = 2
HEADS = 4
CONTEXT = 256
# Ten times the real models' 0.02: at hidden size 64 a 0.02 initialisation gives almost uniform next-token
# distributions that a frozen model's inputs (a soft prompt, a prefix, IA3's scales) can barely move, so the
# prompt-learning methods would show no learning in smoke mode. At 0.2 the tiny models respond to their inputs.
INIT_STD = 0.2

@dataclass(frozen=True)
class TinySpec:
    """How one architecture's tiny checkpoint is built."""

    model_class: str
    special_tokens: dict[str, str]  # role -> token, as the real model's tokenizer has them
    tokenizer_class: str


# The special tokens follow the real tokenizers: GPT-2 and GPT-J have only <|endoftext|> (and no pad token,
# which the notebooks must handle as they must for the real models); BLOOM has <unk> <s> </s> <pad>; Llama has
# <unk> <s> </s> and no pad token.
_GPT2_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
TINY_SPECS: dict[str, TinySpec] = {
    "gpt2": TinySpec("GPT2LMHeadModel", _GPT2_SPECIALS, "GPT2Tokenizer"),
    "gptj": TinySpec("GPTJForCausalLM", _GPT2_SPECIALS, "GPT2Tokenizer"),
    "bloom": TinySpec(
        "BloomForCausalLM",
        {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        "BloomTokenizer",
    ),
    "llama": TinySpec("LlamaForCausalLM", {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}, "TokenizersBackend"),
}


def spec(arch: str) -> TinySpec:
    """How `arch` is built; an unknown architecture is a CourseError listing the ones that exist."""
    if arch not in TINY_SPECS:
        raise CourseError(f"unknown architecture {arch!r}; tiny checkpoints exist for: {', '.join(TINY_SPECS)}")
    return TINY_SPECS[arch]


def _corpus() -> list[str]:
    """The fixture text the tiny tokenizers are trained on: every fixture the course ships."""
    texts = [fixture_path("story").read_text(encoding="utf-8")]
    for record in json.loads(fixture_path("instructions").read_text(encoding="utf-8")):
        texts.extend([record["instruction"], record["input"], record["output"]])
    for split in ("squad_train", "squad_validation"):
        for article in json.loads(fixture_path(split).read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                texts.append(paragraph["context"])
                texts.extend(qa["question"] for qa in paragraph["qas"])
    texts.append(fixture_path("prompts").read_text(encoding="utf-8"))
    texts.append(fixture_path("reviews").read_text(encoding="utf-8"))
    # The prompt templates' fixed words, so that they are whole tokens, as they are in the real vocabularies: read
    # from the constants the chapters define (chapter 04's Alpaca template, chapter 02's SQuAD prompt), never retyped.
    # The Alpaca headers stand one per line, as this corpus has always had them: the same text, the same checkpoints.
    alpaca = ALPACA_TEMPLATE["preamble"] + ALPACA_TEMPLATE["instruction"] + "".join(
        ALPACA_TEMPLATE[part].lstrip("\n") for part in ("input", "response"))
    squad = load("02-lora-gptj/01_lora_gptj_squad.ipynb")
    INSTRUCTION, NO_ANSWER, PROMPT_TEMPLATE = squad.INSTRUCTION, squad.NO_ANSWER, squad.PROMPT_TEMPLATE  # noqa: N806
    squad_words = " ".join([INSTRUCTION, *re.findall(r"\w+:", PROMPT_TEMPLATE), NO_ANSWER])
    texts.append(alpaca + squad_words)
    return texts


def _train_tokenizer(how: TinySpec):
    """A byte-level BPE tokenizer (the GPT-2 / BLOOM kind) trained on the fixture text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(how.special_tokens.values()))  # ordered, unique: ids 0, 1, ...
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=CONTEXT, **how.special_tokens)


def _config(arch: str, vocab_size: int, token_ids: dict[str, int]):
    """The tiny config of one architecture: hidden 64, 2 layers, 4 heads, the real module names."""
    from transformers import BloomConfig, GPT2Config, GPTJConfig, LlamaConfig

    ids = {f"{role.removesuffix('_token')}_token_id": i for role, i in token_ids.items() if role != "unk_token"}
    ids["initializer_range"] = INIT_STD
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, **ids)
    if arch == "gptj":
        return GPTJConfig(vocab_size=vocab_size, n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                          rotary_dim=HIDDEN // HEADS // 2, tie_word_embeddings=False, **ids)
    if arch == "bloom":
        return BloomConfig(vocab_size=vocab_size, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **ids)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
                           max_position_embeddings=CONTEXT, **ids)
    raise AssertionError(arch)  # unreachable: spec() refused it


def fingerprint(arch: str, seed: int) -> str:
    """What the checkpoint depends on: builder, architecture, seed, fixture text and transformers' version."""
    import transformers

    spec(arch)
    digest = hashlib.sha256()
    digest.update(json.dumps([BUILDER_VERSION, arch, seed, transformers.__version__]).encode())
    for text in _corpus():
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:12]


def manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a checkpoint folder (the marker a complete build writes last)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != "MANIFEST.json"}


def build_tiny_checkpoint(arch: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny `arch` checkpoint into `folder` (model weights as safetensors, config, tokenizer)."""
    import torch
    import transformers

    how = spec(arch)
    tokenizer = _train_tokenizer(how)
    token_ids = {role: tokenizer.convert_tokens_to_ids(token) for role, token in how.special_tokens.items()}
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded to a multiple of 64, as GPT-J pads 50257 to 50400
    torch.manual_seed(seed)
    model = getattr(transformers, how.model_class)(_config(arch, vocab_size, token_ids))
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")  # per process: parallel builds must not collide
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = how.tokenizer_class
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest(tmp), indent=2) + "\n")
    try:
        tmp.rename(folder)  # only a complete build gets the real name
    except OSError:  # another process finished the same build first: its bytes are identical
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


