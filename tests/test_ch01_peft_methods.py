"""Chapter 01's six-method comparison (utils/peft_compare.py, written out in 01_peft_methods.ipynb): the review
data and its errors, the batches' labels, each method's config and its real-scale size, and the shared loop."""

from __future__ import annotations

import itertools
import json

import peft
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from utils.errors import CourseError
from utils.peft_compare import LABELS, METHODS, collate, load_reviews, make_peft_config, train
from utils.real_models import meta_model
from utils.smoke import fixture_path, tiny_checkpoint


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))


def test_reviews_fixture_becomes_prompt_completion_pairs():
    examples = load_reviews(fixture_path("reviews"))
    assert len(examples) == 64
    assert {completion for _, completion in examples} == {" positive", " negative"}
    assert sum(completion == " positive" for _, completion in examples) == 32
    prompt, completion = examples[0]
    assert prompt.startswith("Review: ") and prompt.endswith("\nSentiment:") and completion == " positive"


@pytest.mark.parametrize("line, message", [
    ('{"text": "Fine.", "label": "neutral"}', "record 1 (line 2) has label 'neutral'"),
    ('{"text": "", "label": "positive"}', "record 1 (line 2) needs a non-empty string field 'text'"),
    ('{"text": "Fine."}', "record 1 (line 2) needs a non-empty string field 'label'"),
    ('{"text": "Fine.", "label": "positive"', "line 2 is not JSON"),
])
def test_bad_review_records_are_named(tmp_path, line, message):
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps({"text": "Great.", "label": "positive"}) + "\n" + line + "\n")
    with pytest.raises(CourseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_reviews(path)


def test_batches_train_on_the_completion_only(tokenizer):
    pairs = [("Review: Good.\nSentiment:", " positive"), ("Review: A much longer review text.\nSentiment:", " negative")]
    batch = collate(pairs, tokenizer)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, (prompt, completion) in enumerate(pairs):
        n_prompt = len(tokenizer(prompt)["input_ids"])
        target = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == -100).all()
        assert labels[n_prompt:n_prompt + len(target)].tolist() == target
        assert (labels[n_prompt + len(target):] == -100).all()  # padding is not trained on
        assert batch["attention_mask"][row].sum() == n_prompt + len(target)
    assert (batch["input_ids"][0][batch["attention_mask"][0] == 0] == tokenizer.pad_token_id).all()


def test_configs_of_the_six_methods():
    path = tiny_checkpoint("bloom")
    expected = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig,
                "prefix_tuning": peft.PrefixTuningConfig, "lora": peft.LoraConfig, "ia3": peft.IA3Config,
                "adalora": peft.AdaLoraConfig}
    assert set(expected) == set(METHODS)
    for method, cls in expected.items():
        config = make_peft_config(method, path, total_steps=50)
        assert type(config) is cls and config.task_type == "CAUSAL_LM"
    prompt = make_peft_config("prompt_tuning", path, 50)
    assert prompt.prompt_tuning_init == peft.PromptTuningInit.TEXT and prompt.tokenizer_name_or_path == path
    adalora = make_peft_config("adalora", path, 50)
    assert adalora.total_step == 50 and adalora.tinit < adalora.total_step - adalora.tfinal
    with pytest.raises(ValueError, match="unknown method 'lorax'"):
        make_peft_config("lorax", path, 50)


def test_trainable_parameters_at_real_scale():
    """bloomz-560m's shapes (meta device, no download): the counts the notebook's real-scale table shows."""
    expected = {"prompt_tuning": 16 * 1024, "prefix_tuning": 16 * 24 * 2 * 1024, "lora": 24 * 8 * (1024 + 3 * 1024),
                "ia3": 24 * (3 * 1024 + 4 * 1024)}
    for method, count in expected.items():
        model = get_peft_model(meta_model("bigscience/bloomz-560m"), make_peft_config(method, tiny_checkpoint("bloom"), 100))
        trainable, total = model.get_nb_trainable_parameters()
        assert trainable == count, method
        assert total - trainable == 559_214_592 or method in ("prompt_tuning", "prefix_tuning")
    assert expected["lora"] == 786_432  # the figure peft's own bloomz-560m LoRA example prints


def _batches(tokenizer, size=8):
    examples = load_reviews(fixture_path("reviews"))
    return (collate(examples[i % 64:i % 64 + size], tokenizer) for i in itertools.count(0, size))


def test_lora_loss_falls_on_the_tiny_model(tokenizer):
    torch.manual_seed(0)
    path = tiny_checkpoint("bloom")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), make_peft_config("lora", path, 30))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses, seconds = train(model, _batches(tokenizer), steps=30, lr=3e-2)
    assert len(losses) == len(seconds) == 30 and all(s > 0 for s in seconds)
    assert sum(losses[-5:]) / 5 < losses[0] - 0.2, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)  # base untouched


def test_adalora_reallocates_every_step_after_backward(tokenizer, monkeypatch):
    torch.manual_seed(0)
    path = tiny_checkpoint("bloom")
    steps = 20
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), make_peft_config("adalora", path, steps))
    calls = []
    original = model.base_model.update_and_allocate

    def spy(global_step):
        grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
        calls.append((global_step, all(g is not None and g.abs().sum() > 0 for g in grads)))
        return original(global_step)

    monkeypatch.setattr(model.base_model, "update_and_allocate", spy)
    train(model, _batches(tokenizer), steps=steps, lr=1e-2)
    assert [step for step, _ in calls] == list(range(steps))
    assert all(had_grads for _, had_grads in calls), "update_and_allocate must see the gradients (before zero_grad)"
    # The budget schedule pruned ranks: some of the singular values (lora_E) were masked to zero.
    lora_e = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_E" in n])
    assert (lora_e == 0).sum() > 0 and (lora_e != 0).sum() > 0


def test_labels_start_with_different_tokens(tokenizer):
    firsts = {tokenizer(" " + label)["input_ids"][0] for label in LABELS}
    assert len(firsts) == len(LABELS)  # the notebook's accuracy compares these two tokens' logits
