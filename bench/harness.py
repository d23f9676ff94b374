"""The measuring harness: interleaved rounds of timings, adaptive until each ratio's interval is tight or a time cap
passes; medians with bootstrap intervals and a verdict against a target; a line fit; FLOP counts; the machine; the
results file."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Estimate(NamedTuple):
    """A figure with its interval: `value` lies in [low, high]."""

    value: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, spec: str = ".3f") -> str:
        """`value [low, high]`, each with the format `spec`."""
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def median_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """The median of `values` and its percentile-bootstrap interval: the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of the medians of `resamples` resamples with replacement. Seeded: the same values give the same interval.
    With five values it is their min and max; with more it narrows as the noise allows."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"median_ci needs at least 2 values, got {x.size}: one repeat has no interval")
    medians = np.median(x[np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))], axis=1)
    low, high = np.quantile(medians, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Estimate(float(np.median(x)), float(low), float(high))


MET, NOT_MET, NO_DIFFERENCE = "met", "not met", "no difference measurable"


@dataclass(frozen=True)
class Target:
    """What a ratio should be: at least `low` and at most `high` (None leaves that side open)."""

    low: float | None = None
    high: float | None = None

    def __str__(self) -> str:
        if self.low is None:
            return f"<= {self.high:g}"
        if self.high is None:
            return f">= {self.low:g}"
        return f"{self.low:g} to {self.high:g}"


def verdict(estimate: Estimate, target: Target) -> str:
    """`met` when the whole interval lies within the target, `not met` when none of it does, and `no difference
    measurable` when it straddles a bound of the target: the noise hides which side the ratio is on."""
    low = -math.inf if target.low is None else target.low
    high = math.inf if target.high is None else target.high
    if low <= estimate.low and estimate.high <= high:
        return MET
    if estimate.high < low or estimate.low > high:
        return NOT_MET
    return NO_DIFFERENCE


@dataclass
class Timing:
    """Seconds of each repeat of one measured callable; the median is the figure reported."""

    name: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def interval(self) -> Estimate:
        """The median seconds with their bootstrap 95% interval."""
        return median_ci(self.seconds)


@dataclass(frozen=True)
class Ratio:
    """The time of `numerator` over the time of `denominator`, paired round by round, and its target."""

    label: str
    numerator: str
    denominator: str
    target: Target


@dataclass
class RatioResult:
    """A ratio's per-round values, their median with its interval, and the verdict against its target."""

    ratio: Ratio
    per_round: list[float]
    estimate: Estimate
    verdict: str


def summary_row(label: str, estimate: Estimate, target: Target, source: str) -> dict[str, str]:
    """One row of the results' summary: the figure, its 95% interval, the target, the verdict, and what it came from."""
    return {"comparison": label, "ratio": f"{estimate.value:.3f}",
            "95% interval": f"{estimate.low:.3f} to {estimate.high:.3f}", "target": str(target),
            "met": verdict(estimate, target), "from": source}


@dataclass
class Rounds:
    """What time_rounds measured: each callable's timings, each ratio's result, its wall time and why it stopped."""

    timings: dict[str, Timing]
    ratios: list[RatioResult]
    seconds: float
    stopped: str

    def summary_rows(self) -> list[dict[str, str]]:
        source = f"{len(next(iter(self.timings.values())).seconds)} paired rounds, {self.seconds:.0f} s, {self.stopped}"
        return [summary_row(r.ratio.label, r.estimate, r.ratio.target, source) for r in self.ratios]


def ratio_results(timings: dict[str, Timing], ratios: Sequence[Ratio]) -> list[RatioResult]:
    """Each ratio of paired timings (round i's numerator over round i's denominator), its median, interval, verdict."""
    results = []
    for ratio in ratios:
        per_round = [a / b for a, b in zip(timings[ratio.numerator].seconds, timings[ratio.denominator].seconds, strict=True)]
        estimate = median_ci(per_round)
        results.append(RatioResult(ratio, per_round, estimate, verdict(estimate, ratio.target)))
    return results


Task = Callable[[], object]


def time_rounds(fns: dict[str, Task | Sequence[Task]], ratios: Sequence[Ratio] = (), *, min_rounds: int = 5,
                max_rounds: int = 60, rel_half_width: float = 0.03, cap_s: float = 120.0, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> Rounds:
    """Time every contender once per round, after `warmup` untimed runs each, rotating the order each round (A B, then
    B A, ...), so that a slow phase of a shared machine hits the contenders alike and drift cancels; each ratio is taken
    within a round. A contender given as a sequence of callables (an epoch's training steps) is interleaved with the
    others step by step, the order rotating at each step too, and its time in a round is the sum of its steps'. After
    `min_rounds`, stop as soon as every ratio's 95% interval has a half-width of at most `rel_half_width` x its
    median, or `cap_s` seconds have passed, or `max_rounds` rounds are done.

    Each call is timed on its own with `clock` (CUDA synchronised before and after): a training step takes seconds
    here, and torch.utils.benchmark.Timer.timeit(1) would add two warm-up calls to every one."""
    import torch

    if not 2 <= min_rounds <= max_rounds or warmup < 0:
        raise ValueError(f"min_rounds={min_rounds}, max_rounds={max_rounds}, warmup={warmup}: need "
                         "2 <= min_rounds <= max_rounds and warmup >= 0")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    names = list(fns)
    steps = {name: [fn] if callable(fn) else list(fn) for name, fn in fns.items()}
    start = clock()
    for _ in range(warmup):
        for name in names:
            for step in steps[name]:
                step()
    timings = {name: Timing(name) for name in names}
    stopped = "max rounds"
    for i in range(max_rounds):
        total = dict.fromkeys(names, 0.0)
        for j in range(max(len(s) for s in steps.values())):
            k = (i + j) % len(names)
            for name in names[k:] + names[:k]:
                if j < len(steps[name]):
                    sync()
                    begin = clock()
                    steps[name][j]()
                    sync()
                    total[name] += clock() - begin
        for name in names:
            timings[name].seconds.append(total[name])
        if i + 1 < min_rounds:
            continue
        results = ratio_results(timings, ratios)
        if ratios and all(r.estimate.half_width <= rel_half_width * abs(r.estimate.value) for r in results):
            stopped = "interval tight"
            break
        if clock() - start >= cap_s:
            stopped = "time cap"
            break
    return Rounds(timings, ratio_results(timings, ratios), clock() - start, stopped)


def line_fit(x: Sequence[float], y: Sequence[float], at: float, resamples: int = 2000,
             seed: int = 0) -> tuple[Estimate, Estimate, Estimate]:
    """Least-squares y = intercept + slope x, each with a percentile-bootstrap 95% interval (the points resampled
    with replacement), and the intercept's share of the fitted y at x = `at`: (slope, intercept, share)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < 3 or np.ptp(xs) == 0:
        raise ValueError("line_fit needs at least 3 points and 2 distinct x values")
    rng = np.random.default_rng(seed)
    index = np.vstack([np.arange(xs.size), rng.integers(0, xs.size, (resamples, xs.size))])  # row 0: the data
    bx, by = xs[index], ys[index]
    dx = bx - bx.mean(axis=1, keepdims=True)
    keep = (dx**2).sum(axis=1) > 0  # a resample of one x value has no slope
    slope = (dx * (by - by.mean(axis=1, keepdims=True))).sum(axis=1)[keep] / (dx**2).sum(axis=1)[keep]
    intercept = by.mean(axis=1)[keep] - slope * bx.mean(axis=1)[keep]
    share = intercept / (intercept + slope * at)
    return tuple(Estimate(float(v[0]), *map(float, np.quantile(v[1:], [0.025, 0.975]))) for v in (slope, intercept, share))


def matmul_task(n: int = 2048, repeats: int = 3, dtype=None, device="cpu") -> tuple[Callable[[], object], float]:
    """A dense fp32 matmul benchmark to time beside a model's steps, and its FLOPs: `repeats` products of n x n by
    n x n (2 n^3 FLOPs each). Timed in the same rounds as the steps, its rate is the machine's at that moment."""
    import torch

    a = torch.randn(n, n, dtype=dtype or torch.float32, device=device)
    b = torch.randn(n, n, dtype=dtype or torch.float32, device=device)

    def run():
        for _ in range(repeats):
            a @ b
    return run, 2.0 * n**3 * repeats


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


def cpu_info() -> tuple[str, bool]:
    """The CPU's model name and whether it has AVX512-BF16 (bitsandbytes' CPU kernels differ with it), from
    /proc/cpuinfo; the platform's processor name and False where that file is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), False
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return model, "avx512_bf16" in flags


def load_average() -> str:
    """The 1-minute load average: how busy the machine was (2 on a 2-core CPU means every core had a runnable task)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine() -> dict[str, str]:
    """The machine and software the figures come from: date, CPU, cores, threads, GPU, versions, load at the start."""
    from importlib.metadata import version

    import torch

    cpu, bf16 = cpu_info()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "AVX512-BF16": "yes" if bf16 else "no",
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "peft": version("peft"),
        "load average (1 min) at start": load_average(),
    }


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


def split_cells(line: str) -> list[str]:
    """The cells of one markdown table line, with markdown_table's escape `\\|` read back as `|`."""
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def read_results(text: str) -> dict[str, list[dict[str, str]]]:
    """The tables of a results file written by write_results, by section heading: each row a dict of its cells as
    written (strings). The first table of each section; a section without one maps to []."""
    sections: dict[str, list[dict[str, str]]] = {}
    heading = None
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = []
        elif heading and line.startswith("|") and not sections[heading] and n + 1 < len(lines) \
                and lines[n + 1].startswith("|---"):
            columns = split_cells(line)
            body = []
            for row in lines[n + 2:]:
                if not row.startswith("|"):
                    break
                body.append(dict(zip(columns, split_cells(row), strict=True)))
            sections[heading] = body
    return sections
