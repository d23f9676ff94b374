"""`make full-check`: every notebook's full-mode path, run on this CPU, offline, at the real models' widths.

Full mode (COURSE_SMOKE=0) with the Hub and the network closed. Only the parameters cell's values change
(tools.run_notebooks.inject_parameters, papermill's `-p` done in place): each Hub model id in a full-mode branch
becomes a real-width checkpoint of that model (tools/real_width.py: the published config, one or two blocks,
random weights, saved as the Hub stores it), each dataset the course's fixture in the real schema (The Verdict
itself for chapter 05), and the step counts small enough for a CPU. Everything after the parameters cell is
the full-mode code a learner runs. `03-qlora-bloom/train_qlora.py` runs too, on the real-width bloom-7b1.

It fails on any error, and records each run's wall time and peak memory (the kernel's resident set, sampled)
in docs/times.json, from which `python -m tools.times` writes docs/TIMES.md.

    python -m tools.full_check                     # everything (about 40 minutes on a busy 2-core CPU)
    python -m tools.full_check 03-qlora-bloom/03_qlora_bloom_sfttrainer.ipynb
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.nbtools import notebooks
from tools.run_notebooks import Expr, execute
from utils.paths import BUILD_DIR, ROOT, cache_dir
from utils.smoke import fixture_path

OUT = BUILD_DIR / "full-check"
def hub_ids() -> dict[str, str]:
    """Hub ids the parameters cells name for full mode -> the local real-width stand-in."""
    from tools.real_width import gpt2_tokenizer, real_width_checkpoint

    return {
        "bigscience/bloomz-560m": real_width_checkpoint("bloomz-560m"),
        "bigscience/bloom-7b1": real_width_checkpoint("bloom-7b1"),
        "EleutherAI/gpt-j-6b": real_width_checkpoint("gpt-j-6b-float16"),
        "openai-community/gpt2-medium": real_width_checkpoint("gpt2-medium"),
        "openai-community/gpt2": gpt2_tokenizer(),
        "fka/awesome-chatgpt-prompts": str(fixture_path("prompts")),
    }


#: Applied to any notebook whose parameters cell assigns the name (chapter 01's notebooks, however many, whose
#: full mode reads Rotten Tomatoes' train and validation splits from the Hub); PLANS below override them.
DEFAULTS: dict[str, object] = {
    "STEPS": 3, "MAX_NEW_TOKENS": 8,
    "TRAIN_SOURCE": str(fixture_path("rotten_tomatoes_train")),
    "EVAL_SOURCE": str(fixture_path("rotten_tomatoes_validation")),
}

#: Per notebook: the sizes a CPU can run at real widths (batch sizes and sequence lengths stay the recipes').
PLANS: dict[str, dict[str, object]] = {
    "01-peft-setup/08_dora.ipynb": {"COST_STEPS": 2},  # LoRA and DoRA timed side by side
    "01-peft-setup/09_lora_variants.ipynb": {"SWEEP_STEPS": 2},  # rsLoRA's measurement: 5 ranks x 2 scalings
    "02-lora-gptj/01_lora_gptj_squad.ipynb": {
        "TRAIN_SOURCE": str(fixture_path("squad_train")), "VALIDATION_SOURCE": str(fixture_path("squad_validation")),
        "TRAIN_N": 8, "VAL_LOSS_N": 2, "EVAL_N": 2, "EPOCHS": 2,
    },
    "03-qlora-bloom/03_qlora_bloom_sfttrainer.ipynb": {"NUM_PROMPTS": 8, "EPOCHS": 2},
    "03-qlora-bloom/04_merge_adapter.ipynb": {"NUM_PROMPTS": 8},  # and DEFAULTS' STEPS = 3 before the merges
    "04-instruction-gpt2/01_instruction_finetuning.ipynb": {
        "DATA_SOURCE": str(fixture_path("instructions")), "NUM_EPOCHS": 1, "EVAL_ITER": 1,
    },
    "04-instruction-gpt2/02_lora_from_scratch.ipynb": {"DATA_SOURCE": str(fixture_path("instructions")), "STEPS": 4},
    "05-lr-schedules/01_warmup_cosine_clipping.ipynb": {
        "TEXT_FILE": str(fixture_path("the_verdict")),
        "GPT_CONFIG": Expr('{**GPT_CONFIG_124M, "context_length": 256, "n_layers": 2}'), "NUM_EPOCHS": 2,
    },
}


def offline_env(threads: int) -> dict[str, str]:
    """Full mode, no Hub, no network (a closed local port as proxy), `threads` CPU threads."""
    closed = "http://127.0.0.1:9"
    env = {"COURSE_SMOKE": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0"}
    return env


class PeakRSS:
    """The largest resident set of this process's children (the notebook kernel), sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.peak, self._stop, self._me = 0, threading.Event(), psutil.Process()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for child in self._me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


