"""Build the tiny checkpoints smoke mode runs on: real architectures at hidden size 64, byte for byte reproducible.

    python -m tools.tiny_checkpoints                 # what the course uses (`make setup` runs this): every
                                                     # architecture at seed 0, and BLOOM at seed 1 (a test needs two)
    python -m tools.tiny_checkpoints bloom --seed 3  # one more

Each is saved with `save_pretrained` into the folder utils.smoke.checkpoint_folder names, where
utils.smoke.tiny_checkpoint finds it. Each gets a byte-level BPE tokenizer trained on the corpus that utils.smoke
names (fixture text, and the chapters' fixed prompt text copied once into data/fixtures/tiny_tokenizer_corpus.txt);
the same seed gives identical bytes. Folders already built are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.smoke import ARCHS, CORPUS_FIXTURES, checkpoint_folder, fixture_path, manifest

TOKENIZER_VOCAB = 1024  # a multiple of 64, like every size of these models (bitsandbytes' CPU kernels want that)
HIDDEN = 64
LAYERS = 2
HEADS = 4
CONTEXT = 256
# Ten times the real models' 0.02: at hidden size 64 a 0.02 initialisation gives almost uniform next-token
# distributions that a frozen model's inputs (a soft prompt, a prefix, IA3's scales) can barely move, so the
# prompt-learning methods would show no learning in smoke mode. At 0.2 the tiny models respond to their inputs.
INIT_STD = 0.2
#: What `python -m tools.tiny_checkpoints` builds: every architecture at seed 0; BLOOM at seed 1 too, for the test
#: that an adapter refuses another base model.
BUILDS = [*((arch, 0) for arch in ARCHS), ("bloom", 1)]


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


def corpus() -> list[str]:
    """The texts the tiny tokenizers are trained on, read from utils.smoke's CORPUS_FIXTURES only (the fingerprint
    hashes those files): the fixtures' text fields, and the plain text files whole."""
    texts = []
    for name in CORPUS_FIXTURES:
        path = fixture_path(name)
        if path.suffix != ".json":
            texts.append(path.read_text(encoding="utf-8"))
        elif name == "instructions":
            texts.extend(r[field] for r in json.loads(path.read_text(encoding="utf-8"))
                         for field in ("instruction", "input", "output"))
        else:  # SQuAD: the contexts and the questions
            for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
                for paragraph in article["paragraphs"]:
                    texts.append(paragraph["context"])
                    texts.extend(qa["question"] for qa in paragraph["qas"])
    return texts


def _train_tokenizer(how: TinySpec):
    """A byte-level BPE tokenizer (the GPT-2 / BLOOM kind) trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(how.special_tokens.values()))  # ordered, unique: ids 0, 1, ...
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
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
    return LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
                       max_position_embeddings=CONTEXT, **ids)


def build_tiny_checkpoint(arch: str, folder: Path, seed: int = 0) -> Path:
    """Build the tiny `arch` checkpoint into `folder` (model weights as safetensors, config, tokenizer, MANIFEST)."""
    import torch
    import transformers

    checkpoint_folder(arch, seed)  # an unknown architecture is a CourseError listing the ones that exist
    how = TINY_SPECS[arch]
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


def build_missing(builds=BUILDS) -> list[Path]:
    """Build each (arch, seed) of `builds` whose folder has no MANIFEST.json yet; return the folders built."""
    built = []
    for arch, seed in builds:
        folder = checkpoint_folder(arch, seed)
        if not (folder / "MANIFEST.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            built.append(build_tiny_checkpoint(arch, folder, seed))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="*", metavar="ARCH", help=f"one of {', '.join(ARCHS)}; default: BUILDS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per shard of a 100 kB model says nothing
    built = build_missing([(arch, args.seed) for arch in args.archs] if args.archs else BUILDS)
    print(f"tiny checkpoints: {len(built)} built" + "".join(f"\n  {folder}" for folder in built)
          + ("" if built else " (all there already)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
