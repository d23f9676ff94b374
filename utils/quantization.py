"""Chapter 03's code that notebooks, the training script and the tests share.

The round-to-n-bits scheme of the quantization lesson, and the QLoRA recipe's input checks: the prompt data
loader, the target-module check and the 4-bit capability check, each of which turns bad input into a clear
`CourseError` instead of a traceback from deep inside a library. The notebooks write these functions out
(identical source, checked by tests/test_notebooks.py); 03-qlora-bloom/train_qlora.py imports them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.checks import check_int, check_number
from utils.errors import CourseError


def quantize_symmetric(x, bits, max_abs=1.0):
    """Round `x` to signed integers of `bits` bits: scale by (2**(bits-1) - 1) / max_abs, round, clip."""
    check_int("bits", bits, minimum=2, maximum=32)  # 1 bit leaves no level but 0 in this symmetric scheme
    check_number("max_abs", max_abs, above=0)
    levels = 2 ** (bits - 1) - 1  # 7 at 4 bits, 127 at 8 bits
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * levels / max_abs), -levels, levels).astype(np.int64)


def dequantize_symmetric(q, bits, max_abs=1.0):
    """Map integers of `bits` bits back to floats: the inverse scale of `quantize_symmetric`."""
    check_int("bits", bits, minimum=2, maximum=32)
    check_number("max_abs", max_abs, above=0)
    return np.asarray(q, dtype=np.float64) * max_abs / (2 ** (bits - 1) - 1)


def load_prompt_dataset(source, column="prompt", limit=None):
    """Load prompts as a `datasets.Dataset` with one column, `text` (trl reads a `prompt` column as half of a
    prompt/completion pair, so the plain text must be called `text`).

    `source` is a local .csv/.json/.jsonl file or a Hub dataset id (e.g. "fka/awesome-chatgpt-prompts");
    `limit` keeps the first rows. Bad input is a CourseError naming the file, the record and the field: a file
    that is not UTF-8 or not a list of records, a ragged CSV row, no records, a missing, empty or non-text field.
    """
    from itertools import islice

    from datasets import Dataset, load_dataset

    from utils.checks import Record, check_field, check_int, read_records
    from utils.hub import hub_errors

    check_int("limit", limit, minimum=1, optional=True)
    if Path(source).suffix in {".csv", ".json", ".jsonl"} or Path(source).exists():
        records = read_records(source)  # checked: UTF-8, one object per record, no ragged CSV row, not empty
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