MEMORY_LINE = ("measured peak", "peak memory")


def memory_notes(notebook: str) -> list[str]:
    """What the executed notebook printed about its memory (chapter 03: measured peak beside the prediction)."""
    import nbformat

    executed = OUT / notebook
    if not executed.is_file():
        return []
    lines = []
    for cell in nbformat.read(str(executed), as_version=4).cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines += [line.strip() for line in output["text"].splitlines() if any(m in line for m in MEMORY_LINE)]
    return lines


def parameters_for(path: Path) -> dict[str, object]:
    import nbformat

    cell = next(c for c in nbformat.read(str(path), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)}
    plan = {k: v for k, v in DEFAULTS.items() if k in assigned}
    plan.update(PLANS.get(str(path.relative_to(ROOT)), {}))
    return plan


def run_train_qlora(ids: dict[str, str]) -> dict:
    """train_qlora.py on the real-width bloom-7b1, two optimizer steps at the recipe's batch and length."""
    out = OUT / "train_qlora"
    command = [sys.executable, str(ROOT / "03-qlora-bloom" / "train_qlora.py"), "--model", ids["bigscience/bloom-7b1"],
               "--data", str(fixture_path("prompts")), "--limit", "8", "--steps", "2", "--output-dir", str(out)]
    start = time.perf_counter()
    with PeakRSS() as peak:
        done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (OUT / "train_qlora.log").write_text(done.stdout + done.stderr)
    status = "ok" if done.returncode == 0 else f"FAILED: exit {done.returncode}: {done.stderr.strip()[-200:]}"
    return {"notebook": "03-qlora-bloom/train_qlora.py", "status": status, "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak.peak / 2**30, 2), "parameters": {"--steps": 2, "--limit": 8}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all, and train_qlora.py)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for the kernels")
    parser.add_argument("--cell-timeout", type=int, default=1800)
    parser.add_argument("--no-record", action="store_true", help="do not write docs/times.json")
    args = parser.parse_args(argv)
    os.environ.update(offline_env(args.threads))  # the kernels inherit it
    os.environ.pop("MPLBACKEND", None)
    os.environ.setdefault("COURSE_CACHE_DIR", str(cache_dir()))
    ids = hub_ids()
    paths = [p.resolve() for p in args.paths] or notebooks()
    results = []
    for path in paths:
        plan = parameters_for(path)
        print(f"  {path.relative_to(ROOT)} ...", end=" ", flush=True)
        with PeakRSS() as peak:
            result = execute(path, OUT, args.cell_timeout, parameters=plan, full_mode_constants=ids)
        row = {"notebook": result.notebook, "status": result.status, "seconds": round(result.seconds, 1),
               "peak_rss_gib": round(peak.peak / 2**30, 2), "memory": memory_notes(result.notebook),
               "parameters": {k: (v.source if isinstance(v, Expr) else v) for k, v in plan.items()
                              if not str(v).startswith(str(ROOT))}}
        print(f"{row['status']} ({row['seconds']:.0f} s, peak {row['peak_rss_gib']:.1f} GiB)", flush=True)
        results.append(row)
    if not args.paths:
        print("  03-qlora-bloom/train_qlora.py ...", end=" ", flush=True)
        results.append(run_train_qlora(ids))
        print(f"{results[-1]['status']} ({results[-1]['seconds']:.0f} s, peak {results[-1]['peak_rss_gib']:.1f} GiB)")
    total = sum(r["seconds"] for r in results)
    failed = [r for r in results if r["status"] != "ok"]
    print(f"\n{len(results) - len(failed)}/{len(results)} ran at real widths in {total:.0f} s; executed copies in {OUT}/")
    for r in failed:
        print(f"{r['notebook']}: {r['status']}", file=sys.stderr)
    print(f"full-check: {len(results) - len(failed)} passed, {len(failed)} failed")  # CI reads this closing line
    if not args.no_record:
        from tools import times

        today = datetime.date.today().isoformat()
        if args.paths:  # a partial run updates its own rows; the date, total and source stay the last whole run's
            meta = {"rerun": f"{len(results)} row(s) rerun on {today} with OMP_NUM_THREADS={args.threads}"}
        else:
            meta = {"date": today, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "total_seconds": round(total),
                    "source": f"all {len(results)} runs in one make full-check", "rerun": ""}
        times.record("full_check", results, meta)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
