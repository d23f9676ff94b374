"""Loading from the Hugging Face Hub in full mode, with a message that says what to do when it cannot download.

Wrap each full-mode load of a Hub id in `with hub_errors(MODEL_ID):`. Offline, or without a network, transformers,
datasets and huggingface_hub raise an OSError ("We couldn't connect to 'https://huggingface.co' ...") from deep
inside the library; `hub_errors` turns it into a CourseError naming the id and the two ways out: smoke mode, or
going online once. A local folder's errors pass through unchanged: they are about the folder, not the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.errors import CourseError


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
    """Turn the Hub libraries' errors for the Hub id `name` (a model, tokenizer or dataset that could not be
    downloaded or found in the cache) into a CourseError naming it and saying what to do."""
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
