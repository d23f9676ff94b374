"""The plumbing chapter 01's PEFT notebooks share: a small training loop, greedy generation, a held-out loss and
accuracy, saving an adapter and checking that it reloads, and parameter counts of the real models on the meta device.

What each method *is* (its tensors, its config) is written out in that method's notebook; this is what is the same
for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from utils.errors import CourseError
from utils.hub import hub_errors
from utils.peft_task import LABELS, collate

REAL_MODELS = ("bigscience/bloomz-560m", "bigscience/bloom-7b1")


def trainable_parameters(model) -> list:
    """The parameters training updates: those with requires_grad, after re-freezing AdaLoRA's rank counters.

    peft 0.21.2 re-creates AdaLoRA's `ranknum` (a constant, the layer's initial rank, that scales the update) as a
    trainable parameter whenever it moves an adapter to the base model's device or dtype (a GPU, fp16, the meta
    device); it is no weight to learn, so it is frozen here.
    """
    for name, param in model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def train(model, batches: Iterator[dict], steps: int, lr: float,
          after_step: Callable[[int], None] | None = None, desc: str = "training") -> tuple[list[float], list[float]]:
    """AdamW on the trainable parameters for `steps` batches; returns each step's loss and seconds.

    `after_step(step)` runs after the optimizer step and before the gradients are cleared (AdaLoRA's
    `update_and_allocate` needs them). The model is left in eval mode.
    """
    import torch
    from tqdm.auto import tqdm

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: use a whole number of optimizer steps >= 1")
    if not lr > 0:
        raise ValueError(f"lr={lr!r}: the learning rate must be a number > 0")
    params = trainable_parameters(model)
    if not params:
        raise CourseError("the model has no trainable parameters: wrap it with get_peft_model first")
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses, seconds = [], []
    for step in tqdm(range(steps), desc=desc):
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
    model.eval()
    return losses, seconds


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 3) -> list[str]:
    """Greedy continuations of `prompts` (a left-padded batch), decoded without the prompt."""
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so the padding goes left
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    finally:
        tokenizer.padding_side = side
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def held_out_loss(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8) -> float:
    """Mean cross-entropy of the completions of `pairs`, from the logits (no training: dropout off, no gradients).

    Computed here rather than read from `model(...).loss`, which for AdaLoRA includes its orthogonality penalty.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in collate(pairs[i:i + batch_size], tokenizer).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, -labels.shape[1]:]  # prompt-style methods put virtual tokens first
            total += F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum").item()
            count += int((labels[:, 1:] != -100).sum())
    return total / count


def label_accuracy(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Share of `pairs` whose right label's first token scores higher than the other label's, after the prompt."""
    import torch

    label_ids = [tokenizer(" " + label)["input_ids"][0] for label in LABELS]
    if len(set(label_ids)) != len(LABELS):
        raise CourseError(f"the labels {LABELS} start with the same token for this tokenizer: accuracy cannot tell "
                          f"them apart")
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for prompt, completion in pairs:
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            scores = model(**inputs).logits[0, -1, label_ids]
            correct += LABELS[int(scores.argmax())] == completion.strip()
    return correct / len(pairs)


def load_base(model_id: str, device=None, seed: int = 0):
    """The frozen base model in fp32 on `device` (CUDA when present); seeded, so every call builds the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    from utils.env import pick_device, seed_everything

    seed_everything(seed)
    with hub_errors(model_id):
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    return model.to(device or pick_device())


def save_and_reload(model, model_id: str, folder: str | Path, probe: dict):
    """Save the adapter in `folder`, load it onto a fresh `model_id` base, and check the two give the same logits on
    the batch `probe`. Returns the reloaded model and the adapter file's size in bytes."""
    import torch
    from peft import PeftModel

    folder = Path(folder)
    model.save_pretrained(folder)  # the adapter only, as safetensors, with its config
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise CourseError(f"save_pretrained wrote no {weights.name} in {folder} (found: "
                          f"{sorted(p.name for p in folder.iterdir())})")
    device = next(model.parameters()).device
    reloaded = PeftModel.from_pretrained(load_base(model_id, device), folder)
    model.eval()
    reloaded.eval()
    probe = {k: v.to(device) for k, v in probe.items() if k != "labels"}
    with torch.no_grad():
        before, after = model(**probe).logits, reloaded(**probe).logits
    if before.shape != after.shape or not torch.allclose(before, after, atol=1e-5, rtol=1e-4):
        diff = (before - after).abs().max().item() if before.shape == after.shape else "shape"
        raise CourseError(f"the adapter reloaded from {folder} gives other logits than the trained model "
                          f"(largest difference {diff})")
    return reloaded, weights.stat().st_size


def count_at_real_scale(new_config: Callable[[], object], model_ids: Iterable[str] = REAL_MODELS) -> list[dict]:
    """Trainable and total parameters of each real model wrapped with a fresh `new_config()`, on the meta device
    (shapes only: no download, no memory)."""
    from peft import get_peft_model

    from utils.real_models import meta_model

    rows = []
    for model_id in model_ids:
        model = get_peft_model(meta_model(model_id), new_config())
        trainable = sum(p.numel() for p in trainable_parameters(model))
        total = sum(p.numel() for p in model.parameters())
        rows.append({"model": model_id, "trainable params": trainable, "all params": total,
                     "trainable share": f"{trainable / total:.4%}"})
    return rows
