"""`make bench`: the course's recipes measured side by side, printed as tables and written to bench/RESULTS.md, whose
figures the README's Performance block is generated from (bench/report.py).

Every comparison is timed in rounds: each contender runs once per round, in an order that alternates round by round,
and each ratio is taken within a round (bench.harness.time_rounds). Rounds go on until each ratio's bootstrap 95%
interval is within 3% of its median either way, or the comparison's time cap passes; the median ratio, its interval
and a verdict against a target are reported. Random weights throughout (the shapes, not the values, set the cost).
Sections:

1. the from-scratch GPTModel (utils/lessons/gpt.py) against transformers' GPT2LMHeadModel, gpt2-small shape;
2. the model FLOPs utilisation of that training step against a matmul timed in the same rounds;
3. LoRA from scratch (chapter 04's 02_lora_from_scratch.ipynb) against full fine-tuning and against peft's LoRA,
   gpt2-medium shape;
4. padding waste of chapters 02 and 04's batches, plain shuffling against transformers' length-grouped order; a
   training step's time against its tokens at the width the throughput is measured at; real tokens per second;
5. (--notebooks) the wall time of each notebook in smoke mode;
6. on a CUDA GPU only: the real-shape recipes (bench/gpu.py).

    python -m bench.run                # sections 1-4 (and 6 on a GPU): about 12 minutes on the 2-core CPU, capped
    python -m bench.run --notebooks    # also section 5
    python -m bench.run --quick        # tiny shapes, two rounds: checks that the harness runs (seconds)

A complete run (no --quick, no --only) rewrites bench/RESULTS.md whole and the README's Performance block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.harness import (
    Estimate,
    Ratio,
    Rounds,
    Target,
    line_fit,
    load_average,
    machine,
    markdown_table,
    matmul_parameters,
    matmul_task,
    median_ci,
    summary_row,
    time_rounds,
    training_flops,
    write_results,
)
from bench.padding import length_grouped_batches, padded_positions, padding_fraction, shuffled_batches
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


@dataclass(frozen=True)
class Plan:
    """How long to measure: rounds per comparison, the interval's tightness, and each comparison's time cap."""

    min_rounds: int = 5
    max_rounds: int = 60
    rel_half_width: float = 0.03
    caps_s: tuple[tuple[str, float], ...] = (("forward", 60.0), ("train", 150.0), ("lora", 150.0), ("padding", 150.0))
    scaling_rounds: int = 8

    def rounds(self, fns: dict, ratios: list[Ratio], cap: str) -> Rounds:
        return time_rounds(fns, ratios, min_rounds=self.min_rounds, max_rounds=self.max_rounds,
                           rel_half_width=self.rel_half_width, cap_s=dict(self.caps_s)[cap])

    def describe(self) -> str:
        caps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.caps_s)
        return (f"at least {self.min_rounds} rounds, then until every ratio of the comparison has a 95% interval "
                f"half-width <= {self.rel_half_width:.0%} of its median, or the comparison's time cap passes (checked "
                f"at the end of each round: {caps}), or {self.max_rounds} rounds")


FULL, QUICK = Plan(), Plan(min_rounds=2, max_rounds=2, scaling_rounds=2)


def seconds_cell(timing) -> str:
    """A timing's median seconds with its 95% interval."""
    return timing.interval().format(".3f")


# ------------------------------------------------------------------------------------------------ 1 and 2


def mfu_cell(rounds: Rounds, name: str, flops_ratio: float) -> str:
    """Model FLOPs utilisation, round by round: (model FLOPs / step seconds) / (matmul FLOPs / matmul seconds), with
    `flops_ratio` = model FLOPs / matmul FLOPs; the median and its bootstrap 95% interval, as percentages."""
    per_round = [flops_ratio * m / s for m, s in zip(rounds.timings["matmul"].seconds, rounds.timings[name].seconds,
                                                     strict=True)]
    estimate = median_ci(per_round)
    return f"{estimate.value:.1%} [{estimate.low:.1%}, {estimate.high:.1%}]"


