"""The measuring harness: interleaved timing with warm-up and a median, FLOP counts, the machine, the table."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Timing:
    """Seconds of each repeat of one measured callable; the median is the figure reported."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.seconds else float("nan")


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, Timing]:
    """Time each callable `repeats` times after `warmup` untimed calls, round-robin (A B A B ...), so that a
    slow phase of a shared machine hits every contender alike and their ratio holds; the median is reported.

    Each call is timed on its own with time.perf_counter (CUDA synchronised before and after): a training step
    takes seconds here, and torch.utils.benchmark.Timer.timeit(1) would add two warm-up calls to every one."""
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats}, warmup={warmup}: need repeats >= 1 and warmup >= 0")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    results = {name: Timing(name) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            results[name].seconds.append(time.perf_counter() - start)
    return results


def matmul_peak_flops(n: int = 2048, repeats: int = 5, dtype=None, device="cpu") -> float:
    """This machine's measured dense matmul rate (FLOP/s): an n x n @ n x n product is 2 n^3 FLOPs; the best of
    `repeats` torch.utils.benchmark.Timer measurements (the peak is what the hardware can do, so the fastest repeat is the fair figure)."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    from torch.utils import benchmark

    # Timer runs on one thread unless told otherwise: measure with the threads the models run with
    timer = benchmark.Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    best = min(timer.timeit(number=1).median for _ in range(repeats))  # timeit warms up before it times
    return 2 * n**3 / best


def matmul_parameters(model) -> int:
    """Parameters that take part in matrix multiplies: the weights of every nn.Linear (the output head included,
    counted once when it is tied to the token embedding). Embedding lookups, norms and biases are left out."""
    import torch

    seen, total = set(), 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"  # HF GPT-2's Linear
        if is_linear and weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            total += weight.numel()
    return total


def training_flops(params: int, tokens: int, n_layers: int = 0, seq_len: int = 0, emb_dim: int = 0) -> float:
    """FLOPs of one forward + backward pass: 6 x parameters x tokens (2 for the forward multiply-adds, 4 for the
    backward's two products), plus the attention scores and their weighted sum, 12 x layers x seq x emb per token
    (PaLM's appendix B; pass n_layers=0 to leave it out). Causal masking would halve the attention term if the
    kernel skipped the masked half; counted in full, as PaLM does."""
    return 6 * params * tokens + 12 * n_layers * seq_len * emb_dim * tokens


def machine() -> dict[str, str]:
    """The machine the figures come from: CPU model, cores, threads, GPU, torch version, date."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    try:
        info["load average (1 min) at start"] = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        pass
    return info


def markdown_table(rows: list[dict[str, object]], columns: list[str] | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts); floats to 4 significant digits, missing cells empty."""
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|") if value is not None else ""

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(path: Path, title: str, info: dict[str, str], sections: list[tuple[str, str, list[dict]]]) -> str:
    """Write the results file: the machine, then each (heading, note, rows) section as a table; returns the text."""
    parts = [f"# {title}\n", "Written by `make bench` (`python -m bench.run`); do not edit by hand.\n",
             "## Machine\n", markdown_table([{"": key, "value": value} for key, value in info.items()])]
    for heading, note, rows in sections:
        parts.append(f"## {heading}\n")
        if note:
            parts.append(note.strip() + "\n")
        parts.append(markdown_table(rows))
    text = "\n".join(parts)
    Path(path).write_text(text, encoding="utf-8")
    return text
