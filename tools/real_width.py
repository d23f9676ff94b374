"""Real-width checkpoints for `make full-check`, offline: every real width, one or two blocks, random weights.

A checkpoint built from a real model's published config (utils.real_models) with its depth cut to one or two
blocks has every width of the real one (hidden size, heads, vocabulary), so running a notebook's full-mode path on
it finds the shape, dtype and memory mistakes that the tiny smoke models hide. Each is saved as the Hub's is:
BLOOM in fp16 safetensors, GPT-2 in fp32 safetensors, GPT-J as its `float16` branch ships it (one fp16
`pytorch_model.bin`, no safetensors).

Tokenizers. The real GPT-2 BPE (also GPT-J's) comes from PyPI: the openai-whisper source distribution ships it as
`whisper/assets/gpt2.tiktoken` (MIT licence; 835,554 bytes, sha256 checked), and transformers' `TikTokenConverter`
turns it into a Hugging Face tokenizer. Only that file is kept, in the course's cache, never in the repository.
BLOOM's own 250,680-token tokenizer is only on the Hub: BLOOM's checkpoints get a stand-in, GPT-2's byte-level BPE
with BLOOM's four special tokens in front (<unk> <s> </s> <pad> = 0-3, GPT-2's tokens shifted by 4), so ids,
special tokens and English sequence lengths are realistic while only the first 50,261 of the 250,880 embedding
rows are ever read.

    python -m tools.real_width gpt2-bpe            # fetch and convert the GPT-2 BPE (needs PyPI once)
    python -m tools.real_width all                 # and every checkpoint full-check uses
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from utils.errors import CourseError
from utils.paths import cache_dir

WHISPER_SDIST = "openai-whisper==20250625"
TIKTOKEN_MEMBER = "whisper/assets/gpt2.tiktoken"
#: tiktoken's own hash of GPT-2's ranks (r50k_base): the file is GPT-2's BPE, byte for byte.
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
#: GPT-2's pre-tokenizer pattern (transformers' GPT2Tokenizer's), not TikTokenConverter's default (cl100k's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
BLOOM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
BUILDER_VERSION = 1

#: name -> (real model id, blocks kept, how the Hub stores it: "safetensors-fp16" | "safetensors-fp32" | "bin-fp16")
CHECKPOINTS: dict[str, tuple[str, int, str]] = {
    "bloomz-560m": ("bigscience/bloomz-560m", 2, "safetensors-fp16"),
    "bloom-7b1": ("bigscience/bloom-7b1", 1, "safetensors-fp16"),
    "gpt-j-6b-float16": ("EleutherAI/gpt-j-6b", 1, "bin-fp16"),
    "gpt2-medium": ("openai-community/gpt2-medium", 2, "safetensors-fp32"),
}


def real_width_dir() -> Path:
    return cache_dir() / "real-width"


def gpt2_tiktoken_path() -> Path:
    """GPT-2's BPE ranks, fetched once from the openai-whisper source distribution on PyPI (sha256 checked)."""
    path = real_width_dir() / "gpt2.tiktoken"
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == GPT2_TIKTOKEN_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              "-d", tmp, WHISPER_SDIST], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if pip.returncode != 0 or not sdists:
            raise CourseError(f"could not fetch {WHISPER_SDIST} from PyPI for GPT-2's BPE (pip said: "
                              f"{pip.stderr.strip()[-300:]}); run `make gpt2-bpe` where PyPI is reachable")
        with tarfile.open(sdists[0]) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(TIKTOKEN_MEMBER)), None)
            if member is None:
                raise CourseError(f"{sdists[0].name} holds no {TIKTOKEN_MEMBER}")
            data = archive.extractfile(member).read()
    got = hashlib.sha256(data).hexdigest()
    if got != GPT2_TIKTOKEN_SHA256:
        raise CourseError(f"{TIKTOKEN_MEMBER} of {WHISPER_SDIST} has sha256 {got}, not GPT-2's {GPT2_TIKTOKEN_SHA256}")
    tmp_path = path.with_suffix(".part")
    tmp_path.write_bytes(data)
    tmp_path.rename(path)
    return path


