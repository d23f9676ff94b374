"""Section 6, on a CUDA GPU only: the chapters' real-shape recipes with random weights (no download), their peak
GPU memory and tokens per second, beside utils.memory_budget's prediction and the verdict for a 16 GB T4.

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


RECIPES = [
    Recipe("bloom-7b1 4-bit QLoRA (ch03)", "bigscience/bloom-7b1", 4, ("query_key_value",), 16, 16, batch=1, seq=512),
    Recipe("GPT-J 6B 8-bit LoRA (ch02)", "EleutherAI/gpt-j-6b", 8, ("q_proj", "v_proj"), 16, 32, batch=1, seq=512),
    Recipe("gpt2-medium full fine-tune (ch04)", "openai-community/gpt2-medium", None, batch=8, seq=256),
]


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
    """The chapters' k-bit LoRA model: quantized base, prepare_model_for_kbit_training, peft LoRA."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = random_quantized_model(config, recipe.bits, dtype, device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.05, bias="none",
                      target_modules=list(recipe.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def measure(model, vocab: int, recipe: Recipe, device, autocast_dtype, warmup: int = 2, steps: int = 5) -> dict:
    """Peak memory (CUDA max allocated, weights included) and tokens/s of full training steps at the recipe's shape."""
    from utils.env import peak_memory

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randint(0, vocab, (recipe.batch, recipe.seq), device=device)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
        logits = getattr(out, "logits", out)  # a transformers output, or GPTModel's logits tensor
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()

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
    """utils.memory_budget's prediction at the recipe's settings (bytes)."""
    from utils.memory_budget import TRAINABLE_BYTES_PER_PARAM, memory_budget
    from utils.real_models import meta_model

    meta = meta_model(recipe.model_id)
    if recipe.bits is None:  # full fine-tune in fp32: every parameter trained (weight, grad, two AdamW moments)
        from utils.gpt import GPT_CONFIGS, GPTModel

        with torch.device("meta"):
            params = sum(p.numel() for p in GPTModel(GPT_CONFIGS["gpt2-medium (355M)"]).parameters())
        terms = memory_budget(meta, weight_bits=32, unquantized_bytes=4, lora_r=0, batch_size=recipe.batch,
                              seq_len=recipe.seq, gradient_checkpointing=False, activation_bytes=4).terms
        return params * TRAINABLE_BYTES_PER_PARAM + terms["activations"] + terms["logits"] + terms["CUDA context"]
    # prepare_model_for_kbit_training upcasts every parameter that is not quantized to fp32: 4 bytes each
    return memory_budget(meta, weight_bits=recipe.bits, unquantized_bytes=4, lora_r=recipe.rank,
                         target_modules=recipe.target_modules, batch_size=recipe.batch, seq_len=recipe.seq,
                         gradient_checkpointing=True, activation_bytes=2).total


def run_recipe(recipe: Recipe, device) -> dict:
    from utils.env import pick_dtype
    from utils.memory_budget import T4_USABLE_BYTES
    from utils.real_models import real_config

    dtype = pick_dtype(device)
    if recipe.bits is None:
        from utils.gpt import GPT_CONFIGS, GPTModel

        torch.manual_seed(0)
        model = GPTModel({**GPT_CONFIGS["gpt2-medium (355M)"], "drop_rate": 0.0}).to(device)
        vocab, autocast = 50257, None  # chapter 04 trains in fp32
    else:
        config = real_config(recipe.model_id)
        model, vocab, autocast = lora_model(config, recipe, dtype, device), config.vocab_size, dtype
    result = measure(model, vocab, recipe, device, autocast)
    del model
    torch.cuda.empty_cache()
    peak, budget = result["peak_bytes"], predicted_bytes(recipe)
    # the measured peak is max_memory_allocated: add the CUDA context (about 0.5 GiB) for what a T4 must hold
    need = peak + 0.5 * GIB
    return {"recipe": recipe.name, "batch x seq": f"{recipe.batch} x {recipe.seq}",
            "peak allocated (GiB)": peak / GIB, "budget (GiB)": budget / GIB, "tokens/s": result["tokens_per_s"],
            "s/step": result["s_per_step"],
            "fits a T4 (15 GiB usable)": "yes" if need <= T4_USABLE_BYTES * 0.9 else
            ("tight" if need <= T4_USABLE_BYTES else "NO: halve batch x seq, or use gradient checkpointing")}


def bench_gpu(quick: bool = False) -> tuple[str, list[dict]]:
    if not torch.cuda.is_available():
        return ("Skipped: no CUDA GPU on this machine. On a GPU, `make bench` measures bloom-7b1 4-bit QLoRA, GPT-J 6B "
                "8-bit LoRA and gpt2-medium full fine-tuning here (bench/gpu.py; untested until run on one)."), []
    device = torch.device("cuda")
    rows = []
    for recipe in RECIPES[2:] if quick else RECIPES:
        print(f"  {recipe.name} ...", flush=True)
        rows.append(run_recipe(recipe, device))
    note = (f"GPU: {torch.cuda.get_device_name(0)}. Random weights from the published configs, the chapters' "
            "settings; compute dtype from utils.env.pick_dtype. Peak = torch.cuda.max_memory_allocated over 2 "
            "warm-up and 5 timed steps (median s/step). Budget = utils.memory_budget.memory_budget with the "
            "non-quantized parameters at 4 bytes (prepare_model_for_kbit_training upcasts them to fp32). T4 verdict: "
            "peak + 0.5 GiB CUDA context within 90% of 15 GiB (yes), within 15 GiB (tight).")
    return note, rows
