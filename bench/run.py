"""`make bench`: the course's recipes measured side by side, printed as tables and written to bench/RESULTS.md.

Every comparison is timed in the same run, round-robin (A B A B ...), after a warm-up, and the median of the
repeats is reported: on a shared machine the absolute seconds move, the ratios hold. Random weights throughout
(the shapes, not the values, set the cost). Sections:

1. the from-scratch GPTModel (utils/lessons/gpt.py) against transformers' GPT2LMHeadModel, gpt2-small shape;
2. the model FLOPs utilisation of that training step against a matmul peak measured in the same run;
3. LoRA from scratch (chapter 04's 02_lora_from_scratch.ipynb) against full fine-tuning and against peft's LoRA, gpt2-medium shape;
4. padding waste of chapters 02 and 04's batches, plain shuffling against length-grouped batching;
5. (--notebooks) the wall time of each notebook in smoke mode;
6. on a CUDA GPU only: the real-shape recipes (bench/gpu.py).

    python -m bench.run                # sections 1-4 (and 6 on a GPU), about 5 minutes on an idle 2-core CPU
    python -m bench.run --notebooks    # also section 5
    python -m bench.run --quick        # tiny shapes, one repeat: checks that the harness runs (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import (
    machine,
    markdown_table,
    matmul_parameters,
    matmul_peak_flops,
    time_interleaved,
    training_flops,
    write_results,
)
from bench.sampler import length_grouped_batches, padding_fraction, shuffled_batches
from utils.paths import ROOT

RESULTS = ROOT / "bench" / "RESULTS.md"
GIB = 2**30


def gpt_config(name: str, quick: bool) -> dict:
    """A GPTModel config of a GPT-2 size, dropout 0 (equal work for both models); tiny when `quick`."""
    from utils.lessons.gpt import GPT_CONFIGS

    cfg = {**GPT_CONFIGS[name], "drop_rate": 0.0}
    if quick:
        cfg.update(emb_dim=64, n_layers=2, n_heads=4, vocab_size=1024)
    return cfg


def hf_gpt2(cfg: dict):
    """transformers' GPT2LMHeadModel of the same shape as GPTModel(cfg), dropout 0, SDPA attention."""
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["context_length"], n_embd=cfg["emb_dim"],
                        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, use_cache=False)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def lm_loss(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# ------------------------------------------------------------------------------------------------ 1 and 2


def bench_gpt2(quick: bool, repeats: int, batch: int = 2, seq: int = 256) -> tuple[list[dict], list[dict], str]:
    from utils.lessons.gpt import GPTModel

    torch.manual_seed(0)
    cfg = gpt_config("gpt2-small (124M)", quick)
    ours, theirs = GPTModel(cfg), hf_gpt2(cfg)
    x = torch.randint(0, cfg["vocab_size"], (batch, seq))
    y = torch.randint(0, cfg["vocab_size"], (batch, seq))
    forward = {"ours": lambda: ours(x), "transformers": lambda: theirs(input_ids=x).logits}
    models = {"ours": ours, "transformers": theirs}

    def train_step(name, model):
        def step():
            model.zero_grad(set_to_none=True)
            lm_loss(forward[name](), y).backward()
        return step

    for model in models.values():
        model.eval()
    with torch.no_grad():
        fwd = time_interleaved({name: (lambda f=f: f()) for name, f in forward.items()}, repeats=repeats)
    for model in models.values():
        model.train()
    fb = time_interleaved({name: train_step(name, m) for name, m in models.items()}, repeats=repeats)
    peak = matmul_peak_flops(n=512 if quick else 2048)
    rows = []
    for what, timings in (("eval forward", fwd), ("train forward+backward", fb)):
        t_ours, t_hf = (timings[k].median for k in models)
        rows.append({"pass": what, "ours (s)": t_ours, "transformers (s)": t_hf, "ratio ours/transformers": t_ours / t_hf,
                     "met (<= 1.0)": "yes" if t_ours / t_hf <= 1.0 else "NO",
                     "spread ours/theirs": "/".join(f"{timings[k].spread:.0%}" for k in models)})
    tokens = batch * seq
    n_matmul = matmul_parameters(ours)
    mfu_rows = []
    for name, model in models.items():
        timing = fb[name]
        n = matmul_parameters(model)
        flops_6n = training_flops(n, tokens)
        flops_attn = training_flops(n, tokens, cfg["n_layers"], seq, cfg["emb_dim"])
        mfu_rows.append({"model": name, "matmul params": n, "total params": sum(p.numel() for p in model.parameters()),
                         "tokens/step": tokens, "step (s)": timing.median,
                         "achieved GFLOP/s (6N)": flops_6n / timing.median / 1e9,
                         "MFU (6N)": f"{flops_6n / timing.median / peak:.1%}",
                         "MFU (6N + attention)": f"{flops_attn / timing.median / peak:.1%}"})
    note = (f"gpt2-small shape ({cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}, vocab {cfg['vocab_size']}), batch {batch} "
            f"x sequence {seq}, random weights, fp32, dropout 0 in both, transformers with attn_implementation='sdpa' and "
            f"use_cache=False; loss = cross-entropy over all logits in both; median of {repeats} interleaved repeats "
            f"after a warm-up; 'spread' = (max - min) / median of the repeats. GPTModel computes LayerNorm and GELU "
            f"with F.layer_norm and F.gelu(approximate='tanh') (its FusedLayerNorm and FusedGELU): as the formulas, written out as five to eight elementwise operations "
            f"each, they made it 1.14x (forward) and 1.19x (training step) slower than transformers. GPTModel's output head is untied (its own 38.6M-parameter copy, as the source) while "
            f"GPT2LMHeadModel ties it to the embedding: the same matmuls either way.\n\n"
            f"MFU: N = parameters of the matrix multiplies (every Linear / Conv1D weight, the output head once; token and "
            f"position embeddings, norms and biases not counted): {n_matmul:,} for ours. Training FLOPs = 6 N tokens; "
            f"'+ attention' adds 12 x layers x seq x emb per token (PaLM). Peak: a 2048^3 fp32 torch.matmul timed in the "
            f"same run, best of 5: {peak / 1e9:.1f} GFLOP/s.")
    return rows, mfu_rows, note


# ------------------------------------------------------------------------------------------------ 3


def lora_targets(model) -> list[str]:
    """The full names of every nn.Linear of GPTModel: what replace_linear_with_lora wraps, given to peft too."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def build_variant(variant: str, cfg: dict, rank: int, alpha: int):
    """GPTModel trained in full, or with LoRA from scratch (chapter 04's notebook), or with peft's LoRA on the same Linears."""
    from tools.nbexport import load
    from utils.lessons.gpt import GPTModel

    replace_linear_with_lora = load("04-instruction-gpt2/02_lora_from_scratch.ipynb").replace_linear_with_lora

    model = GPTModel(cfg)
    if variant == "full fine-tune":
        return model
    if variant == "LoRA (from scratch)":
        for param in model.parameters():
            param.requires_grad = False  # freeze the base, as chapter 04 does; the LoRA layers are new, trainable
        replace_linear_with_lora(model, rank=rank, alpha=alpha)
        return model
    if variant == "LoRA (peft)":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=lora_targets(model))
        return get_peft_model(model, config)
    raise ValueError(f"unknown variant {variant!r}")


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of AdamW's moment tensors (exp_avg, exp_avg_sq) over every parameter it has stepped."""
    return sum(state[key].numel() * state[key].element_size() for state in optimizer.state.values()
               for key in ("exp_avg", "exp_avg_sq") if key in state)


def make_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        lm_loss(model(x), y).backward()
        optimizer.step()
    return step


VARIANTS = ("full fine-tune", "LoRA (from scratch)", "LoRA (peft)")


def memory_probe(variant: str, quick: bool, batch: int, seq: int, rank: int, alpha: int, steps: int = 2) -> dict:
    """Run in a fresh process (so that no other model shares its memory): build the variant, take `steps`
    training steps, and report its peak resident memory and optimizer-state bytes."""
    from utils.machine import peak_memory

    torch.manual_seed(0)
    cfg = gpt_config("gpt2-medium (355M)", quick)
    with peak_memory(torch.device("cpu")) as peak:
        model = build_variant(variant, cfg, rank, alpha)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        x = torch.randint(0, cfg["vocab_size"], (batch, seq))
        step = make_step(model, optimizer, x, x)
        for _ in range(steps):
            step()
    return {"peak_bytes": peak.peak_bytes, "optimizer_state_bytes": optimizer_state_bytes(optimizer),
            "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters())}


def bench_lora(quick: bool, repeats: int, batch: int = 1, seq: int = 128, rank: int = 16,
               alpha: int = 16) -> tuple[list[dict], str]:
    torch.manual_seed(0)
    cfg = gpt_config("gpt2-medium (355M)", quick)
    memory = {}
    for variant in VARIANTS:  # each in its own process: RSS is per process and glibc keeps freed memory
        args = [sys.executable, "-m", "bench.run", "--memory-probe", variant, "--batch", str(batch), "--seq", str(seq),
                "--rank", str(rank), "--alpha", str(alpha)] + (["--quick"] if quick else [])
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
        memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    steps = {}
    x = torch.randint(0, cfg["vocab_size"], (batch, seq))
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = build_variant(variant, cfg, rank, alpha).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        steps[variant] = make_step(model, optimizer, x, x)
    timings = time_interleaved(steps, repeats=repeats)
    rows = []
    for variant in VARIANTS:
        m, t = memory[variant], timings[variant].median
        rows.append({"recipe": variant, "trainable params": m["trainable"], "s/step": t,
                     "vs full": t / timings["full fine-tune"].median,
                     "peak RSS (GiB)": m["peak_bytes"] / GIB, "AdamW state (MiB)": m["optimizer_state_bytes"] / 2**20,
                     "spread": f"{timings[variant].spread:.0%}"})
    ratio = timings["LoRA (from scratch)"].median / timings["LoRA (peft)"].median
    note = (f"gpt2-medium shape ({cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}, vocab {cfg['vocab_size']}), "
            f"batch {batch} x sequence {seq}, fp32, random weights; one step = zero_grad, forward, cross-entropy, "
            f"backward, AdamW step; median of {repeats} interleaved repeats after a warm-up. LoRA r={rank}, "
            f"alpha={alpha}, on every Linear (attention q/k/v/out, both feed-forward layers and the output head: what "
            f"chapter 04's replace_linear_with_lora wraps); peft gets the same Linears by name (LoraConfig("
            f"target_modules=[...]), lora_dropout=0). Peak RSS: the whole process's resident memory (weights, "
            f"optimizer, activations, ~0.4 GiB of Python and torch), each recipe in a fresh process, sampled by "
            f"utils.machine.peak_memory. AdamW state: the exp_avg and exp_avg_sq tensors.\n\n"
            f"**From-scratch LoRA / peft LoRA step time: {ratio:.3f}** (target within 5%: "
            f"{'met' if abs(ratio - 1) <= 0.05 else 'NOT met'}).")
    return rows, note


# ------------------------------------------------------------------------------------------------ 4


def instruction_lengths(quick: bool) -> tuple[list[int], str]:
    """Token counts of chapter 04's padded sequences (prompt + response + the <|endoftext|> the collate appends)."""
    from utils.ch04_gpt2 import Tokenizer, load_instruction_data
    from utils.lessons.instruction_data import InstructionDataset
    from utils.smoke import fixture_path, tiny_checkpoint

    real = Path("/work/shared/data/instruction-data.json")
    path = real if real.is_file() and not quick else fixture_path("instructions")
    data = load_instruction_data(path)
    dataset = InstructionDataset(data, Tokenizer(tiny_checkpoint("gpt2")))
    label = "instruction-data.json (the full-mode data)" if path == real else "the fixture"
    return [min(len(tokens) + 1, 1024) for tokens in dataset.encoded_texts], f"{label}, {len(data)} records"


def squad_lengths() -> tuple[list[int], str]:
    """Token counts of chapter 02's examples (prompt + answer + end-of-text, at most 512 as in full mode, or the tiny
    tokenizer's context of 256 where that is shorter: the fixture's examples are shorter than both)."""
    from transformers import AutoTokenizer

    from tools.nbexport import load
    from utils.smoke import fixture_path, tiny_checkpoint

    squad = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
    encode_records, load_squad = squad.encode_records, squad.load_squad

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    records = load_squad(fixture_path("squad_train"), "train")
    encoded, _ = encode_records(records, tokenizer, max_length=min(512, tokenizer.model_max_length), max_skip_fraction=1.0)
    return [len(e["input_ids"]) for e in encoded], f"SQuAD v2 fixture (train), {len(encoded)} examples"


def padding_rows(lengths: list[int], batch_size: int, source: str, epochs: int = 20) -> list[dict]:
    rows = []
    for name in ("plain shuffle", "length-grouped"):
        fractions = []
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(epoch)
            if name == "plain shuffle":
                batches = shuffled_batches(len(lengths), batch_size, generator)
            else:
                batches = length_grouped_batches(lengths, batch_size, generator)
            fractions.append(padding_fraction(lengths, batches))
        rows.append({"data": source, "batch": batch_size, "batching": name,
                     "pad fraction (mean of epochs)": f"{sum(fractions) / len(fractions):.1%}"})
    return rows


def bench_padding(quick: bool, repeats: int) -> tuple[list[dict], list[dict], str]:
    from utils.lessons.gpt import GPTModel

    ch04, ch04_source = instruction_lengths(quick)
    ch02, ch02_source = squad_lengths()
    rows = padding_rows(ch04, 8, "ch04 " + ch04_source) + padding_rows(ch02, 4, "ch02 " + ch02_source)
    # Throughput: one epoch over the same examples, batched both ways, on a small GPTModel
    n = min(len(ch04), 96)
    lengths = ch04[:n]
    generator = torch.Generator().manual_seed(0)
    plans = {"plain shuffle": shuffled_batches(n, 8, generator),
             "length-grouped": length_grouped_batches(lengths, 8, generator)}
    torch.manual_seed(0)
    cfg = {"vocab_size": 1024, "context_length": 1024, "emb_dim": 64 if quick else 256, "n_layers": 2,
           "n_heads": 4, "drop_rate": 0.0, "qkv_bias": True}
    model = GPTModel(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = {name: [torch.randint(0, 1024, (len(b), max(lengths[i] for i in b))) for b in batches]
              for name, batches in plans.items()}

    def epoch(name):
        def run():
            for x in tokens[name]:
                make_step(model, optimizer, x, x)()
        return run

    timings = time_interleaved({name: epoch(name) for name in plans}, repeats=repeats)
    real = sum(lengths)
    speed = []
    for name, batches in plans.items():
        t = timings[name].median
        speed.append({"batching": name, "batches": len(batches), "real tokens": real,
                      "padded positions": sum(len(b) * max(lengths[i] for i in b) for b in batches),
                      "epoch (s)": t, "real tokens/s": real / t,
                      "speed-up": timings["plain shuffle"].median / t})
    note = (f"Pad fraction = pad positions / all positions when each batch is padded to its longest example; mean over "
            f"20 epochs (seeds). Tokens counted with the tiny smoke tokenizers (byte-level BPE, vocabulary 1,024: "
            f"more tokens per text than GPT-2's 50k BPE, so the lengths are longer than the real ones, their spread "
            f"alike). Chapter 04 batches 8 (lengths capped at 1,024), chapter 02 batches 4 (max_length 512). "
            f"Length-grouped: transformers' LengthGroupedSampler (shuffle, groups of up to 50 batches, at least 4 "
            f"groups, each sorted by length).\n\nThroughput: one epoch over the first {n} chapter-04 sequences, batch 8, on "
            f"a small GPTModel ({cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}, vocab 1,024, fp32), full training "
            f"steps; median of {repeats} interleaved repeats.")
    return rows, speed, note


# ------------------------------------------------------------------------------------------------ 5


def bench_notebooks() -> list[dict]:
    """Execute every notebook in smoke mode, one after another, in fresh kernels; wall seconds each."""
    import tempfile

    from tools.nbtools import notebooks
    from tools.run_notebooks import execute

    os.environ.update(COURSE_SMOKE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for path in notebooks():
            result = execute(path, Path(out), cell_timeout_s=900)
            print(f"  {result.notebook}: {result.status} ({result.seconds:.0f} s)", flush=True)
            rows.append({"notebook": result.notebook, "status": result.status, "wall (s)": round(result.seconds, 1),
                         "over 90 s budget": "YES" if result.seconds > 90 else ""})
    return rows


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a check that everything runs")
    parser.add_argument("--notebooks", action="store_true", help="also time every notebook in smoke mode (minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 2)")
    parser.add_argument("--only", nargs="*", default=None, help="sections to run: gpt2 lora padding gpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (default bench/RESULTS.md)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    for name, default in (("--batch", 1), ("--seq", 128), ("--rank", 16), ("--alpha", 16)):
        parser.add_argument(name, type=int, default=default, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.quick, args.batch, args.seq, args.rank, args.alpha)))
        return 0
    repeats = args.repeats or (1 if args.quick else 2)
    only = set(args.only) if args.only is not None else {"gpt2", "lora", "padding", "gpu"}
    info = machine()
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections, start = [], time.perf_counter()

    write = not args.quick or args.out != RESULTS  # a --quick check does not overwrite the real results

    def add(heading, note, rows):
        sections.append((heading, note, rows))
        if write:  # after every section, so that an interrupted run keeps what it measured
            write_results(args.out, "Benchmark results", info, sections)
        print(f"\n## {heading}  ({time.perf_counter() - start:.0f} s)", flush=True)
        print(markdown_table(rows) if rows else note, flush=True)

    if "gpt2" in only:
        rows, mfu, note = bench_gpt2(args.quick, repeats)
        add("1. From-scratch GPTModel vs transformers GPT2LMHeadModel", note, rows)
        add("2. Model FLOPs utilisation of the training step", "", mfu)
    if "lora" in only:
        rows, note = bench_lora(args.quick, repeats)
        add("3. LoRA from scratch vs full fine-tuning vs peft LoRA", note, rows)
    if "padding" in only:
        rows, speed, note = bench_padding(args.quick, repeats)
        add("4. Padding waste: plain shuffling vs length-grouped batches", note, rows)
        add("4b. Real tokens per second of a training epoch", "", speed)
    if args.notebooks:
        add("5. Smoke-mode wall time per notebook",
            "Each notebook executed in a fresh kernel (tools.run_notebooks.execute), one after another, smoke mode.",
            bench_notebooks())
    if "gpu" in only:
        from bench.gpu import bench_gpu

        note, rows = bench_gpu(args.quick)
        add("6. GPU: real-shape recipes, random weights", note, rows)
    print(f"\ntotal {time.perf_counter() - start:.0f} s", flush=True)
    if write:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
