"""The README's Performance figures, read from bench/RESULTS.md (one source), and a check that the code RESULTS.md
names still exists.

`make bench` rewrites the block between `<!-- bench:start -->` and `<!-- bench:end -->` in README.md with
`readme_block(RESULTS.md's text)`; tests/test_bench.py fails when the README's block differs from it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from bench.harness import markdown_table, read_results
from utils.paths import ROOT

README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
#: What a backticked dotted name ending so is: a file, not code.
FILE_SUFFIXES = {"md", "py", "ipynb", "json", "jsonl", "txt", "sh", "toml", "csv", "html", "safetensors"}


def find_row(rows: list[dict[str, str]], column: str, prefix: str) -> dict[str, str] | None:
    """The first row whose `column` starts with `prefix`."""
    return next((row for row in rows if row.get(column, "").startswith(prefix)), None)


def readme_block(results_text: str) -> str:
    """The README's Performance figures, from a results file's text: the machine, every ratio with its interval and
    verdict, memory, MFU, padding and whether padding costs time there. Sections the results lack are left out."""
    from bench.run import H_FIT, H_LORA, H_MFU, H_PAD, H_SPEED, H_SUMMARY

    tables = read_results(results_text)
    info = {row[""]: row["value"] for row in tables.get("Machine", [])}
    lines = [START, "<!-- written by `make bench` (bench/report.py) from bench/RESULTS.md: do not edit by hand -->",
             f"Figures from its run of {info.get('date', '?')} on {info.get('cpu', '?')} ({info.get('cores', '?')} cores, "
             f"AVX512-BF16: {info.get('AVX512-BF16', '?')}, GPU: {info.get('gpu', '?')}; Python {info.get('python', '?')}, "
             f"torch {info.get('torch', '?')}, torch threads: {info.get('torch threads', '?')}, transformers "
             f"{info.get('transformers', '?')}, peft {info.get('peft', '?')}; fp32, random weights), "
             f"{info.get('wall time', '?')} in all, load average (1 min) {info.get('load average (1 min) at start', '?')} "
             f"at the start and {info.get('load average (1 min) at end', '?')} at the end. Each ratio is the median of "
             "paired per-round ratios with its bootstrap 95% interval, and *met* says whether the whole interval lies "
             "within the target (*no difference measurable*: it straddles the target's bound); how: "
             "[bench/RESULTS.md](bench/RESULTS.md).", ""]
    summary = tables.get(H_SUMMARY, [])
    if summary:
        lines.append(markdown_table(summary, ["comparison", "ratio", "95% interval", "target", "met"]))
    mfu = {row["model"]: row["MFU (6N)"] for row in tables.get(H_MFU, [])}
    if mfu:
        lines.append(f"- **Model FLOPs utilisation** of the from-scratch GPT-2's training step (gpt2-small shape, batch "
                     f"2 x 256): {mfu.get('ours')} of the rate of an fp32 matmul timed in the same rounds "
                     f"(transformers: {mfu.get('transformers')}).")
    lora = {row["recipe"]: row for row in tables.get(H_LORA, [])}
    if {"full fine-tune", "LoRA (from scratch)"} <= set(lora):
        full, ours = lora["full fine-tune"], lora["LoRA (from scratch)"]
        lines.append(f"- **LoRA against full fine-tuning** (gpt2-medium shape, batch 1 x 128, r=16 on every Linear): "
                     f"{int(ours['trainable params']):,} of {int(full['trainable params']):,} parameters train; a step "
                     f"takes {ours['s/step']} s against {full['s/step']} s; peak memory {ours['peak RSS (GiB)']} GiB "
                     f"against {full['peak RSS (GiB)']} GiB, AdamW state {ours['AdamW state (MiB)']} MiB against "
                     f"{full['AdamW state (MiB)']} MiB.")
    pad = tables.get(H_PAD, [])
    if pad:
        def fraction(data: str, batching: str) -> str:
            row = next((r for r in pad if r["data"].startswith(data) and r["batching"] == batching), None)
            return row["pad fraction (mean of epochs)"] if row else "?"

        lines.append(f"- **Padding waste:** batches padded to their longest are {fraction('ch04', 'plain shuffle')} "
                     f"padding on chapter 04's instruction data (batch 8) and {fraction('ch02', 'plain shuffle')} on "
                     f"chapter 02's SQuAD fixture (batch 4) with plain shuffling, {fraction('ch04', 'length-grouped')} "
                     f"and {fraction('ch02', 'length-grouped')} in the order of transformers' `LengthGroupedSampler` "
                     f"(what `TrainingArguments(train_sampling_strategy='group_by_length')` uses).")
    fit = tables.get(H_FIT, [])
    overhead = find_row(summary, "comparison", "fixed per-step cost")
    if len(fit) == 3 and overhead:
        slope, intercept, share = fit
        lines.append(f"- **Does padding cost time?** On the model the throughput is measured on "
                     f"({overhead['comparison'].split(': ', 1)[-1]}), a training step costs {slope['estimate']} ms per "
                     f"1,000 tokens ({slope['95% interval']}) plus a fixed {intercept['estimate']} ms "
                     f"({intercept['95% interval']}): the fixed part is {share['estimate']} ({share['95% interval']}) "
                     f"of a mean step, so "
                     + ("the tokens, padding included, set a step's time there." if overhead["met"] == "met" else
                        f"the fixed cost is not shown to be small there (target {overhead['target']}: "
                        f"{overhead['met']})."))
    speed = find_row(summary, "comparison", "length-grouped / plain shuffle")
    if speed and tables.get(H_SPEED):
        if speed["met"] == "met":
            lines.append(f"- **Throughput:** there, length-grouped batches trained {speed['ratio']}x "
                         f"({speed['95% interval']}) as many real tokens per second as plain shuffling.")
        else:
            lines.append(f"- **Throughput:** no speed-up of length-grouped batches is measurable on this CPU (real "
                         f"tokens per second {speed['ratio']}x plain shuffling's, 95% interval {speed['95% interval']}: "
                         f"{speed['met']}). What is measured is the pad fraction above: the positions the model "
                         f"computes and the loss ignores.")
    lines.append(END)
    return "\n".join(lines)


def update_readme(readme: Path, results_text: str) -> None:
    """Rewrite the README's block between START and END with readme_block(results_text)."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(START), text.index(END) + len(END)
    readme.write_text(text[:start] + readme_block(results_text) + text[end:], encoding="utf-8")


def readme_block_now(readme_text: str) -> str:
    """The block as the README holds it now, START and END included."""
    start, end = readme_text.index(START), readme_text.index(END) + len(END)
    return readme_text[start:end]


def code_names(text: str) -> list[str]:
    """Dotted names in backticks (`bench.padding.padding_fraction`, `torch.matmul`), file names left out."""
    names = re.findall(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)`", text)
    return list(dict.fromkeys(n for n in names if n.rsplit(".", 1)[1] not in FILE_SUFFIXES))


def resolves(name: str) -> bool:
    """Whether `name` is an importable module, or an attribute path inside the longest importable module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def unresolved_names(text: str) -> list[str]:
    """The code names in `text` that no longer exist."""
    return [name for name in code_names(text) if not resolves(name)]
