"""The course's times, in one generated table: docs/TIMES.md, written from docs/times.json.

- smoke mode: each notebook under `make test` (nbmake, one CPU thread), measured; `python -m tools.times smoke LOG`
  reads pytest's `--durations` lines from a `make test` log;
- full mode at real widths on a CPU: `make full-check` (tools/full_check.py), measured: wall time and peak RSS;
- full mode on a Colab T4: estimates, computed here from FLOPs and the T4's fp16 rate (below), never measured
  (no GPU has run the course yet). Chapter READMEs and notebooks refer to docs/TIMES.md instead of retyping times.

    python -m tools.times                 # rewrite docs/TIMES.md from docs/times.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from utils.ch01_methods import COMPARISON, METHODS
from utils.paths import ROOT

DATA = ROOT / "docs" / "times.json"
TABLE = ROOT / "docs" / "TIMES.md"
T4_FP16_FLOPS = 65e12  # NVIDIA's figure for the T4's fp16 tensor cores
#: The share of that peak a k-bit LoRA step reaches: an assumption (bitsandbytes dequantizes every weight at every
#: matmul, and small batches keep tensor cores half idle), to be replaced by bench/gpu.py's measurement.
T4_UTILISATION = 0.25
T4_BANDWIDTH = 320e9  # bytes/s: generation reads every weight once per new token

#: Chapter 01's notebooks' optimizer steps in full mode, from their parameters cells (tests/test_ch01_registry.py
#: checks them): a method's notebook trains STEPS = 250; DoRA's also trains LoRA and DoRA for COST_STEPS = 30 steps each
#: (and a warm-up step) to time them; the variants' trains its three recipes and sweeps 5 ranks x 2 scalings for
#: SWEEP_STEPS = 20 each; the comparison trains every method for STEPS = 150.
CH01_STEPS: dict[str, int] = {
    **{method.notebook: 250 for method in METHODS.values()},
    METHODS["dora"].notebook: 250 + 2 * (30 + 1),
    METHODS["pissa"].notebook: 3 * 250 + 5 * 2 * 20,
    COMPARISON: len(METHODS) * 150,
}

#: notebook -> (model parameters N, training tokens, generated tokens, bytes read per generated token[, tokens a
#: forward pass re-reads without a KV cache: 2N FLOPs each])
#: Training FLOPs: 2N per token forward, 2N again for the recomputation of gradient checkpointing, 2N backward for
#: the activations' gradients (frozen weights get none): 6N per token; full fine-tuning adds 2N for weight
#: gradients and drops the recomputation (no checkpointing): also 6N.
T4_RECIPES: dict[str, tuple[float, ...]] = {
    # 2 epochs x 2,000 questions x ~250 tokens (SQuAD prompts: ~160 words of context); 400 answers x 16 tokens x 3 beams
    "02-lora-gptj/01_lora_gptj_squad.ipynb": (6.05e9, 2 * 2000 * 250, 400 * 16 * 3, 6.05e9 * 1.2),
    # 3 epochs x 120 prompts x ~120 tokens; 4 generations x 60 tokens
    "03-qlora-bloom/03_qlora_bloom_sfttrainer.ipynb": (7.07e9, 3 * 120 * 120, 4 * 60, 7.07e9 * 0.55 + 1.03e9 * 4),
    # 60 steps x 4 prompts x ~120 tokens, then one forward per model compared (nothing generated); loading excluded
    "03-qlora-bloom/04_merge_adapter.ipynb": (7.07e9, 60 * 4 * 120, 0, 0),
    # 2 epochs x 935 entries x ~90 tokens; 110 responses x 256 tokens without a KV cache: each new token re-reads
    # its whole context (~200 tokens on average)
    "04-instruction-gpt2/01_instruction_finetuning.ipynb": (3.55e8, 2 * 935 * 90, 110 * 256, 3.55e8 * 4,
                                                            110 * 256 * 200),
    # 2 runs x 100 steps x 8 x ~90 tokens
    "04-instruction-gpt2/02_lora_from_scratch.ipynb": (3.55e8, 2 * 100 * 8 * 90, 0, 0),
    # 4 training passes x 135 steps x 2 x 256 tokens (GPT-2 124M from scratch)
    "05-lr-schedules/01_warmup_cosine_clipping.ipynb": (1.24e8, 4 * 135 * 512, 0, 0),
    # chapter 01 (fp32, see T4_FP32_RECIPES): each notebook's optimizer steps (CH01_STEPS) x 8 reviews x ~30 tokens
    # on bloomz-560m
    **{f"01-peft-setup/{name}": (5.59e8, steps * 8 * 30, 0, 0) for name, steps in CH01_STEPS.items()},
}
T4_FP32_FLOPS = 8.1e12  # NVIDIA's figure for the T4 in fp32 (no tensor cores)
#: Recipes that train in fp32 (chapter 01's bloomz-560m fits a T4 unquantized and without autocast)
T4_FP32_RECIPES = {name for name in T4_RECIPES if name.startswith("01-peft-setup/")}


def t4_estimate_s(notebook: str) -> float | None:
    """Seconds of compute on a T4 for a notebook's full recipe (downloads and loading excluded): an estimate."""
    if notebook not in T4_RECIPES:
        return None
    n, train_tokens, new_tokens, bytes_per_token, *reread = T4_RECIPES[notebook]
    flops = 6 * n * train_tokens + 2 * n * sum(reread)
    rate = T4_FP32_FLOPS if notebook in T4_FP32_RECIPES else T4_FP16_FLOPS
    return flops / (rate * T4_UTILISATION) + new_tokens * bytes_per_token / T4_BANDWIDTH


