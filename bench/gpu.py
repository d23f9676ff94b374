"""Section 6, on a CUDA GPU only: the chapters' real-shape recipes with random weights (no download), their peak
GPU memory and tokens per second, beside the memory budget's prediction (03-qlora-bloom/02_memory_budget.ipynb) and
the verdict for a 16 GB T4.

The T4 recipe is forced whatever the GPU: fp16 compute dtype, fp16 autocast with a GradScaler, fp32 LoRA weights
(checked when the optimizer is built), and each chapter's loss path: trl's fused, chunked LM head for chapter 03
(what its SFTTrainer runs), the full logits for chapter 02's and 04's plain loops. One command, on a GPU machine
that has torch, transformers, peft and accelerate but neither bitsandbytes, trl nor datasets, and no network:

    make gpu-wheels                      # here, once: bitsandbytes 0.50.2, trl 1.16.0, datasets 5.2.0, dill,
                                         # multiprocess for CPython 3.12 into .whl/ (about 45 MB)
    bash bench/gpu_device.sh             # there: install them from .whl/, run, write $OUT/RESULTS.md (< 8 min)

A quantized model with random weights: the architecture is built from the published config
(utils.real_models.real_config) with its parameters on the meta device (`accelerate.init_empty_weights`: no
memory; buffers such as rotary tables stay real), every nn.Linear but the output head is replaced by a
bitsandbytes Linear4bit (NF4, double quantization) or Linear8bitLt holding random weights, which bitsandbytes
quantizes when the layer moves to the device, and the remaining parameters (embeddings, norms, head) are filled
with random values on the device. The training step is the chapters': prepare_model_for_kbit_training (which
also turns on gradient checkpointing), peft LoRA, AdamW, autocast in the GPU's compute dtype.

The code also runs on a CPU with a tiny config (tests/test_bench.py does); the real shapes need a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

GIB = 2**30


@dataclass
class Recipe:
    name: str
    model_id: str
    bits: int | None  # 4 (NF4 QLoRA), 8 (LLM.int8 LoRA), None: full fine-tune of chapter 04's GPTModel in fp32
    target_modules: tuple[str, ...] = ()
    rank: int = 16
    alpha: int = 16
    batch: int = 1
    seq: int = 512
    fused_head: bool = False  # trl's chunked LM head (SFTTrainer, chapter 03) instead of the full logits


RECIPES = [  # the chapters' own batch sizes and lengths
    Recipe("bloom-7b1 4-bit QLoRA (ch03)", "bigscience/bloom-7b1", 4, ("query_key_value",), 16, 16, batch=4, seq=256,
           fused_head=True),
    Recipe("GPT-J 6B 8-bit LoRA (ch02)", "EleutherAI/gpt-j-6b", 8, ("q_proj", "v_proj"), 16, 32, batch=4, seq=512),
    Recipe("gpt2-medium full fine-tune (ch04)", "openai-community/gpt2-medium", None, batch=8, seq=256),
]
#: The T4's compute dtype, forced on every GPU: fp16 (a T4 has no bf16).
T4_DTYPE = torch.float16


def random_bnb_linear(linear: torch.nn.Linear, bits: int, dtype, device) -> torch.nn.Module:
    """A bitsandbytes layer of `linear`'s shape with random weights (std 0.02), quantized on `device`."""
    import bitsandbytes as bnb

    # on the CPU: bitsandbytes quantizes a parameter when it moves from the CPU to the device (8-bit requires it)
    weight = torch.randn(linear.out_features, linear.in_features, dtype=dtype) * 0.02
    has_bias = linear.bias is not None
    if bits == 4:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=dtype,
                                  compress_statistics=True, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4",
                                         module=layer)
    elif bits == 8:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False,
                                    threshold=6.0, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        raise ValueError(f"bits={bits}: use 4 or 8")
    if has_bias:
        layer.bias = torch.nn.Parameter(torch.zeros(linear.out_features, dtype=dtype), requires_grad=False)
    return layer.to(device)