def bench_gpt2(quick: bool, plan: Plan, batch: int = 2, seq: int = 256) -> dict:
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
        fwd = plan.rounds(forward, [Ratio("GPTModel / transformers, eval forward", "ours", "transformers",
                                          Target(high=1.0))], "forward")
    for model in models.values():
        model.train()
    # the matmul runs in the same rounds: each round's utilisation is its step's rate over its matmul's rate
    matmul, matmul_flops = matmul_task(n=512 if quick else 2048)
    fb = plan.rounds({**{name: train_step(name, m) for name, m in models.items()}, "matmul": matmul},
                     [Ratio("GPTModel / transformers, training step", "ours", "transformers", Target(high=1.0))], "train")
    peak = matmul_flops / fb.timings["matmul"].median
    rows = [{"pass": what, "ours (s)": seconds_cell(r.timings["ours"]),
             "transformers (s)": seconds_cell(r.timings["transformers"]), "rounds": len(r.timings["ours"].seconds),
             "stopped": r.stopped} for what, r in (("eval forward", fwd), ("train forward+backward", fb))]
    tokens = batch * seq
    n_matmul = matmul_parameters(ours)
    mfu_rows = []
    for name, model in models.items():
        step = fb.timings[name].interval()
        n = matmul_parameters(model)
        flops_6n = training_flops(n, tokens)
        flops_attn = training_flops(n, tokens, cfg["n_layers"], seq, cfg["emb_dim"])
        mfu_rows.append({"model": name, "matmul params": n, "total params": sum(p.numel() for p in model.parameters()),
                         "tokens/step": tokens, "step (s)": step.format(".3f"),
                         "achieved GFLOP/s (6N)": flops_6n / step.value / 1e9,
                         "MFU (6N)": mfu_cell(fb, name, flops_6n / matmul_flops),
                         "MFU (6N + attention)": mfu_cell(fb, name, flops_attn / matmul_flops)})
    note = (f"gpt2-small shape ({cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}, vocab {cfg['vocab_size']}), batch "
            f"{batch} x sequence {seq}, random weights, fp32, dropout 0 in both, `transformers.GPT2LMHeadModel` with "
            f"attn_implementation='sdpa' and use_cache=False; loss = cross-entropy over all logits in both. Seconds: "
            f"the median of the rounds with its bootstrap 95% interval; the ratios are in the summary. `utils.lessons.gpt.GPTModel` "
            f"computes LayerNorm and GELU with `torch.nn.functional.layer_norm` and `torch.nn.functional.gelu` "
            f"(approximate='tanh'), its `utils.lessons.gpt.FusedLayerNorm` and `utils.lessons.gpt.FusedGELU`. Its output head is untied "
            f"(its own 38.6M-parameter copy, as the source) while GPT2LMHeadModel ties it to the embedding: the same "
            f"matmuls either way.")
    mfu_note = (f"N = parameters of the matrix multiplies (every Linear / Conv1D weight, the output head once; token and "
                f"position embeddings, norms and biases not counted): {n_matmul:,} for ours. Training FLOPs = 6 N tokens; "
                f"'+ attention' adds 12 x layers x seq x emb per token (PaLM). MFU = the step's FLOP rate over the rate "
                f"of three {512 if quick else 2048}^3 fp32 matmuls (`bench.harness.matmul_task`) timed as a third "
                f"contender in the same rounds as the training steps (median {peak / 1e9:.1f} GFLOP/s), round by round: "
                f"its median with the bootstrap 95% interval. On a shared machine a peak measured at another moment "
                f"is not comparable.")
    return {"rows": rows, "mfu": mfu_rows, "note": note, "mfu_note": mfu_note,
            "summary": fwd.summary_rows() + fb.summary_rows()}


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