def load() -> dict:
    return json.loads(DATA.read_text()) if DATA.is_file() else {}


def record(section: str, rows: list[dict], meta: dict) -> None:
    """Merge `rows` (one per notebook) into docs/times.json's `section` and rewrite docs/TIMES.md."""
    data = load()
    # rows of notebooks that were renamed or removed go: the table lists what the course has
    old = {r["notebook"]: r for r in data.get(section, {}).get("rows", []) if (ROOT / r["notebook"]).is_file()}
    old.update({r["notebook"]: r for r in rows})
    data[section] = {"meta": {**data.get(section, {}).get("meta", {}), **meta}, "rows": sorted(old.values(),
                                                                                           key=lambda r: r["notebook"])}
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=2) + "\n")
    write_table(data)


DURATION = re.compile(r"^\s*([\d.]+)s call\s+(\S+\.ipynb)::", re.MULTILINE)


def smoke_from_log(log: str) -> list[dict]:
    """Each notebook's nbmake time from pytest's `--durations` lines (`12.34s call 02-x/nb.ipynb::`)."""
    return [{"notebook": nb, "status": "ok", "seconds": round(float(s), 1)} for s, nb in DURATION.findall(log)]


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def write_table(data: dict | None = None) -> str:
    data = load() if data is None else data
    smoke = {r["notebook"]: r for r in data.get("smoke", {}).get("rows", [])}
    full = {r["notebook"]: r for r in data.get("full_check", {}).get("rows", [])}
    names = sorted(name for name in set(smoke) | set(full) | set(T4_RECIPES) if (ROOT / name).is_file())
    sm, fm = data.get("smoke", {}).get("meta", {}), data.get("full_check", {}).get("meta", {})
    lines = [
        "# Times (generated by `python -m tools.times` from docs/times.json: do not edit by hand)", "",
        "| notebook | smoke mode, measured | full mode at real widths on a CPU, measured: time, peak RSS | "
        "full mode on a T4: estimate, compute only |", "|---|---|---|---|",
    ]
    for name in names:
        s, f = smoke.get(name), full.get(name)
        full_cell = "-" if f is None else (f"{_fmt_s(f['seconds'])}, {f['peak_rss_gib']:.1f} GiB"
                                           + ("" if f["status"] == "ok" else f" ({f['status'][:40]})"))
        t4 = t4_estimate_s(name)
        lines.append(f"| `{name}` | {_fmt_s(s['seconds']) if s else '-'} | {full_cell} | "
                     f"{'-' if t4 is None else 'about ' + _fmt_s(t4)} |")
    lines += [
        "",
        f"**Smoke mode**: `make test` (nbmake, `OMP_NUM_THREADS=1`), {sm.get('source', 'not recorded')}.",
        "",
        f"**Full mode at real widths**: `make full-check` on {fm.get('date', '?')}, {fm.get('cores', '?')} cores "
        f"({fm.get('cpu', '?')}), OMP_NUM_THREADS={fm.get('threads', '?')}"
        + "".join(f", {fm[key]}" for key in ("source", "rerun") if fm.get(key))
        + f"; {fm.get('total_seconds', '?')} s in all. Each notebook ran its full-mode code on checkpoints built from "
        "the real configs with one or two blocks and random weights (tools/real_width.py), the fixtures for data, "
        "and fewer steps (docs/times.json lists each run's changed parameters). Peak RSS is the notebook kernel's "
        "resident memory, sampled every 50 ms.",
        "",
        "What the notebooks printed about memory at real widths (CPU: the process's RSS, fp32 compute; the "
        "predictions are the memory budget's (03-qlora-bloom/02_memory_budget.ipynb) for the model loaded, CUDA context excluded):",
        "",
        *[f"- `{name}`: {line}" for name in names for line in full.get(name, {}).get("memory", [])],
        "",
        f"**T4 estimates**: training FLOPs (6 x parameters x training tokens: forward, the recomputation of gradient "
        f"checkpointing, backward; 2 x parameters per token a generation without a KV cache re-reads) over the T4's "
        f"{T4_FP16_FLOPS / 1e12:.0f} TFLOP/s fp16 ({T4_FP32_FLOPS / 1e12:.1f} TFLOP/s fp32 for chapter 01, which "
        f"trains bloomz-560m unquantized in fp32) at an assumed "
        f"{T4_UTILISATION:.0%} utilisation, plus generation at {T4_BANDWIDTH / 1e9:.0f} GB/s (every weight read once "
        "per new token); downloads, loading, evaluation loops and Python overhead not included, so each is a lower "
        "bound on the wall time. The recipe sizes are in tools/times.py. Estimates, not measurements: "
        "`bench/gpu.py` measures tokens per second on a GPU.",
        "",
    ]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["smoke"]:
        log = Path(argv[1]).read_text(errors="replace")
        rows = smoke_from_log(log)
        if not rows:
            print(f"no notebook durations in {argv[1]} (run make test, which passes --durations)", file=sys.stderr)
            return 1
        record("smoke", rows, {"source": " ".join(argv[2:]) or f"from {Path(argv[1]).name}"})
    else:  # re-render; rows of renamed or removed notebooks go (record drops them)
        for section in load():
            record(section, [], {})
        write_table()
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
