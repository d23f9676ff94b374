"""Smoke mode: the switch, the course's fixture data, and where the tiny checkpoints of the real architectures are.

`COURSE_SMOKE=1` makes every notebook swap the real Hub checkpoints for tiny ones *of the same architecture* (so
LoRA's `target_modules` names are the real ones) and the real datasets for small fixtures in the real schemas.
`make setup` builds the tiny checkpoints once into the cache (`python -m tools.tiny_checkpoints`); this module finds
them and checks them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from utils.errors import CourseError
from utils.paths import FIXTURES_DIR, ROOT, cache_dir

FIXTURES: dict[str, str] = {
    "instructions": "instruction-data.json",
    "squad_train": "squad_v2_train.json",
    "squad_validation": "squad_v2_validation.json",
    "prompts": "awesome_prompts.csv",
    "story": "story.txt",
    # Edith Wharton's short story (1908, public domain), the file chapter 05's full mode downloads: make full-check
    # reads it at GPT-2's real widths, where the short story above has fewer tokens than one context window.
    "the_verdict": "the-verdict.txt",
    "reviews": "reviews.jsonl",
    # Chapter 01's task: Rotten Tomatoes movie reviews in the Hub dataset's schema (`text`, `label` 0/1).
    "rotten_tomatoes_train": "rotten_tomatoes_train.jsonl",
    "rotten_tomatoes_validation": "rotten_tomatoes_validation.jsonl",
    # The chapters' fixed prompt text, copied once, so that their words are whole tokens of the tiny tokenizers.
    "tiny_corpus": "tiny_tokenizer_corpus.txt",
}
#: The fixtures the tiny tokenizers are trained on. A checkpoint depends on these files alone, never on a chapter's
#: code: editing a chapter's prompt changes no checkpoint until its text is copied into tiny_tokenizer_corpus.txt.
CORPUS_FIXTURES = ("story", "instructions", "squad_train", "squad_validation", "prompts", "reviews", "tiny_corpus")
ARCHS = ("gpt2", "gptj", "bloom", "llama")
#: Bump when tools/tiny_checkpoints.py changes what it writes, so that old caches are rebuilt rather than reused.
BUILDER_VERSION = 4
BUILD = "python -m tools.tiny_checkpoints"


def is_smoke() -> bool:
    """True when `COURSE_SMOKE=1`: tiny local checkpoints and fixture data instead of the Hub's."""
    value = os.environ.get("COURSE_SMOKE", "0").strip().lower()
    if value not in {"0", "1", "true", "false", ""}:
        raise CourseError(f"COURSE_SMOKE={value!r}: use 1 (tiny local models) or 0 (the real ones)")
    return value in {"1", "true"}


def fixture_path(name: str) -> Path:
    """The path of one of the course's fixture files, by short name (see `FIXTURES`)."""
    if name not in FIXTURES:
        raise CourseError(f"unknown fixture {name!r}; the course ships: {', '.join(sorted(FIXTURES))}")
    path = FIXTURES_DIR / FIXTURES[name]
    if not path.is_file():
        raise CourseError(f"fixture {name!r} is missing at {path}; it is part of the repository: restore it with "
                          f"`git checkout -- {path.relative_to(FIXTURES_DIR.parent.parent)}`")
    return path


def fingerprint(arch: str, seed: int) -> str:
    """What a tiny checkpoint depends on: the builder's version, `arch`, `seed`, transformers' version, the corpus."""
    digest = hashlib.sha256(json.dumps([BUILDER_VERSION, arch, seed, importlib.metadata.version("transformers")]).encode())
    for name in CORPUS_FIXTURES:
        digest.update(fixture_path(name).read_bytes())
    return digest.hexdigest()[:12]


def checkpoint_folder(arch: str, seed: int = 0) -> Path:
    """Where the tiny `arch` checkpoint of `seed` is (or will be) in the cache."""
    if arch not in ARCHS:
        raise CourseError(f"unknown architecture {arch!r}; tiny checkpoints exist for: {', '.join(ARCHS)}")
    return cache_dir() / "tiny" / f"{arch}-seed{seed}-{fingerprint(arch, seed)}"


def manifest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a checkpoint folder (the MANIFEST.json a complete build writes last)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.name != "MANIFEST.json"}


def tiny_checkpoint(arch: str, seed: int = 0) -> str:
    """The folder of the tiny `arch` checkpoint ("gpt2", "gptj", "bloom", "llama") that `make setup` built; a missing or
    corrupt one (files that differ from its MANIFEST.json) is a CourseError naming the command that builds it."""
    folder = checkpoint_folder(arch, seed)
    build = f"`{BUILD}{f' {arch} --seed {seed}' if seed else ''}` in {ROOT}"
    if not (folder / "MANIFEST.json").is_file():
        raise CourseError(f"the tiny {arch} checkpoint (seed {seed}) is not built: run {build} (`make setup` does)")
    try:
        expected = json.loads((folder / "MANIFEST.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        expected = exc
    if manifest(folder) != expected:
        raise CourseError(f"the tiny checkpoint cache at {folder} is corrupt (its files differ from MANIFEST.json): "
                          f"delete it (rm -rf '{folder}') and run {build}")
    return str(folder)