def _bpe_tokenizer(shift: int = 0, specials: list[str] | None = None):
    """GPT-2's BPE as a `tokenizers.Tokenizer`, through transformers' TikTokenConverter. With `shift`, every id
    moves up by `shift` and `specials` take ids 0..shift-1 (BLOOM's stand-in); else <|endoftext|> is 50256."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:  # tiktoken's format, without tiktoken installed
            ranks = {}
            for line in Path(path).read_text(encoding="ascii").splitlines():
                if line:
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank) + shift
            return ranks

    converted = Converter(str(gpt2_tiktoken_path()), pattern=GPT2_PATTERN).converted()
    if shift:
        data = json.loads(converted.to_str())
        for i, token in enumerate(specials or []):
            data["model"]["vocab"][token] = i
        data["model"]["vocab"] = dict(sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]))
        converted = Tokenizer.from_str(json.dumps(data))
        converted.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials or []])
    else:
        converted.add_special_tokens([AddedToken(ENDOFTEXT, normalized=False, special=True)])
    assert isinstance(converted.model, models.BPE)
    return converted


def _save_tokenizer(tok, folder: Path, tokenizer_class: str, specials: dict[str, str], max_length: int) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)
    fast.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = tokenizer_class
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _atomic_build(folder: Path, build) -> Path:
    """Run `build(tmp)` and give the result `folder`'s name only when it completed (a crash leaves no half folder)."""
    marker = folder / "BUILT.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == BUILDER_VERSION:
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:  # offline without the GPT-2 BPE, interrupted, ...: leave no half-built folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "BUILT.json").write_text(json.dumps({"version": BUILDER_VERSION}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def gpt2_tokenizer() -> str:
    """The folder of the real GPT-2 tokenizer (GPT2Tokenizer; <|endoftext|> = 50256 is bos, eos and unk)."""
    def build(tmp: Path) -> None:
        specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
        _save_tokenizer(_bpe_tokenizer(), tmp, "GPT2Tokenizer", specials, 1024)

    return str(_atomic_build(real_width_dir() / "gpt2-tokenizer", build))


def _bloom_stand_in(tmp: Path) -> None:
    specials = dict(zip(["unk_token", "bos_token", "eos_token", "pad_token"], BLOOM_SPECIALS, strict=True))
    _save_tokenizer(_bpe_tokenizer(shift=len(BLOOM_SPECIALS), specials=BLOOM_SPECIALS), tmp, "BloomTokenizer",
                    specials, 2048)


def real_width_checkpoint(name: str, seed: int = 0) -> str:
    """The folder of the real-width checkpoint `name` (see CHECKPOINTS), built on first use."""
    if name not in CHECKPOINTS:
        raise CourseError(f"unknown real-width checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    model_id, blocks, storage = CHECKPOINTS[name]

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from utils.real_models import real_config

        config = real_config(model_id)
        config.num_hidden_layers = blocks  # n_layer for GPT-2/GPT-J/BLOOM; every width stays the real one
        dtype = torch.float32 if storage.endswith("fp32") else torch.float16
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # normal(0, 0.02) init, as the real configs
        if storage.startswith("bin"):
            # as GPT-J's float16 branch: one pytorch_model.bin (torch.save's zip format) and no safetensors
            model.config.save_pretrained(tmp)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            torch.save(state, tmp / "pytorch_model.bin")
        else:
            model.save_pretrained(tmp, max_shard_size="1GB")  # sharded, as the 7B checkpoints are
        del model
        if model_id.startswith("bigscience/"):
            _bloom_stand_in(tmp)
        else:
            tokenizer = Path(gpt2_tokenizer())
            for file in tokenizer.iterdir():
                if file.name != "BUILT.json":
                    shutil.copy(file, tmp / file.name)
        (tmp / "REAL_WIDTH.json").write_text(json.dumps(
            {"real_model": model_id, "blocks": blocks, "storage": storage, "seed": seed,
             "tokenizer": "BLOOM stand-in: GPT-2 BPE + BLOOM specials" if model_id.startswith("bigscience/")
             else "GPT-2 BPE (openai-whisper's gpt2.tiktoken)"}, indent=2) + "\n")

    return str(_atomic_build(real_width_dir() / f"{name}-{blocks}block-seed{seed}", build))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["gpt2-bpe", "all", *CHECKPOINTS])
    args = parser.parse_args(argv)
    print(gpt2_tokenizer())
    for name in CHECKPOINTS if args.what == "all" else [args.what] if args.what in CHECKPOINTS else []:
        print(real_width_checkpoint(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
