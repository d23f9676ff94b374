"""Every one of chapter 01's six PEFT methods still generates after training (prompt-learning methods have broken
with transformers' cache changes before): on the tiny BLOOM, a few training steps, then greedy generation of a
left-padded batch, with the KV cache and without it."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from utils.ch01_methods import NOTEBOOKS
from utils.ch01_peft import collate, generate_greedy, load_reviews, train
from utils.lessons.peft_recipes import (
    adalora_recipe,
    ia3_recipe,
    lora_recipe,
    p_tuning_recipe,
    prefix_tuning_recipe,
    prompt_tuning_recipe,
)
from utils.smoke import fixture_path, tiny_checkpoint

NEW_TOKENS = 3


@pytest.fixture(scope="module")
def tiny():
    path = tiny_checkpoint("bloom")
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = load_reviews(fixture_path("rotten_tomatoes_train"))
    return path, tokenizer, examples


RECIPES = {"prompt_tuning": prompt_tuning_recipe, "p_tuning": lambda _: p_tuning_recipe(),
           "prefix_tuning": lambda _: prefix_tuning_recipe(), "lora": lora_recipe, "ia3": ia3_recipe,
           "adalora": lambda path: adalora_recipe(path, total_step=4)}


@pytest.mark.parametrize("method", list(NOTEBOOKS))
def test_generates_after_training(tiny, method):
    path, tokenizer, examples = tiny
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), RECIPES[method](path).config)
    batches = (collate(examples[i:i + 4], tokenizer) for i in itertools.count(0, 4))
    losses, _ = train(model, batches, steps=4, lr=1e-2)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert not model.training  # train() leaves the model in eval mode for generation

    tokenizer.padding_side = "left"  # a batch of prompts of different lengths, padded on the left for generation
    prompts = [examples[0][0], "Review: dull .\nSentiment:"]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    assert inputs["attention_mask"][0].sum() != inputs["attention_mask"][1].sum()
    settings = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        cached = model.generate(**inputs, **settings)
        uncached = model.generate(**inputs, **settings, use_cache=False)
    assert cached.shape == (2, inputs["input_ids"].shape[1] + NEW_TOKENS)
    assert torch.equal(cached[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])  # the prompt is kept
    assert torch.equal(cached, uncached), "generation with the KV cache differs from generation without it"
    assert cached.max() < model.config.vocab_size and cached.min() >= 0

    tokenizer.padding_side = "right"  # generate_greedy pads on the left itself, and puts the tokenizer back
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.batch_decode(plain[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS) == expected
    assert tokenizer.padding_side == "right"
