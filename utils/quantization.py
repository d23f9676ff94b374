"""Chapter 03's code that notebooks, the training script and the tests share.

The round-to-n-bits scheme of the quantization lesson, and the QLoRA recipe's input checks: the prompt data
loader, the target-module check and the 4-bit capability check, each of which turns bad input into a clear
`CourseError` instead of a traceback from deep inside a library. The notebooks write these functions out
(identical source, checked by tests/test_notebooks.py); 03-qlora-bloom/train_qlora.py imports them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.errors import CourseError


def quantize_symmetric(x, bits, max_abs=1.0):
    """Round `x` to signed integers of `bits` bits: scale by (2**(bits-1) - 1) / max_abs, round, clip."""
    levels = 2 ** (bits - 1) - 1  # 7 at 4 bits, 127 at 8 bits
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * levels / max_abs), -levels, levels).astype(np.int64)


def dequantize_symmetric(q, bits, max_abs=1.0):
    """Map integers of `bits` bits back to floats: the inverse scale of `quantize_symmetric`."""
    return np.asarray(q, dtype=np.float64) * max_abs / (2 ** (bits - 1) - 1)


def load_prompt_dataset(source, column="prompt", limit=None):
    """Load prompts as a `datasets.Dataset` with one column, `text` (trl reads a `prompt` column as half of a
    prompt/completion pair, so the plain text must be called `text`).

    `source` is a local .csv/.json/.jsonl file or a Hub dataset id (e.g. "fka/awesome-chatgpt-prompts");
    `limit` keeps the first rows. A missing column, an empty dataset or an empty record is a CourseError.
    """
    from datasets import load_dataset

    path = Path(source)
    try:
        if path.suffix in {".csv", ".json", ".jsonl"}:
            if not path.is_file():
                raise CourseError(f"prompt file {path} does not exist")
            data = load_dataset("csv" if path.suffix == ".csv" else "json", data_files=str(path), split="train")
        else:
            data = load_dataset(str(source), split="train")
    except ValueError as exc:  # datasets' way of saying a file holds no rows
        raise CourseError(f"dataset {source} has no records ({exc}): nothing to train on") from exc
    if column not in data.column_names:
        raise CourseError(f"dataset {source} has no column {column!r} (its columns: {data.column_names}); "
                          f"pass column= with the one that holds the prompt text")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    if len(data) == 0:
        raise CourseError(f"dataset {source} has no records: nothing to train on")
    for i, value in enumerate(data[column]):
        if not isinstance(value, str) or not value.strip():
            raise CourseError(f"dataset {source}, record {i}: field {column!r} is empty or not text ({value!r})")
    data = data.select_columns([column])
    return data if column == "text" else data.rename_column(column, "text")


def check_target_modules(model, target_modules):
    """Raise a CourseError naming any of `target_modules` that `model` has no module for (before get_peft_model)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        linears = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear4bit", "Linear8bitLt")})
        raise CourseError(f"target_modules {missing} not found in {type(model).__name__}; "
                          f"its linear layers are: {linears}")


def require_4bit_support(device):
    """Raise a CourseError unless bitsandbytes can quantize to 4-bit NF4 on `device` (CUDA, CPU or XPU)."""
    import torch

    device = torch.device(device)
    if device.type not in ("cuda", "cpu", "xpu"):
        raise CourseError(f"4-bit quantization was requested on {device.type}, where bitsandbytes does not run: "
                          f"use a CUDA GPU (Colab T4) or the CPU, or load the model without quantization_config")
    try:
        import bitsandbytes.functional as bnbf

        weight = torch.randn(64, 64, device=device)
        packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as exc:
        raise CourseError(f"bitsandbytes cannot quantize to 4-bit on {device} ({type(exc).__name__}: {exc}); "
                          f"install the pinned bitsandbytes (pip install -r requirements.txt)") from exc


def adapters_to_fp32(model) -> int:
    """Cast `model`'s trainable parameters to fp32; return how many tensors were cast. Call it after building an
    `SFTTrainer` and before `train()`, which builds the optimizer.

    trl 1.16's SFTTrainer casts a quantized model's trainable parameters to bf16 (`trl/trainer/sft_trainer.py`),
    whatever `fp16`/`bf16` say. A T4 has no bf16, and fp16 AMP's GradScaler cannot unscale bf16 gradients on CUDA
    (huggingface/trl issue 4901); and AdamW's small late updates round away in bf16. The optimizer wants fp32.
    """
    import torch

    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
