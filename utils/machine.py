"""The machine a notebook runs on: device and dtype choice, seeding, an environment summary, peak memory."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from utils.checks import check_int
from utils.paths import ROOT

# About how much GPU memory each chapter's full recipe needs (estimates: weights + LoRA state + activations with
# gradient checkpointing at the chapters' batch sizes; the chapter READMEs break them down), for the advice below.
RECIPE_GPU_GB = {
    "01 six PEFT methods on bloomz-560m": 6,
    "02 GPT-J 6B 8-bit + LoRA": 11,  # 6.9 GiB weights and optimizer state (computed) + activations (estimate)
    "03 bloom-7b1 4-bit QLoRA": 9,  # 8.3 GiB predicted by utils.memory_budget at batch 4 x 256 (trl's fused head)
    "04 gpt2-medium instruction fine-tune": 8,
    "05 GPT-2 124M pre-training loop": 4,
}


def pick_device():
    """The device to train on: CUDA when present, else CPU. The course does not pick Apple's MPS: no notebook is
    tested there (bitsandbytes 0.50 has 4-bit kernels for it; `utils.ch03_qlora.require_4bit_support` probes)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device=None, capability: tuple[int, int] | None = None):
    """The compute dtype for `device`: bf16 on GPUs of compute capability >= 8.0, fp16 below (a T4 is 7.5), fp32 on CPU.

    `capability` overrides what CUDA reports (for tests and for planning a run on another GPU).
    """
    import torch

    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cuda":
        return torch.float32
    major, minor = capability if capability is not None else torch.cuda.get_device_capability(device)
    return torch.bfloat16 if (major, minor) >= (8, 0) else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run can be repeated."""
    check_int("seed", seed, minimum=0, maximum=2**32 - 1, hint="NumPy takes seeds 0 .. 2**32 - 1")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def requirements_file() -> Path:
    """The requirement set this runtime was set up from: the ML stack alone on Colab, the whole tested stack elsewhere."""
    return ROOT / ("requirements-colab.txt" if "google.colab" in sys.modules else "requirements.txt")


def pinned_versions(requirements: str | os.PathLike | None = None) -> dict[str, str]:
    """The exact pins (`name==version`) of a requirements file and the files it includes with `-r`, by normalised
    package name; by default those of `requirements_file()`."""
    path = Path(requirements) if requirements is not None else requirements_file()
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if include := re.match(r"^\s*-r\s+(\S+)", line):
            pins.update(pinned_versions(path.parent / include.group(1)))
        elif match := re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line):
            pins[normalise_name(match.group(1))] = match.group(2)
    return pins


def normalise_name(name: str) -> str:
    """A package name as pip compares it (PEP 503): lower case, runs of "-", "_" and "." as one "-"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_mismatches(pins: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    """Packages whose installed version differs from the pin: name -> (installed or None, pinned)."""
    found = {}
    for name, pinned in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            found[name] = (installed, pinned)
    return found


def bitsandbytes_backend() -> str:
    """Which backend bitsandbytes would use here ("cuda", "cpu", ...) or why it cannot run."""
    try:
        import bitsandbytes  # noqa: F401
        import torch
    except Exception as exc:  # an import error here is the answer, not a crash
        return f"unavailable ({type(exc).__name__}: {exc})"
    return "cuda" if torch.cuda.is_available() else "cpu"


def environment_summary() -> dict[str, object]:
    """Python, torch, CUDA, GPU name, capability and memory, bitsandbytes' backend, and installed-vs-pinned versions."""
    import torch

    summary: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": None,
        "compute capability": None,
        "gpu memory (GiB)": None,
        "cpu threads": torch.get_num_threads(),
        "bitsandbytes backend": bitsandbytes_backend(),
        "compute dtype": str(pick_dtype()).removeprefix("torch."),
        "smoke mode": os.environ.get("COURSE_SMOKE", "0") == "1",
        "colab": "google.colab" in sys.modules,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        summary.update({"gpu": props.name, "compute capability": f"{props.major}.{props.minor}",
                        "gpu memory (GiB)": round(props.total_memory / 2**30, 1)})
    mismatches = version_mismatches(pinned_versions())
    summary["version mismatches"] = {name: f"installed {got}, pinned {want}" for name, (got, want) in mismatches.items()}
    return summary


def print_environment() -> dict[str, object]:
    """Print the environment summary (a warning for each package that differs from its pin) and return it."""
    summary = environment_summary()
    width = max(map(len, summary))
    for key, value in summary.items():
        if key != "version mismatches":
            print(f"{key:<{width}}  {value}")
    for name, what in summary["version mismatches"].items():
        warnings.warn(f"{name}: {what}; the course is tested with the pinned stack "
                      f"(pip install -r {requirements_file().name})", stacklevel=2)
    if not summary["version mismatches"]:
        print(f"{'versions':<{width}}  all pinned packages match {requirements_file().name}")
    return summary


@dataclass
class PeakMemory:
    """The peak memory of a block: CUDA max allocated on a GPU, process resident memory (RSS) on a CPU."""

    device: str = "cpu"
    peak_bytes: int = 0
    baseline_bytes: int = 0

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / 2**30

    @property
    def added_bytes(self) -> int:
        """Peak above what was in use when the block started."""
        return max(0, self.peak_bytes - self.baseline_bytes)


@contextmanager
def peak_memory(device=None, interval_s: float = 0.005) -> Iterator[PeakMemory]:
    """Measure peak memory inside a `with` block.

    On CUDA this is `torch.cuda.max_memory_allocated` (reset on entry). On a CPU the process's RSS is sampled
    every `interval_s` seconds by a background thread; a peak shorter than that interval can be missed.
    """
    import psutil
    import torch

    device = torch.device(device) if device is not None else pick_device()
    result = PeakMemory(device=device.type)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.baseline_bytes = torch.cuda.memory_allocated(device)
        try:
            yield result
        finally:
            torch.cuda.synchronize(device)
            result.peak_bytes = torch.cuda.max_memory_allocated(device)
        return
    process = psutil.Process()
    result.baseline_bytes = result.peak_bytes = process.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result.peak_bytes = max(result.peak_bytes, process.memory_info().rss)
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result.peak_bytes = max(result.peak_bytes, process.memory_info().rss)


def watch(*objects) -> list:
    """Weak references to `objects` (models, trainers), for `check_released` to check that they are really gone."""
    import weakref

    return [weakref.ref(obj) for obj in objects]


def check_released(device=None, watched=()) -> int:
    """Collect what Python no longer references and hand CUDA's cached blocks back; return the bytes still allocated
    on `device` (0 on a CPU, where freed memory goes back to the process at once). `del` the models first.

    `watched`: weak references from `watch(...)` taken before the `del`: if any object is still alive, something
    still holds it (another variable, a trainer, a closure) and its memory is not free; that is a CourseError naming
    it, before the next model is loaded on top (on a 16 GB T4, two 7B models do not fit).
    """
    import gc

    import torch

    from utils.errors import CourseError

    gc.collect()
    alive = [ref() for ref in watched if ref() is not None]
    if alive:
        holders = [type(h).__name__ for obj in alive for h in gc.get_referrers(obj) if not isinstance(h, list)][:5]
        raise CourseError(f"{', '.join(type(obj).__name__ for obj in alive)} is still referenced (by {holders}) "
                          "after del: its memory was not released; delete every name that refers to it")
    device = torch.device(device) if device is not None else pick_device()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)



