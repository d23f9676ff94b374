"""Chapter 03's plumbing for QLoRA: the prompt data as trl wants it, a check that 4-bit runs here, trl's adapter dtype
put back to fp32, a workaround for bitsandbytes 0.50.2 on CPUs with AVX512-BF16, and the argument check of the
quantization lesson. The quantization itself is written in 01_quantization_basics.ipynb."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch
from bitsandbytes.nn import Linear4bit

from utils.checks import Record, check_field, check_int, check_number, read_records
from utils.errors import CourseError
from utils.hub import hub_errors


def _prompt_file(source) -> Path | None:
    """`source` as the Path of a local prompts file, checked (there, a file, not JSON Lines holding one list), or None
    when it is a Hub dataset id."""
    path = Path(source)
    if not (path.suffix in {".csv", ".json", ".jsonl"} or path.exists() or str(source).startswith((".", "/", "~"))):
        return None
    if not path.exists():
        raise CourseError(f"{source}: no such file; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise CourseError(f"{source} is a folder: pass the .csv, .json or .jsonl file of prompts in it, or a Hub "
                          "dataset id such as fka/awesome-chatgpt-prompts")
    if path.suffix == ".jsonl" and path.read_text(errors="replace").lstrip().startswith("["):
        raise CourseError(f"{source} holds one JSON list [...], not JSON Lines (one object per line): rename it to "
                          f"{path.stem}.json")
    return path


def load_prompt_dataset(source, column="prompt", limit=None):
    """The first `limit` prompts of a .csv/.json/.jsonl file or a Hub dataset, as a Dataset with one column, `text`."""
    from datasets import Dataset, load_dataset  # datasets is slow to import: only when prompts are loaded

    check_int("limit", limit, minimum=1, optional=True)
    if (path := _prompt_file(source)) is not None:
        records = read_records(path)  # checked: UTF-8, one object per record, no ragged CSV row, not empty
    else:
        with hub_errors(source, kind="dataset"):
            rows = load_dataset(str(source), split="train")
        records = [Record(f"record {i}", row) for i, row in enumerate(rows)]
    texts = [check_field(record.fields, column, f"{source}, {record.place}",
                         fix="pass column= with the one that holds the prompt text")
             for record in islice(records, limit)]
    if not texts:
        raise CourseError(f"dataset {source} has no records: nothing to train on")
    return Dataset.from_dict({"text": texts})


def require_4bit_support(device):
    """CourseError unless bitsandbytes can quantize to 4-bit NF4 and back on `device` (probed, on any device)."""
    device = torch.device(device)
    try:
        import bitsandbytes.functional as bnbf

        weight = torch.randn(64, 64, device=device)
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]  # torch's first line; the rest lists its backends
        raise CourseError(f"bitsandbytes cannot quantize to 4-bit on {device} ({type(exc).__name__}: {reason}); "
                          f"use a CUDA GPU (Colab T4) or the CPU, load the model without quantization_config, or "
                          f"install the pinned bitsandbytes (pip install -r requirements.txt)") from exc


def adapters_to_fp32(model) -> int:
    """Cast `model`'s trainable parameters to fp32 after building an `SFTTrainer` and before `train()`; return how many
    tensors were cast. trl 1.16 casts a quantized model's adapters to bf16 whatever `fp16`/`bf16` say: a T4 has no bf16,
    fp16 AMP's GradScaler cannot unscale bf16 gradients (huggingface/trl issue 4901), and AdamW's small updates round
    away in bf16."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


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


def check_quantize_args(bits, max_abs) -> None:
    """The arguments of 01_quantization_basics' `quantize_symmetric` and `dequantize_symmetric`: an integer number of
    bits from 2 to 32 (1 bit leaves no level but 0 in a symmetric scheme) and a finite max_abs above 0."""
    check_int("bits", bits, minimum=2, maximum=32)
    check_number("max_abs", max_abs, above=0)
