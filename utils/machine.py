"""The machine a notebook runs on: the device, the installed packages against their pins, peak memory, and a check
that a model's memory was released (00_environment_check.ipynb writes out the environment summary and the dtype rule,
utils/lessons/environment.py)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from utils.checks import read_text
from utils.errors import CourseArgumentError, CourseError


def pick_device():
    """CUDA when present, else the CPU (not Apple's MPS: no notebook is tested there)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DEVICE_NAME = re.compile(r"(cpu|cuda|mps|meta)(:\d+)?")


def as_device(device=None):
    """`device` as a torch.device (None: `pick_device()`); a name torch cannot parse ("gpu", "cuda:x", "cpu0") is a
    CourseArgumentError naming the valid forms, before torch's own message."""
    import torch

    if device is None or isinstance(device, torch.device):
        return device if device is not None else pick_device()
    if not (isinstance(device, str) and DEVICE_NAME.fullmatch(device.strip())):
        raise CourseArgumentError(f"device {device!r} is not a device name torch can parse: use \"cpu\", \"cuda\", "
                                  f"\"cuda:0\" (a GPU by number), \"mps\" or a torch.device")
    return torch.device(device.strip())


def pinned_versions(requirements: str | os.PathLike) -> dict[str, str]:
    """{normalised name: version} of a requirements file's `name==version` pins, its `-r` includes' too."""
    path = Path(requirements)
    pins: dict[str, str] = {}
    for line in read_text(path).splitlines():  # a missing file: a CourseError naming it
        if include := re.match(r"^\s*-r\s+(\S+)", line):
            pins.update(pinned_versions(path.parent / include.group(1)))
        elif match := re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name (the first found on sys.path wins, as at import)."""
    importlib.invalidate_caches()
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"] or ""), dist.version)
    found.pop("", None)  # a broken distribution without a name
    return found


def version_mismatches(pins: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    """{name: (installed version or None, pinned version)} of the packages that differ from their pin."""
    installed = installed_versions()
    return {name: (installed.get(name), pinned) for name, pinned in pins.items() if installed.get(name) != pinned}


@dataclass
class PeakMemory:
    """The peak memory of a `with peak_memory()` block: CUDA's max allocated on a GPU, the process's RSS on a CPU."""

    device: str = "cpu"
    peak_bytes: int = 0
    baseline_bytes: int = 0  # in use when the block started

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30

    @property
    def added_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


@contextmanager
def peak_memory(device=None, interval_s: float = 0.005) -> Iterator[PeakMemory]:
    """Measure the peak memory inside a `with` block: `torch.cuda.max_memory_allocated` on CUDA; on a CPU the RSS,
    sampled every `interval_s` seconds by a thread (a shorter peak can be missed)."""
    import psutil
    import torch

    device = as_device(device)
    cuda, rss, stop = device.type == "cuda", psutil.Process().memory_info, threading.Event()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device) if cuda else rss().rss
    result = PeakMemory(device.type, peak_bytes=start, baseline_bytes=start)

    def sample() -> None:
        while not stop.wait(interval_s):
            result.peak_bytes = max(result.peak_bytes, rss().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    if not cuda:
        sampler.start()
    try:
        yield result
    finally:
        stop.set()
        if cuda:
            torch.cuda.synchronize(device)
            result.peak_bytes = torch.cuda.max_memory_allocated(device)
        else:
            sampler.join()
            result.peak_bytes = max(result.peak_bytes, rss().rss)


def watch(*objects) -> list:
    """Weak references to `objects` (models, trainers), for `check_released` to check that they are really gone."""
    import weakref

    return [weakref.ref(obj) for obj in objects]


def check_released(device=None, watched=()) -> int:
    """After `del model`: collect garbage, empty CUDA's cache, return the bytes still allocated (0 on a CPU). A
    `watch`ed object still alive is a CourseError naming what holds it, before the next model loads on top of it."""
    import gc

    import torch

    gc.collect()
    alive = [ref() for ref in watched if ref() is not None]
    if alive:
        holders = [type(h).__name__ for obj in alive for h in gc.get_referrers(obj) if not isinstance(h, list)][:5]
        raise CourseError(f"{', '.join(type(obj).__name__ for obj in alive)} is still referenced (by {holders}) "
                          "after del: its memory was not released; delete every name that refers to it")
    device = as_device(device)
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)
