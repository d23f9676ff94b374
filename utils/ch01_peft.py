"""Chapter 01's plumbing, the same for every PEFT method: the `Recipe` a method's recipe returns and the check of its
target modules; the task (Rotten Tomatoes reviews as prompt and label word, batched); a small training loop, greedy
generation, a held-out loss and accuracy; saving an adapter and checking that it reloads; counts at real scale.

What each method *is* (its tensors, its config) is written out in that method's notebook; its recipe is exported to
utils/lessons/peft_recipes.py and registered in utils/ch01_methods.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import peft

from utils.checks import check_field, check_int, read_records
from utils.errors import CourseError
from utils.hub import hub_errors


class Recipe(NamedTuple):
    """A method's peft config and the learning rate it trains with."""

    config: peft.PeftConfig
    learning_rate: float


def model_skeleton(model_id: str):
    """The model's architecture on the meta device, from its config alone: no weights are read. The course's real
    models come from their published configs (no network); anything else from its config.json (local or Hub)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from utils.real_models import REAL_CONFIGS, meta_model

    if model_id in REAL_CONFIGS:
        return meta_model(model_id)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_id))


def check_targets(recipe: str, model_id: str, target_modules, rank: int | None = None) -> None:
    """A CourseError naming any of `target_modules` that the model lacks; a ValueError when `rank` is not below
    the smaller side of every targeted layer (a low-rank update of a 64 x 192 matrix needs rank < 64)."""
    from utils.checks import check_target_modules

    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(f"{recipe}: target_modules={target_modules!r}; give a list of module names such as "
                         f"['query_key_value']")
    skeleton = model_skeleton(model_id)
    check_target_modules(skeleton, list(target_modules))
    if rank is None:
        return
    for name, module in skeleton.named_modules():
        if name.rsplit(".", 1)[-1] in target_modules and hasattr(module, "in_features"):
            side = min(module.in_features, module.out_features)
            if rank >= side:
                raise ValueError(f"{recipe}: rank {rank} is not below the smaller side ({side}) of {name} "
                                 f"[{module.out_features} x {module.in_features}]: the update would not be "
                                 f"low-rank; use a rank < {side}")




DATASET = "cornell-movie-review-data/rotten_tomatoes"
LABELS = ("negative", "positive")  # the dataset's label 0 and 1 (its ClassLabel names are "neg" and "pos")


def review_prompt(text: str) -> str:
    """The prompt the model completes with a label word."""
    return f"Review: {text.strip()}\nSentiment:"


def _load_hub(source: str, split: str) -> list[tuple[str, dict]]:
    from datasets import load_dataset

    with hub_errors(source, "dataset"):
        dataset = load_dataset(source, split=split)
    return [(f"record {i}", record) for i, record in enumerate(dataset.to_list())]


def load_reviews(source: str | Path, split: str = "train", limit: int | None = None,
                 seed: int = 0) -> list[tuple[str, str]]:
    """Reviews as (prompt, completion) pairs, shuffled with `seed`, the first `limit` kept.

    `source` is a local .jsonl file (one {"text": ..., "label": 0 or 1} per line) or a Hub dataset id, whose `split`
    is read. A bad record is a CourseError naming the file, the record and the field.
    """
    check_int("limit", limit, minimum=1, optional=True, hint="None keeps every review")
    path = Path(source)
    if path.suffix == ".jsonl":
        where, records = str(path), read_records(path)
    else:
        where, records = f"{source} ({split})", _load_hub(str(source), split)
    if not records:
        raise CourseError(f"{where} has no reviews: nothing to train on")
    pairs = []
    for at, record in records:
        text, label = check_field(record, "text", f"{where}, {at}"), record.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise CourseError(f"{where}, {at}: field 'label' is {label!r}; use 0 (negative) or 1 (positive)")
        pairs.append((review_prompt(text), " " + LABELS[label]))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def collate(pairs: list[tuple[str, str]], tokenizer) -> dict:
    """Tokenize (prompt, completion) pairs into a right-padded batch whose labels are the completion tokens only
    (the prompt and the padding get -100, which the loss ignores); the completion ends with end-of-text."""
    import torch

    rows = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows]),
    }


def review_batches(pairs: list[tuple[str, str]], tokenizer, batch_size: int, seed: int = 0) -> Iterator[dict]:
    """An endless stream of shuffled batches (a new order each epoch; the same stream for the same seed)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size={batch_size!r}: use a whole number from 1 to the {len(pairs)} reviews")
    rng = random.Random(seed)
    while True:
        order = rng.sample(pairs, len(pairs))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate(order[i:i + batch_size], tokenizer)


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
    from transformers import AutoModelForCausalLM, set_seed

    from utils.machine import pick_device

    set_seed(seed)
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
