"""LoRA versus full fine-tuning of GPTModel at real scale: seconds per step, peak memory, trainable parameters.

Speed and memory do not depend on the weights' values, so this uses randomly initialised weights of the real shapes
(no download) and random token batches of the instruction data's typical shape (batch 8, about 70 tokens; see
01_instruction_finetuning.ipynb). Run on a GPU for the numbers that matter:

    python 04-instruction-gpt2/bench_lora_vs_full.py --model "gpt2-medium (355M)" --steps 20
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from utils.env import peak_memory, pick_device  # noqa: E402
from utils.gpt import GPT_CONFIGS, GPTModel, calc_loss_batch  # noqa: E402
from utils.lora import num_parameters, replace_linear_with_lora  # noqa: E402


def measure(cfg: dict, use_lora: bool, steps: int, batch_size: int, seq_len: int, rank: int, alpha: int,
            device: torch.device) -> dict[str, float]:
    """Train a fresh GPTModel(cfg) for `steps` AdamW steps (one warm-up step first); return its figures."""
    torch.manual_seed(123)
    model = GPTModel(cfg)
    if use_lora:
        for param in model.parameters():
            param.requires_grad = False
        replace_linear_with_lora(model, rank=rank, alpha=alpha)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    inputs = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)
    targets = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)

    def step() -> None:
        optimizer.zero_grad()
        calc_loss_batch(inputs, targets, model, device).backward()
        optimizer.step()

    with peak_memory(device) as memory:
        step()  # warm-up: allocates the optimizer state and gradients
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    return {"trainable parameters": num_parameters(model), "seconds per step": seconds,
            "peak memory (GiB)": memory.peak_gib}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-medium (355M)", choices=sorted(GPT_CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=70)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="a tiny config instead (for tests)")
    args = parser.parse_args(argv)
    cfg = dict(GPT_CONFIGS[args.model])
    if args.tiny:
        cfg.update(vocab_size=128, context_length=128, emb_dim=32, n_layers=2, n_heads=4)
    device = pick_device()
    results = {}
    for name, use_lora in (("full", False), (f"LoRA r={args.rank}", True)):
        # each in a fresh process, so that one run's freed memory does not count in the other's peak
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            results[name] = pool.apply(measure, (cfg, use_lora, args.steps, args.batch_size, args.seq_len,
                                                 args.rank, args.alpha, device))
    print(f"{'tiny ' if args.tiny else ''}{args.model} on {device}, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.steps} steps after one warm-up step, {torch.get_num_threads()} CPU threads")
    for name, figures in results.items():
        print(f"{name:>10}: {figures['trainable parameters']:>13,} trainable, {figures['seconds per step']:.3f} s/step, "
              f"peak {figures['peak memory (GiB)']:.2f} GiB")
    full, lora = results.values()
    print(f"LoRA: {full['seconds per step'] / lora['seconds per step']:.2f}x the speed of full fine-tuning")
    return results


if __name__ == "__main__":
    main()
