"""Where things live: the repository root, the cache of built checkpoints and downloads, build outputs."""

from __future__ import annotations

import os
from pathlib import Path

from utils.checks import check_folder

ROOT: Path = Path(__file__).resolve().parent.parent
FIXTURES_DIR: Path = ROOT / "data" / "fixtures"
BUILD_DIR: Path = ROOT / "build"

#: The repository learners clone (the Colab badge and setup cell are generated from this one definition). `make sync`
#: writes it from `git remote get-url origin` when that is a GitHub address, so a fork's badges are its own.
REPO_SLUG: str = "peft-course/peft-course"
REPO_URL: str = f"https://github.com/{REPO_SLUG}"


def cache_dir() -> Path:
    """The course's cache folder (tiny checkpoints, downloads); `COURSE_CACHE_DIR` overrides `ROOT/.cache`."""
    path = check_folder("COURSE_CACHE_DIR", os.environ.get("COURSE_CACHE_DIR", ROOT / ".cache"),
                        hint="point COURSE_CACHE_DIR at a folder (or unset it: ROOT/.cache)")
    path.mkdir(parents=True, exist_ok=True)
    return path
