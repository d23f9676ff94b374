"""A workaround for bitsandbytes 0.50.2 on CPUs with AVX512-BF16. Delete this file when a release fixes the bug.

At a `Linear4bit`'s first forward in eval mode with an input that needs no gradient (generating, say),
bitsandbytes 0.50.2 repacks the weight into a CPU-only layout for its bf16 inference kernel
(`Linear4bit.forward` -> `_convert_weight_packed_for_cpu`) and never unpacks it when training starts. From then on
`matmul_4bit` takes the inference-only `gemv_4bit` path in training too: no backward through it, and an in-place
bias add that fails the first step with "a view of a leaf Variable that requires grad is being used in an in-place
operation". Generate-then-train, as chapter 03 does, hits it on such CPUs only; GPUs and other CPUs never repack.
Unpacking afterwards is no cure: bitsandbytes' inverse rounds the quantization constants through bf16, so the
weights would no longer be the checkpoint's. The workaround keeps such a model from repacking at all, which is what
bitsandbytes does on every other machine. Upstream knows the neighbouring case (bitsandbytes issue 2078, PR 2083:
packed weights left packed by `.to()`); 0.50.2 is the newest release on PyPI (checked 2026-12-01), and
`tests/test_bnb_cpu.py` fails once a release stops showing the bug, so that this file goes then.
"""

from __future__ import annotations

import torch
from bitsandbytes.functional import has_avx512bf16
from bitsandbytes.nn import Linear4bit

from utils.errors import CourseError

__all__ = ["cpu_repacks_4bit", "is_repacked", "keep_4bit_trainable"]


def cpu_repacks_4bit() -> bool:
    """Whether bitsandbytes repacks 4-bit weights for inference on this machine's CPU (it has AVX512-BF16)."""
    return bool(has_avx512bf16())


def is_repacked(layer: Linear4bit) -> bool:
    """Whether `layer`'s weight is in bitsandbytes' inference-only CPU layout."""
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def keep_4bit_trainable(model: torch.nn.Module) -> int:
    """Keep every `Linear4bit` of `model` in the layout it can train in, as bitsandbytes does on GPUs and on CPUs
    without AVX512-BF16 (there this changes nothing). Call it right after loading; returns the number of layers."""
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    repacked = [name for name, m in model.named_modules() if isinstance(m, Linear4bit) and is_repacked(m)]
    if repacked:
        raise CourseError(f"{len(repacked)} 4-bit layers (first: {repacked[0]}) were already repacked for CPU "
                          f"inference by a forward in eval mode: load the model again and call keep_4bit_trainable "
                          f"right after loading")
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False  # the flag bitsandbytes reads before repacking
    return len(layers)