def bench_lora(quick: bool, plan: Plan, batch: int = 1, seq: int = 128, rank: int = 16, alpha: int = 16) -> dict:
    torch.manual_seed(0)
    cfg = gpt_config("gpt2-medium (355M)", quick)
    memory = {}
    for variant in VARIANTS:  # each in its own process: RSS is per process and glibc keeps freed memory
        args = [sys.executable, "-m", "bench.run", "--memory-probe", variant, "--batch", str(batch), "--seq", str(seq),
                "--rank", str(rank), "--alpha", str(alpha), "--threads", str(torch.get_num_threads())]
        args += ["--quick"] if quick else []
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
        memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    steps = {}
    x = torch.randint(0, cfg["vocab_size"], (batch, seq))
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = build_variant(variant, cfg, rank, alpha).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        steps[variant] = make_step(model, optimizer, x, x)
    rounds = plan.rounds(steps, [
        Ratio("LoRA from scratch / peft LoRA, training step", "LoRA (from scratch)", "LoRA (peft)", Target(0.95, 1.05)),
        Ratio("LoRA from scratch / full fine-tune, training step", "LoRA (from scratch)", "full fine-tune",
              Target(high=1.0))], "lora")
    rows = []
    for variant in VARIANTS:
        m = memory[variant]
        rows.append({"recipe": variant, "trainable params": m["trainable"], "s/step": seconds_cell(rounds.timings[variant]),
                     "peak RSS (GiB)": m["peak_bytes"] / GIB, "AdamW state (MiB)": m["optimizer_state_bytes"] / 2**20})
    note = (f"gpt2-medium shape ({cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}, vocab {cfg['vocab_size']}), "
            f"batch {batch} x sequence {seq}, fp32, random weights; one step = zero_grad, forward, cross-entropy, "
            f"backward, AdamW step; {len(rounds.timings['full fine-tune'].seconds)} rounds ({rounds.stopped}), s/step "
            f"the median with its bootstrap 95% interval; the ratios are in the summary. LoRA r={rank}, alpha={alpha}, on "
            f"every Linear (attention q/k/v/out, both feed-forward layers and the output head: what chapter 04's "
            f"replace_linear_with_lora wraps); peft gets the same Linears by name (`peft.LoraConfig` with "
            f"target_modules=[...], lora_dropout=0). Peak RSS: the whole process's resident memory (weights, optimizer, "
            f"activations, ~0.4 GiB of Python and torch), each recipe in a fresh process, sampled by "
            f"`utils.machine.peak_memory`: one measurement each. AdamW state: the exp_avg and exp_avg_sq tensors.")
    return {"rows": rows, "note": note, "summary": rounds.summary_rows()}


# ------------------------------------------------------------------------------------------------ 4


