"""Downloads for full mode: fetched once into the course's cache, with a clear message when there is no network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from utils.errors import CourseError
from utils.paths import cache_dir


def download(url: str, filename: str, *, sha256: str | None = None, timeout_s: float = 60.0) -> Path:
    """Return the cached copy of `url` (saved as `filename` in the cache), downloading it on first use.

    A failed download raises `CourseError` saying what to do (no network: run in smoke mode, or copy the file
    into the cache by hand); a file whose sha256 differs from `sha256` is rejected, not used.
    """
    import requests

    path = cache_dir() / "downloads" / filename
    if not path.is_file():
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise CourseError(f"{filename} is not in the cache ({path}) and HF_HUB_OFFLINE=1 forbids downloading it "
                              f"from {url}: run with COURSE_SMOKE=1 (fixture data), or put the file there by hand")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            response = requests.get(url, timeout=timeout_s)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise CourseError(f"could not download {url} ({type(exc).__name__}: {exc}). Without network, run in "
                              f"smoke mode (COURSE_SMOKE=1), or save the file as {path}") from exc
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(response.content)
        tmp.rename(path)  # only a complete download gets the real name
    if sha256 is not None:
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != sha256:
            raise CourseError(f"{path} has sha256 {got}, expected {sha256}: delete it and run again to re-download")
    return path
