"""Smoke mode: the switch, the course's fixture data, and tiny checkpoints of the real architectures.

`COURSE_SMOKE=1` makes every notebook swap the real Hub checkpoints for tiny ones *of the same architecture*
(so LoRA's `target_modules` names are the real ones) and the real datasets for small fixtures in the real
schemas. Nothing is downloaded: tools/tiny_checkpoints.py builds each tiny model on first use, in the cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from utils.errors import CourseError
from utils.paths import FIXTURES_DIR, cache_dir

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
    # Chapter 01's task: Rotten Tomatoes movie reviews in the Hub dataset's schema (`text`, `label` 0/1). Not in
    # the tokenizer corpus below: adding a file there changes every tiny checkpoint.
    "rotten_tomatoes_train": "rotten_tomatoes_train.jsonl",
    "rotten_tomatoes_validation": "rotten_tomatoes_validation.jsonl",
}


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
        raise CourseError(
            f"fixture {name!r} is missing at {path}; it is part of the repository: restore it with "
            f"`git checkout -- {path.relative_to(FIXTURES_DIR.parent.parent)}`"
        )
    return path


def tiny_checkpoint(arch: str, seed: int = 0) -> str:
    """The local path of the tiny `arch` checkpoint ("gpt2", "gptj", "bloom", "llama"), built on first use.

    The folder is checked against the manifest written when it was built; a corrupt cache is an error that
    says which folder to delete rather than a traceback from deep inside transformers.
    """
    from tools.tiny_checkpoints import build_tiny_checkpoint, fingerprint, manifest

    folder = cache_dir() / "tiny" / f"{arch}-seed{seed}-{fingerprint(arch, seed)}"
    marker = folder / "MANIFEST.json"
    if not marker.is_file():
        build_tiny_checkpoint(arch, folder, seed)
    try:
        expected = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CourseError(f"the tiny checkpoint cache at {folder} is corrupt ({exc}); delete it (rm -rf '{folder}') and run again") from exc
    if manifest(folder) != expected:
        raise CourseError(f"the tiny checkpoint cache at {folder} is corrupt (its files differ from MANIFEST.json); "
                          f"delete it (rm -rf '{folder}') and run again")
    return str(folder)