def instruction_lengths(quick: bool) -> tuple[list[int], str]:
    """Token counts of chapter 04's padded sequences (prompt + response + the <|endoftext|> the collate appends)."""
    from transformers import AutoTokenizer

    from utils.ch04_gpt2 import load_instruction_data
    from utils.lessons.instruction_data import InstructionDataset
    from utils.smoke import fixture_path, tiny_checkpoint

    real = Path("/work/shared/data/instruction-data.json")
    path = real if real.is_file() and not quick else fixture_path("instructions")
    data = load_instruction_data(path)
    dataset = InstructionDataset(data, AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2")))
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
    """Pad fraction of plain shuffling and of transformers' length-grouped order, the mean over `epochs` seeds."""
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


#: The model the padding's speed is measured on: wide enough that a step's time is mostly its tokens' (4a shows it).
PADDING_MODEL = {"vocab_size": 1024, "context_length": 1024, "emb_dim": 256, "n_layers": 4, "n_heads": 4,
                 "drop_rate": 0.0, "qkv_bias": True}
#: Every step's share that does not grow with its tokens must stay under this for the throughput to be the method's.
OVERHEAD_TARGET = Target(high=0.25)


def bench_padding(quick: bool, plan: Plan, n: int = 128, batch: int = 8, grid: int = 6) -> dict:
    from utils.lessons.gpt import GPTModel

    ch04, ch04_source = instruction_lengths(quick)
    ch02, ch02_source = squad_lengths()
    pad_rows = padding_rows(ch04, batch, "ch04 " + ch04_source) + padding_rows(ch02, 4, "ch02 " + ch02_source)
    # Throughput: one epoch over the same n sequences (a seeded random subset of chapter 04's), batched both ways
    n = min(len(ch04), 24 if quick else n)
    generator = torch.Generator().manual_seed(0)
    lengths = [ch04[i] for i in torch.randperm(len(ch04), generator=generator)[:n].tolist()]
    plans = {"plain shuffle": shuffled_batches(n, batch, generator),
             "length-grouped": length_grouped_batches(lengths, batch, generator)}
    torch.manual_seed(0)
    cfg = {**PADDING_MODEL, **({"emb_dim": 64, "n_layers": 2, "n_heads": 4} if quick else {})}
    model = GPTModel(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step_on(x):
        return make_step(model, optimizer, x, x)

    # 4a: the same training step at batch x L tokens for lengths from 16 to the longest padded batch, in rounds
    longest = max(max(lengths[i] for i in b) for b in plans["plain shuffle"])
    grid_lengths = sorted({round(16 + (longest - 16) * k / (grid - 1)) for k in range(grid)})
    sized = {str(batch * L): step_on(torch.randint(0, cfg["vocab_size"], (batch, L))) for L in grid_lengths}
    scaling = time_rounds(sized, (), min_rounds=plan.scaling_rounds, max_rounds=plan.scaling_rounds)
    xs = [int(tokens) for tokens, t in scaling.timings.items() for _ in t.seconds]
    ys = [s for t in scaling.timings.values() for s in t.seconds]
    grouped_positions = padded_positions(lengths, plans["length-grouped"])
    mean_step = grouped_positions / len(plans["length-grouped"])
    slope, intercept, share = line_fit(xs, ys, at=mean_step)
    step_rows = []
    for tokens, timing in scaling.timings.items():
        ms = Estimate(*(1e3 * v for v in timing.interval()))
        step_rows.append({"tokens/step": int(tokens), "batch x length": f"{batch} x {int(tokens) // batch}",
                          "step (ms)": ms.format(".1f"), "ms per 1,000 tokens": f"{ms.value * 1e3 / int(tokens):.1f}"})
    fit_rows = [{"quantity": "slope: ms per 1,000 tokens", "estimate": f"{slope.value * 1e6:.1f}",
                 "95% interval": f"{slope.low * 1e6:.1f} to {slope.high * 1e6:.1f}"},
                {"quantity": "intercept: fixed ms per step", "estimate": f"{intercept.value * 1e3:.1f}",
                 "95% interval": f"{intercept.low * 1e3:.1f} to {intercept.high * 1e3:.1f}"},
                {"quantity": f"intercept / a step of {mean_step:.0f} tokens", "estimate": f"{share.value:.1%}",
                 "95% interval": f"{share.low:.1%} to {share.high:.1%}"}]

    # 4c: an epoch of each batch order, in rounds; the ratio of times is the ratio of real tokens per second
    tokens = {name: [torch.randint(0, cfg["vocab_size"], (len(b), max(lengths[i] for i in b))) for b in batches]
              for name, batches in plans.items()}

    # each epoch a sequence of steps: time_rounds interleaves the two epochs step by step
    speed = plan.rounds({name: [step_on(x) for x in tokens[name]] for name in plans}, [
        Ratio("length-grouped / plain shuffle, real tokens per second", "plain shuffle", "length-grouped",
              Target(low=1.0))], "padding")
    real = sum(lengths)
    positions = {name: padded_positions(lengths, batches) for name, batches in plans.items()}
    predicted = {name: len(plans[name]) * intercept.value + slope.value * positions[name] for name in plans}
    speed_rows = []
    for name, batches in plans.items():
        t = speed.timings[name].interval()
        speed_rows.append({"batching": name, "batches": len(batches), "real tokens": real,
                           "padded positions": positions[name], "epoch (s)": t.format(".3f"),
                           "real tokens/s": f"{real / t.value:.0f} [{real / t.high:.0f}, {real / t.low:.0f}]",
                           "epoch predicted by 4b (s)": f"{predicted[name]:.3f}"})
    width = f"{cfg['emb_dim']}/{cfg['n_layers']}/{cfg['n_heads']}"
    note = ("Pad fraction = pad positions / all positions when each batch is padded to its longest example; mean over "
            "20 epochs (seeds). Tokens counted with the tiny smoke tokenizers (byte-level BPE, vocabulary 1,024: more "
            "tokens per text than GPT-2's 50k BPE, so the lengths are longer than the real ones, their spread alike). "
            "Chapter 04 batches 8, chapter 02 batches 4 (max_length 512). Plain shuffle: `bench.padding.shuffled_batches` "
            "(a random permutation cut into batches, as DataLoader(shuffle=True)). Length-grouped: "
            "`bench.padding.length_grouped_batches`, the order of `transformers.trainer_pt_utils.LengthGroupedSampler` "
            "(Trainer's train_sampling_strategy='group_by_length': shuffle, mega-batches of min(n // (4 x batch), 50) batches sorted by "
            "length, the longest example first) cut into consecutive batches.")
    steps_note = (f"Is the speed of 4c the batching's, or the machine's? A training step of `utils.lessons.gpt.GPTModel` "
                  f"({width}, vocab 1,024, fp32, AdamW; the model 4c trains) at batch {batch} x length L, for {len(grid_lengths)} "
                  f"lengths from 16 to {longest} (the longest padded batch of 4c), timed in "
                  f"{plan.scaling_rounds} rounds (order rotating). Step: the median with its bootstrap 95% interval.")
    fit_note = (f"Least squares over all {len(xs)} timed steps of 4a: step seconds = intercept + slope x tokens, each "
                f"with a percentile-bootstrap 95% interval (steps resampled). The intercept is what a step costs whatever "
                f"its tokens (Python, the optimizer step, kernel launches); its share is taken of a step of 4c's "
                f"length-grouped epoch's mean size. Where it is small, a step's time is its tokens' and padding costs "
                f"time in proportion.")
    speed_note = (f"One epoch over {n} chapter-04 sequences (a seeded random subset), batch {batch}, on the model of 4a, "
                  f"full training steps, each order's batches the same every round; the two epochs "
                  f"interleaved step by step (a plain step, a grouped step, the order alternating). "
                  f"{len(speed.timings['plain shuffle'].seconds)} rounds ({speed.stopped}); epoch: the median with its bootstrap 95% interval; real tokens/s = real "
                  f"tokens / epoch. 'Epoch predicted by 4b' = batches x intercept + slope x padded positions: what the "
                  f"line of 4b says the padding alone should cost. The measured ratio is in the summary.")
    model = f"GPTModel {cfg['emb_dim']} wide, {cfg['n_layers']} layers, batch {batch}"
    overhead = summary_row(f"fixed per-step cost / mean step of {mean_step:.0f} tokens: {model}", share,
                           OVERHEAD_TARGET, f"line fit of {len(xs)} steps at {len(grid_lengths)} lengths")
    return {"pad": pad_rows, "note": note, "steps": step_rows, "steps_note": steps_note, "fit": fit_rows,
            "fit_note": fit_note, "speed": speed_rows, "speed_note": speed_note,
            "summary": speed.summary_rows() + [overhead]}


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

H_SUMMARY = "Summary: every ratio, with its interval and verdict"
H_GPT2 = "1. From-scratch GPTModel vs transformers GPT2LMHeadModel"
H_MFU = "2. Model FLOPs utilisation of the training step"
H_LORA = "3. LoRA from scratch vs full fine-tuning vs peft LoRA"
H_PAD = "4. Padding waste: plain shuffling vs length-grouped batches"
H_STEPS = "4a. Step time against tokens per step, at the width 4c trains"
H_FIT = "4b. The line through 4a: per-token cost and fixed per-step cost"
H_SPEED = "4c. Real tokens per second of a training epoch"
H_NOTEBOOKS = "5. Smoke-mode wall time per notebook"


def summary_note(plan: Plan) -> str:
    return (f"Each ratio is the median of paired per-round ratios: in each round every contender of a comparison runs "
            f"once, in an order that alternates round by round (A B, B A, ...: `bench.harness.time_rounds`), after one "
            f"untimed warm-up call each, and the ratio is taken within the round, so a slow phase of the shared machine "
            f"hits both sides alike. Interval: the percentile bootstrap 95% interval of that median (2,000 resamples, "
            f"seeded: `bench.harness.median_ci`; with 5 rounds it is their min and max). Rounds: {plan.describe()}. "
            f"Verdict (`bench.harness.verdict`): met when the whole interval lies within the target, not met when none "
            f"of it does, no difference measurable when it straddles the target's bound. The fixed per-step cost's "
            f"share comes from the line fit of 4b, its interval from a bootstrap of the steps.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, two rounds: a check that everything runs")
    parser.add_argument("--notebooks", action="store_true", help="also time every notebook in smoke mode (minutes)")
    parser.add_argument("--only", nargs="*", default=None, help="sections to run: gpt2 lora padding gpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, each extra thread stalls whenever another "
                             "process takes its core)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results file (default bench/RESULTS.md, written only by a complete run)")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    for name, default in (("--batch", 1), ("--seq", 128), ("--rank", 16), ("--alpha", 16)):
        parser.add_argument(name, type=int, default=default, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.quick, args.batch, args.seq, args.rank, args.alpha)))
        return 0
    plan = QUICK if args.quick else FULL
    only = set(args.only) if args.only is not None else {"gpt2", "lora", "padding", "gpu"}
    complete = not args.quick and args.only is None
    # a partial or --quick run does not overwrite the committed results, nor the README block read from them
    write = complete or args.out != RESULTS
    info = machine()
    info["wall time"] = "unfinished: the run stopped before its end"
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    sections, summary, start = [], [], time.perf_counter()

    def save():
        if write:  # after every section, so that an interrupted run keeps what it measured
            write_results(args.out, "Benchmark results", info, [(H_SUMMARY, summary_note(plan), summary)] + sections)

    def add(heading, note, rows, ratios=()):
        sections.append((heading, note, rows))
        summary.extend(ratios)
        save()
        print(f"\n## {heading}  ({time.perf_counter() - start:.0f} s)", flush=True)
        print(markdown_table(rows) if rows else note, flush=True)
        if ratios:
            print(markdown_table(list(ratios)), flush=True)

    if "gpt2" in only:
        gpt2 = bench_gpt2(args.quick, plan)
        add(H_GPT2, gpt2["note"], gpt2["rows"], gpt2["summary"])
        add(H_MFU, gpt2["mfu_note"], gpt2["mfu"])
    if "lora" in only:
        lora = bench_lora(args.quick, plan)
        add(H_LORA, lora["note"], lora["rows"], lora["summary"])
    if "padding" in only:
        padding = bench_padding(args.quick, plan)
        add(H_PAD, padding["note"], padding["pad"])
        add(H_STEPS, padding["steps_note"], padding["steps"])
        add(H_FIT, padding["fit_note"], padding["fit"])
        add(H_SPEED, padding["speed_note"], padding["speed"], padding["summary"])
    if args.notebooks:
        add(H_NOTEBOOKS, "Each notebook executed in a fresh kernel (`tools.run_notebooks.execute`), one after another, "
            "smoke mode.", bench_notebooks())
    if "gpu" in only:
        from bench.gpu import HEADING, bench_gpu

        note, rows = bench_gpu(args.quick)
        add(HEADING, note, rows)
    seconds = time.perf_counter() - start
    info["load average (1 min) at end"] = load_average()
    info["sections"] = ", ".join(sorted(only | ({"notebooks"} if args.notebooks else set())))
    info["wall time"] = f"{seconds:.0f} s"
    save()
    print(f"\ntotal {seconds:.0f} s, load average (1 min) {info['load average (1 min) at start']} at the start, "
          f"{info['load average (1 min) at end']} at the end", flush=True)
    if write:
        print(f"wrote {args.out}")
    if complete and args.out == RESULTS:
        from bench.report import README, update_readme

        update_readme(README, RESULTS.read_text(encoding="utf-8"))
        print(f"wrote the Performance block of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
