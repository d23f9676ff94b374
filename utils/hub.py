"""The Hugging Face Hub and the web, for full mode: `hub_errors` turns the Hub libraries' deep OSError for an id that
cannot be downloaded (offline, no network, a wrong id) into a CourseError naming it and the way out (smoke mode, or
going online once); `download` fetches a file once into the course's cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.checks import check_folder
from utils.errors import CourseError
from utils.paths import cache_dir


def offline() -> bool:
    """True when HF_HUB_OFFLINE forbids the Hub libraries any download."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_failure(name: str, kind: str, exc: BaseException) -> str:
    """The course's message for a Hub id that could not be loaded."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if offline():
        return (f"{kind} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                f"run with COURSE_SMOKE=1 (tiny local models and fixture data, nothing to download), or go online "
                f"(unset HF_HUB_OFFLINE) to download it once ({type(exc).__name__}: {detail})")
    return (f"could not load {kind} {name!r} from the Hugging Face Hub ({type(exc).__name__}: {detail}): check the id "
            f"and your connection (a gated model also needs `hf auth login`); without a network, run with "
            f"COURSE_SMOKE=1")


@contextmanager
def hub_errors(name, kind: str = "model") -> Iterator[None]:
    """Turn the Hub libraries' errors for the Hub id `name` into a CourseError saying what to do (a folder's pass)."""
    try:
        yield
    except OSError as exc:  # transformers', datasets' (ConnectionError) and huggingface_hub's (LocalEntryNotFound)
        if Path(str(name)).exists():
            raise
        raise CourseError(hub_failure(str(name), kind, exc)) from exc
    except ValueError as exc:  # huggingface_hub: an id that is neither a local folder nor a valid repository name
        if type(exc).__name__ != "HFValidationError" or Path(str(name)).exists():
            raise
        raise CourseError(f"{kind} {name!r} is neither a local folder nor a Hugging Face Hub id ({exc}); check the "
                          "path or the id") from exc


def download(url: str, filename: str, *, timeout_s: float = 60.0) -> Path:
    """The cached copy of `url` (as `filename`), downloaded once; CourseError for a failed download."""
    import requests

    path = check_folder("the downloads folder", cache_dir() / "downloads") / filename
    if not path.is_file():
        if offline():
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
    return path