def materialize(model, dtype, device) -> None:
    """Give every parameter still on the meta device random values on `device` (1-D weights 1, biases 0, the rest
    normal with std 0.02) and move the buffers there; a tied parameter (BLOOM's head is its embedding) stays tied."""
    made: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) not in made:
                data = torch.empty(param.shape, dtype=dtype, device=device)
                if param.dim() > 1:
                    data.normal_(0.0, 0.02)
                else:
                    data.fill_(0.0 if name == "bias" else 1.0)
                made[id(param)] = torch.nn.Parameter(data, requires_grad=param.requires_grad)
            module._parameters[name] = made[id(param)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = buffer.to(device)


def random_quantized_model(config, bits: int, dtype, device):
    """A transformers causal LM of `config` with random weights, its Linears (not the head) in 4 or 8 bits."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():  # parameters on the meta device, buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights re-creates each parameter, which unties BLOOM's head from its embedding
    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                setattr(parent, name, random_bnb_linear(child, bits, dtype, device))
    materialize(model, dtype, device)
    model.config.use_cache = False
    return model


def lora_model(config, recipe: Recipe, dtype, device):
    """The chapters' k-bit LoRA model: quantized base, prepare_model_for_kbit_training, trl's fused LM head where the
    chapter trains with SFTTrainer, peft LoRA."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = random_quantized_model(config, recipe.bits, dtype, device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    if recipe.fused_head:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer adds it
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.05, bias="none",
                      target_modules=list(recipe.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def measure(model, vocab: int, recipe: Recipe, device, autocast_dtype, warmup: int = 2, steps: int = 5) -> dict:
    """Peak memory (CUDA max allocated, weights included) and tokens/s of full training steps at the recipe's shape:
    autocast in `autocast_dtype` with a GradScaler for fp16, on an optimizer built on fp32 trainable parameters."""
    from utils.machine import peak_memory

    trainable = [p for p in model.parameters() if p.requires_grad]
    if {p.dtype for p in trainable} != {torch.float32}:
        raise RuntimeError(f"{recipe.name}: trainable parameters are {({p.dtype for p in trainable})}, not fp32: "
                           "fp16 AMP's GradScaler cannot unscale them")
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    x = torch.randint(0, vocab, (recipe.batch, recipe.seq), device=device)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            if recipe.fused_head:  # trl's chunked LM head: the loss without the [batch, seq, vocab] logits
                loss = model(input_ids=x, labels=x, fused_lm_head=True).loss
            else:
                out = model(x)
                logits = getattr(out, "logits", out)  # a transformers output, or GPTModel's logits tensor
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    seconds = []
    with peak_memory(device) as peak:
        for i in range(warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
    seconds.sort()
    median = seconds[len(seconds) // 2]
    return {"peak_bytes": peak.peak_bytes, "s_per_step": median, "tokens_per_s": recipe.batch * recipe.seq / median}


def predicted_bytes(recipe: Recipe) -> float:
    """The memory budget's prediction (utils.lessons.memory_budget) at the recipe's settings (bytes)."""
    from utils.lessons.memory_budget import TRAINABLE_BYTES_PER_PARAM, memory_budget
    from utils.real_models import meta_model

    meta = meta_model(recipe.model_id)
    if recipe.bits is None:  # full fine-tune in fp32: every parameter trained (weight, grad, two AdamW moments)
        from utils.lessons.gpt import GPT_CONFIGS, GPTModel

        with torch.device("meta"):
            params = sum(p.numel() for p in GPTModel(GPT_CONFIGS["gpt2-medium (355M)"]).parameters())
        terms = memory_budget(meta, weight_bits=32, unquantized_bytes=4, lora_r=0, batch_size=recipe.batch,
                              seq_len=recipe.seq, gradient_checkpointing=False, activation_bytes=4).terms
        return params * TRAINABLE_BYTES_PER_PARAM + terms["activations"] + terms["logits"] + terms["CUDA context"]
    # prepare_model_for_kbit_training upcasts every parameter that is not quantized to fp32 (4 bytes each), and so
    # the residual stream and what the quantized linears compute from it; the matmuls run in fp16 under autocast
    return memory_budget(meta, weight_bits=recipe.bits, unquantized_bytes=4, lora_r=recipe.rank,
                         target_modules=recipe.target_modules, lora_dropout=0.05, batch_size=recipe.batch,
                         seq_len=recipe.seq, gradient_checkpointing=True, activation_bytes=2, residual_bytes=4,
                         loss="fused" if recipe.fused_head else "full").total


def run_recipe(recipe: Recipe, device, warmup: int = 2, steps: int = 5) -> dict:
    from utils.lessons.memory_budget import T4_USABLE_BYTES
    from utils.real_models import real_config

    dtype = T4_DTYPE  # the T4 recipe, whatever this GPU could do
    if recipe.bits is None:
        from utils.lessons.gpt import GPT_CONFIGS, GPTModel

        torch.manual_seed(0)
        model = GPTModel({**GPT_CONFIGS["gpt2-medium (355M)"], "drop_rate": 0.0}).to(device)
        vocab, autocast = 50257, None  # chapter 04 trains in fp32
    else:
        config = real_config(recipe.model_id)
        model, vocab, autocast = lora_model(config, recipe, dtype, device), config.vocab_size, dtype
    result = measure(model, vocab, recipe, device, autocast, warmup=warmup, steps=steps)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak, budget = result["peak_bytes"], predicted_bytes(recipe)
    # the measured peak is max_memory_allocated: add the CUDA context (about 0.5 GiB) for what a T4 must hold
    need = peak + 0.5 * GIB
    return {"recipe": recipe.name, "batch x seq": f"{recipe.batch} x {recipe.seq}",
            "peak allocated (GiB)": peak / GIB, "budget (GiB)": budget / GIB, "tokens/s": result["tokens_per_s"],
            "s/step": result["s_per_step"],
            "fits a T4 (15 GiB usable)": "yes" if need <= T4_USABLE_BYTES * 0.9 else
            ("tight" if need <= T4_USABLE_BYTES else "NO: halve batch x seq, or use gradient checkpointing")}


def bench_gpu(quick: bool = False, deadline_s: float = 420.0, warmup: int = 2, steps: int = 5) -> tuple[str, list[dict]]:
    """Every recipe (gpt2-medium only with `quick`), stopping before one would start after `deadline_s` seconds."""
    if not torch.cuda.is_available():
        return ("Skipped: no CUDA GPU on this machine. On a GPU, `make bench` (or `bash bench/gpu_device.sh` on a "
                "machine without the Hub) measures bloom-7b1 4-bit QLoRA, GPT-J 6B 8-bit LoRA and gpt2-medium full "
                "fine-tuning here (bench/gpu.py)."), []
    device = torch.device("cuda")
    rows, start = [], time.perf_counter()
    for recipe in RECIPES[2:] if quick else RECIPES:
        if time.perf_counter() - start > deadline_s:
            rows.append({"recipe": recipe.name, "batch x seq": f"{recipe.batch} x {recipe.seq}",
                         "fits a T4 (15 GiB usable)": f"not run: {deadline_s:.0f} s budget spent"})
            continue
        print(f"  {recipe.name} ...", flush=True)
        try:
            rows.append(run_recipe(recipe, device, warmup=warmup, steps=steps))
        except Exception as exc:  # a recipe that fails is a result, and the others still run
            rows.append({"recipe": recipe.name, "batch x seq": f"{recipe.batch} x {recipe.seq}",
                         "fits a T4 (15 GiB usable)": f"FAILED: {type(exc).__name__}: {str(exc)[:120]}"})
            torch.cuda.empty_cache()
    note = (f"GPU: {torch.cuda.get_device_name(0)}, the T4 recipe forced: fp16 compute dtype, fp16 autocast with a "
            "GradScaler, fp32 LoRA weights. Random weights from the published configs, the chapters' batch sizes and "
            f"lengths; chapter 03's loss through trl's fused LM head, as its SFTTrainer computes it. Peak = "
            f"torch.cuda.max_memory_allocated over {warmup} warm-up and {steps} timed steps (median s/step). Budget = "
            "utils.lessons.memory_budget.memory_budget (03-qlora-bloom/02_memory_budget.ipynb) as chapter 03 prints it (non-quantized parameters, the residual stream "
            "and what the quantized linears compute from it fp32 after prepare_model_for_kbit_training, the "
            "attention's matmuls fp16 under autocast), CUDA context included; "
            "gpt2-medium: fp32 weights, gradients and AdamW state + activations + logits. T4 verdict: peak + 0.5 GiB "
            "CUDA context within 90% of 15 GiB (yes), within 15 GiB (tight). Tokens/s is the H200's or whichever "
            "GPU ran it, not a T4's.")
    return note, rows


def replace_section(path, heading: str, note: str, rows: list[dict]) -> None:
    """Write section `heading` (its note and table) into a results file, replacing that section if present."""
    from pathlib import Path

    from bench.harness import markdown_table

    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    body = f"## {heading}\n\n{note}\n\n" + (markdown_table(rows) + "\n" if rows else "")
    start = text.find(f"## {heading}")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + body + ("" if end < 0 else text[end + 1:])
    path.write_text(text, encoding="utf-8")


HEADING = "6. GPU: real-shape recipes, random weights"


def main(argv: list[str] | None = None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="gpt2-medium only")
    parser.add_argument("--deadline", type=float, default=420.0, help="start no recipe after this many seconds")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    note, rows = bench_gpu(args.quick, deadline_s=args.deadline)
    replace_section(args.out, HEADING, note + f" The whole section took {time.perf_counter() - start:.0f} s.", rows)
    print(f"{note}\n" + "\n".join(str(r) for r in rows) + f"\nwrote {args.out}")
    failed = [r for r in rows if str(r.get("fits a T4 (15 GiB usable)", "")).startswith("FAILED")]
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
