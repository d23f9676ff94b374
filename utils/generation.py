"""Text generation for the chapters where it is a tool, not the lesson (chapter 04 writes its own `generate`)."""

from __future__ import annotations

from collections.abc import Sequence

from utils.errors import CourseArgumentError


def generate_text(model, tokenizer, prompts: Sequence[str | Sequence[int]], desc: str | None = None,
                  **settings) -> list[str]:
    """Each prompt's continuation (text or token ids), generated alone (no padding), greedily unless `settings` (for
    `model.generate`) say otherwise, decoded without the prompt; `desc`: a progress bar. Puts `model` in eval mode."""
    import torch
    from tqdm.auto import tqdm

    if isinstance(prompts, str):
        raise CourseArgumentError("generate_text(): prompts must be a list of prompts, got one string; wrap it in "
                                  "a list: [prompt]")
    settings = {"do_sample": False, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                **settings}
    model.eval()
    texts = []
    for prompt in tqdm(prompts, desc=desc, disable=desc is None):
        ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        input_ids = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **settings)
        texts.append(tokenizer.decode(output[0, len(ids):], skip_special_tokens=True))
    return texts