def advice(summary: dict[str, object]) -> list[str]:
    """Plain advice from an environment summary: which dtype, whether 4/8-bit works, which recipes fit the GPU."""
    lines = []
    gpu, memory = summary.get("gpu"), summary.get("gpu memory (GiB)")
    if gpu is None:
        lines.append("No GPU: run the course in smoke mode (COURSE_SMOKE=1, tiny models, minutes on a CPU); "
                     "the real recipes need a GPU (a free Colab T4 is enough for every chapter).")
    else:
        dtype = summary.get("compute dtype")
        lines.append(f"{gpu}: compute in {dtype}" + (" (no bf16 below compute capability 8.0, e.g. a T4: the course "
                                                     "uses fp16 there)" if dtype == "float16" else ""))
        for recipe, need in RECIPE_GPU_GB.items():
            verdict = "fits" if memory and memory >= need else "does NOT fit"
            lines.append(f"  {recipe}: about {need} GB needed, {verdict} in {memory} GiB")
    backend = str(summary.get("bitsandbytes backend"))
    lines.append(f"bitsandbytes backend: {backend}; " + (
        "4-bit and 8-bit loading will work." if backend in {"cuda", "cpu"} else
        f"4-bit and 8-bit loading will NOT work: pip install -r {requirements_file().name}"))
    if summary.get("version mismatches"):
        lines.append(f"Some packages differ from the tested pins (warnings above): pip install -r "
                     f"{requirements_file().name}")
    return lines
