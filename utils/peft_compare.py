"""Chapter 01's six PEFT methods side by side: the review data, one config per method, and the one training loop.

The notebook 01-peft-setup/01_peft_methods.ipynb writes these functions out as its lesson; they are here too so
that tests (tests/test_ch01_*.py) can import them. tests/test_notebooks.py checks the two copies are identical.
"""

from __future__ import annotations

import json
import time

from utils.errors import CourseError

LABELS = ("positive", "negative")
METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "lora", "ia3", "adalora")


def load_reviews(path):
    """The reviews as (prompt, completion) pairs: "Review: ...\\nSentiment:" -> " positive" / " negative"."""
    examples = []
    for i, line in enumerate(open(path, encoding="utf-8")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CourseError(f"{path}: line {i + 1} is not JSON ({exc.msg}): fix or delete that line") from exc
        for field in ("text", "label"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise CourseError(f"{path}: record {i} (line {i + 1}) needs a non-empty string field {field!r}")
        if record["label"] not in LABELS:
            raise CourseError(f"{path}: record {i} (line {i + 1}) has label {record['label']!r}; use one of {LABELS}")
        examples.append((f"Review: {record['text'].strip()}\nSentiment:", " " + record["label"]))
    return examples


def collate(pairs, tokenizer):
    """Tokenize (prompt, completion) pairs into a right-padded batch whose labels are the completion tokens only."""
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


def make_peft_config(method, model_id, total_steps, task_type="CAUSAL_LM"):
    """The peft config of one of the six methods, for a BLOOM model (its attention is `query_key_value`)."""
    import peft

    if method == "prompt_tuning":  # soft prompt initialised from the embeddings of a real instruction
        init_text = "Classify the review as positive or negative."
        return peft.PromptTuningConfig(task_type=task_type, prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                       prompt_tuning_init_text=init_text, tokenizer_name_or_path=model_id,
                                       num_virtual_tokens=16)
    if method == "p_tuning":  # virtual tokens produced by a small MLP (the prompt encoder)
        return peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=16, encoder_hidden_size=128)
    if method == "prefix_tuning":  # learned keys and values prepended in every layer
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=16)
    if method == "lora":  # low-rank update B @ A added to the attention projection
        return peft.LoraConfig(task_type=task_type, r=8, lora_alpha=16, lora_dropout=0.05,
                               target_modules=["query_key_value"])
    if method == "ia3":  # learned vectors rescaling keys, values and the feed-forward activations
        return peft.IA3Config(task_type=task_type, target_modules=["query_key_value", "dense_4h_to_h"],
                              feedforward_modules=["dense_4h_to_h"])
    if method == "adalora":  # LoRA whose rank budget is re-allocated during training (needs total_step)
        return peft.AdaLoraConfig(task_type=task_type, init_r=12, target_r=4, lora_alpha=16,
                                  target_modules=["query_key_value"], total_step=total_steps,
                                  tinit=total_steps // 10, tfinal=total_steps // 5, deltaT=1)
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def train(model, batches, steps, lr, progress=None):
    """The one training loop all six methods share: AdamW on the trainable parameters, `steps` batches.

    AdaLoRA additionally re-allocates its rank budget after every optimizer step (`update_and_allocate`).
    Returns the loss of every step and the seconds each step took.
    """
    import torch

    device = next(p for p in model.parameters() if p.requires_grad).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    adalora = type(model.base_model).__name__ == "AdaLoraModel"
    model.train()
    losses, seconds = [], []
    for step in range(steps):
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if adalora:
            model.base_model.update_and_allocate(step)  # after backward (it reads the gradients), before zero_grad
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        losses.append(loss.item())
        seconds.append(time.perf_counter() - start)
        if progress is not None:
            progress.update(1)
    model.eval()
    return losses, seconds
