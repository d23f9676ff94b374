"""Every chapter 01 method in the registry still generates after training (prompt-learning methods have broken with
transformers' cache changes before): on the tiny BLOOM, a few training steps, then greedy generation of a left-padded
batch, with the KV cache and without it. And `utils.generation.generate_text`, which chapters 01 to 03 generate with."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from utils.ch01_methods import METHODS, make_recipe
from utils.ch01_peft import load_reviews
from utils.errors import CourseArgumentError
from utils.generation import generate_text
from utils.lessons.peft_task import collate, train
from utils.smoke import fixture_path, tiny_checkpoint

NEW_TOKENS = 3


@pytest.fixture(scope="module")
def tiny():
    path = tiny_checkpoint("bloom")
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = load_reviews(fixture_path("rotten_tomatoes_train"))
    return path, tokenizer, examples


@pytest.mark.parametrize("method", list(METHODS))
def test_generates_after_training(tiny, method):
    path, tokenizer, examples = tiny
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), make_recipe(method, path, 4).config)
    batches = (collate(examples[i:i + 4], tokenizer) for i in itertools.count(0, 4))
    losses, _ = train(model, batches, steps=4, lr=1e-2, after_step=getattr(model.base_model, "update_and_allocate", None))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert not model.training  # train() leaves the model in eval mode for generation

    tokenizer.padding_side = "left"  # a batch of prompts of different lengths, padded on the left for generation
    prompts = [examples[0][0], "Review: dull .\nSentiment:"]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
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

    # generate_text generates each prompt alone (no padding): the same continuations as the padded batch
    texts = generate_text(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    assert texts == tokenizer.batch_decode(cached[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generate_text_is_greedy_decodes_without_the_prompt_and_takes_token_ids(tiny):
    path, tokenizer, examples = tiny
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).train()  # generate_text turns dropout off
    prompts = [prompt for prompt, _ in examples[:3]]
    texts = generate_text(model, tokenizer, prompts, max_new_tokens=6)
    assert not model.training
    for prompt, text in zip(prompts, texts, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert text == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert not text.startswith(prompt)
    token_ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    assert generate_text(model, tokenizer, token_ids, desc="ids", max_new_tokens=6) == texts
    beams = generate_text(model, tokenizer, prompts, max_new_tokens=6, num_beams=3)  # settings reach generate()
    assert len(beams) == 3 and all(isinstance(t, str) for t in beams)
    eos = tokenizer.eos_token_id  # a continuation stops at the tokenizer's end of text
    only_eos = [t for t in range(model.config.vocab_size) if t != eos]
    assert generate_text(model, tokenizer, prompts[:1], max_new_tokens=6, suppress_tokens=only_eos) == [""]
    with pytest.raises(CourseArgumentError, match="one string"):
        generate_text(model, tokenizer, prompts[0], max_new_tokens=2)
