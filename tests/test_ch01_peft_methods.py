"""Chapter 01's PEFT methods, every one in the registry (utils/ch01_methods.py): the review data and its errors, the
batches' labels, each method's recipe and its argument checks, the trainable parameters at real scale (against the
methods' formulas where the test knows one), and the shared plumbing (training loop, held-out loss, save and reload)."""

from __future__ import annotations

import itertools
import json

import peft
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.test_real_models import PUBLISHED_PARAMETERS
from utils.ch01_methods import METHODS, make_recipe
from utils.ch01_peft import (
    LABELS,
    load_base,
    load_reviews,
    rewrites_base,
    trainable_parameters,
)
from utils.errors import CourseError
from utils.lessons.peft_recipes import (
    adalora_recipe,
    dora_recipe,
    ia3_recipe,
    lora_recipe,
    loraplus_recipe,
    p_tuning_recipe,
    pissa_recipe,
    prefix_tuning_recipe,
    prompt_tuning_recipe,
    rslora_recipe,
)
from utils.lessons.peft_task import (
    collate,
    count_at_real_scale,
    held_out_loss,
    make_optimizer,
    review_batches,
    save_and_reload,
    train,
)
from utils.real_models import real_config
from utils.smoke import fixture_path, tiny_checkpoint

TINY = tiny_checkpoint("bloom")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY)


def after_step(model):
    """AdaLoRA's `update_and_allocate` (after every step), None for a method without one."""
    return getattr(model.base_model, "update_and_allocate", None)


def test_rotten_tomatoes_fixtures_become_prompt_completion_pairs():
    train_pairs = load_reviews(fixture_path("rotten_tomatoes_train"))
    eval_pairs = load_reviews(fixture_path("rotten_tomatoes_validation"), "validation")
    assert (len(train_pairs), len(eval_pairs)) == (48, 16)
    assert not {p for p, _ in train_pairs} & {p for p, _ in eval_pairs}  # no review in both
    for pairs in (train_pairs, eval_pairs):
        completions = [c for _, c in pairs]
        assert completions.count(" positive") == completions.count(" negative") == len(pairs) // 2
    prompt, completion = train_pairs[0]
    assert prompt.startswith("Review: ") and prompt.endswith("\nSentiment:") and completion in (" positive", " negative")
    first = json.loads(fixture_path("rotten_tomatoes_train").read_text().splitlines()[0])
    assert set(first) == {"text", "label"}  # the Hub dataset's schema
    assert load_reviews(fixture_path("rotten_tomatoes_train"), limit=5) == train_pairs[:5]  # shuffled once, then cut
    assert load_reviews(fixture_path("rotten_tomatoes_train"), seed=1) != train_pairs


@pytest.mark.parametrize("content, message", [
    ('{"text": "Fine.", "label": 2}\n', "line 2: field 'label' is 2; use 0 (negative) or 1 (positive)"),
    ('{"text": "Fine.", "label": true}\n', "line 2: field 'label' is True"),
    ('{"text": "", "label": 1}\n', "line 2: field 'text' is empty"),
    ('{"label": 1}\n', "line 2: no field 'text'"),
    ('{"text": "Fine."}\n', "line 2: field 'label' is None"),
    ('{"text": "Fine.", "label": 1\n', "line 2: not valid JSON"),
    ('["Fine.", 1]\n', "line 2: a JSON list, expected an object"),
])
def test_bad_review_records_are_named(tmp_path, content, message):
    path = tmp_path / "reviews.jsonl"
    path.write_text(json.dumps({"text": "Great.", "label": 1}) + "\n" + content)
    with pytest.raises(CourseError, match=f"{path}, " + message.replace("(", r"\(").replace(")", r"\)")):
        load_reviews(path)


def test_bad_review_files_are_named(tmp_path):
    with pytest.raises(CourseError, match="missing.jsonl: no such file"):
        load_reviews(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CourseError, match="empty.jsonl is empty"):
        load_reviews(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "café", "label": 1}\n'.encode("latin-1"))
    with pytest.raises(CourseError, match="is not UTF-8"):
        load_reviews(tmp_path / "latin1.jsonl")
    with pytest.raises(CourseError, match="dataset 'no-such/dataset' is not in the local Hugging Face cache.*COURSE_SMOKE=1"):
        load_reviews("no-such/dataset")  # offline in tests: the Hub is not reachable
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        load_reviews(fixture_path("rotten_tomatoes_train"), limit=0)


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


def _hand_padded(pairs, tokenizer):
    """The batch chapter 01 padded by hand before it used DataCollatorForSeq2Seq: on the right, labels with -100."""
    rows = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids))
    width = max(len(ids) for ids, _ in rows)
    return {"input_ids": torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])}


@pytest.mark.parametrize("side", ["right", "left"])  # bloomz-560m's own tokenizer pads on the left
def test_collate_pads_on_the_right_whatever_the_tokenizer_says(tokenizer, side, monkeypatch):
    monkeypatch.setattr(tokenizer, "padding_side", side)
    pairs = load_reviews(fixture_path("rotten_tomatoes_validation"))[:8]
    batch, expected = collate(pairs, tokenizer), _hand_padded(pairs, tokenizer)
    assert set(batch) == set(expected) == {"input_ids", "attention_mask", "labels"}
    for name, tensor in expected.items():
        assert batch[name].dtype == tensor.dtype and torch.equal(batch[name], tensor), name
    assert (batch["attention_mask"][:, 0] == 1).all() and (batch["attention_mask"] == 0).any()  # padded, on the right
    assert tokenizer.padding_side == side  # put back


def test_review_batches_cycle_through_every_review_each_epoch(tokenizer):
    pairs = load_reviews(fixture_path("rotten_tomatoes_train"))
    stream = review_batches(pairs, tokenizer, batch_size=8, seed=0)
    epoch = [tokenizer.batch_decode(next(stream)["input_ids"], skip_special_tokens=True) for _ in range(6)]
    seen = sorted(text for batch in epoch for text in batch)
    assert seen == sorted(tokenizer.decode(tokenizer(p + c)["input_ids"]) for p, c in pairs)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 and <= 48, got 49"):
        next(review_batches(pairs, tokenizer, batch_size=49))


def test_labels_start_with_different_tokens(tokenizer):
    firsts = {tokenizer(" " + label)["input_ids"][0] for label in LABELS}
    assert len(firsts) == len(LABELS)  # label_accuracy compares these two tokens' logits


CONFIG_CLASSES = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig,
                  "prefix_tuning": peft.PrefixTuningConfig, "lora": peft.LoraConfig, "ia3": peft.IA3Config,
                  "adalora": peft.AdaLoraConfig}  # what the test knows of the first six; a new method needs no entry


@pytest.mark.parametrize("method", list(METHODS))
def test_every_recipe_builds_a_causal_lm_peft_config(method):
    recipe = make_recipe(method, TINY, 50)
    assert isinstance(recipe.config, peft.PeftConfig) and recipe.config.task_type == "CAUSAL_LM"
    assert isinstance(recipe.learning_rate, float) and 0 < recipe.learning_rate < 1
    if method in CONFIG_CLASSES:
        assert type(recipe.config) is CONFIG_CLASSES[method]
    get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), recipe.config)  # it wraps the tiny BLOOM


def test_recipe_details_of_the_lora_family():
    """Each LoRA variant is LoRA's recipe with its one change (PiSSA also without dropout, as its paper)."""
    lora = lora_recipe(TINY).config
    changes = {"dora": ({"use_dora": True}, dora_recipe(TINY)), "rslora": ({"use_rslora": True, "r": 32}, rslora_recipe(TINY)),
               "pissa": ({"init_lora_weights": "pissa", "lora_dropout": 0.0}, pissa_recipe(TINY)),
               "loraplus": ({}, loraplus_recipe(TINY))}
    for method, (changed, recipe) in changes.items():
        assert type(recipe.config) is peft.LoraConfig, method
        for field in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "use_rslora", "init_lora_weights"):
            assert getattr(recipe.config, field) == changed.get(field, getattr(lora, field)), (method, field)
        assert recipe.loraplus_lr_ratio == (16 if method == "loraplus" else None)
    assert loraplus_recipe(TINY).learning_rate == lora_recipe(TINY).learning_rate / 2  # A at half LoRA's rate


def test_recipe_details_of_the_first_six():
    assert set(CONFIG_CLASSES) <= set(METHODS)
    prompt = prompt_tuning_recipe(TINY)
    assert prompt.config.prompt_tuning_init == peft.PromptTuningInit.TEXT and prompt.config.tokenizer_name_or_path == TINY
    assert prompt_tuning_recipe(TINY, init_text=None).config.prompt_tuning_init == peft.PromptTuningInit.RANDOM
    assert prefix_tuning_recipe().config.prefix_projection is False  # P-Tuning v2 by default
    adalora = adalora_recipe(TINY, total_step=50).config
    assert (adalora.total_step, adalora.tinit, adalora.tfinal) == (50, 5, 10)


BAD_RECIPES = [  # (what, how it is built, the error, what its message says)
    ("prompt_tuning: num_virtual_tokens=0", lambda: prompt_tuning_recipe(TINY, num_virtual_tokens=0), ValueError, "num_virtual_tokens must be an integer >= 1, got 0"),
    ("prompt_tuning: num_virtual_tokens=-3", lambda: prompt_tuning_recipe(TINY, num_virtual_tokens=-3), ValueError, "num_virtual_tokens must be an integer >= 1, got -3"),
    ("prompt_tuning: num_virtual_tokens=2.5", lambda: prompt_tuning_recipe(TINY, num_virtual_tokens=2.5), ValueError, "num_virtual_tokens must be an integer >= 1, got 2.5"),
    ("prompt_tuning: init_text=  ", lambda: prompt_tuning_recipe(TINY, init_text="  "), ValueError, "init_text='  '"),
    ("p_tuning: num_virtual_tokens=0", lambda: p_tuning_recipe(num_virtual_tokens=0), ValueError, "num_virtual_tokens must be an integer >= 1, got 0"),
    ("p_tuning: encoder_hidden_size=0", lambda: p_tuning_recipe(encoder_hidden_size=0), ValueError, "encoder_hidden_size must be an integer >= 1, got 0"),
    ("p_tuning: encoder_type=GRU", lambda: p_tuning_recipe(encoder_type="GRU"), ValueError, "encoder_type='GRU'; use 'MLP' or 'LSTM'"),
    ("prefix_tuning: num_virtual_tokens=0", lambda: prefix_tuning_recipe(num_virtual_tokens=0), ValueError, "num_virtual_tokens must be an integer >= 1, got 0"),
    ("prefix_tuning: prefix_projection=True, encoder_hidden_size=0", lambda: prefix_tuning_recipe(prefix_projection=True, encoder_hidden_size=0), ValueError, "encoder_hidden_size must be an integer >= 1, got 0"),
    ("lora: r=0", lambda: lora_recipe(TINY, r=0), ValueError, "lora_recipe\\(\\): r must be an integer >= 1, got 0"),
    ("lora: r=64", lambda: lora_recipe(TINY, r=64), ValueError, r"rank 64 is not below the smaller side \(64\)"),
    ("lora: lora_alpha=nan", lambda: lora_recipe(TINY, lora_alpha=float("nan")), ValueError, "lora_alpha must be a finite number > 0, got nan"),
    ("lora: lora_dropout=1.0", lambda: lora_recipe(TINY, lora_dropout=1.0), ValueError, "lora_dropout must be a finite number >= 0 and < 1, got 1.0"),
    ("lora: target_modules=[q_proj]", lambda: lora_recipe(TINY, target_modules=["q_proj"]), CourseError, r"\['q_proj'\] not found in BloomForCausalLM"),
    ("lora: target_modules=query_key_value", lambda: lora_recipe(TINY, target_modules="query_key_value"), ValueError, "give a list of module names"),
    ("lora: bigscience/bloom-7b1, target_modules=[v_proj]", lambda: lora_recipe("bigscience/bloom-7b1", target_modules=["v_proj"]), CourseError, r"\['v_proj'\] not found"),
    ("ia3: target_modules=[c_attn]", lambda: ia3_recipe(TINY, target_modules=["c_attn"]), CourseError, r"\['c_attn'\] not found"),
    ("ia3: feedforward_modules=[dense_h_to_4h]", lambda: ia3_recipe(TINY, feedforward_modules=["dense_h_to_4h"]), ValueError, r"\['dense_h_to_4h'\] are not in"),
    ("adalora: no total_step", lambda: adalora_recipe(TINY), ValueError, "total_step is missing"),
    ("adalora: total_step=0", lambda: adalora_recipe(TINY, total_step=0), ValueError, "adalora_recipe\\(\\): total_step must be an integer >= 1, got 0"),
    ("adalora: total_step=50, init_r=4, target_r=8", lambda: adalora_recipe(TINY, total_step=50, init_r=4, target_r=8), ValueError, "target_r=8 is above init_r=4"),
    ("adalora: total_step=50, target_r=0", lambda: adalora_recipe(TINY, total_step=50, target_r=0), ValueError, "target_r must be an integer >= 1, got 0"),
    ("adalora: total_step=10, tinit=5, tfinal=5", lambda: adalora_recipe(TINY, total_step=10, tinit=5, tfinal=5), ValueError, "leave no steps"),
    ("adalora: total_step=50, init_r=64", lambda: adalora_recipe(TINY, total_step=50, init_r=64), ValueError, "rank 64 is not below"),
    ("adalora: total_step=50, target_modules=[q_proj]", lambda: adalora_recipe(TINY, total_step=50, target_modules=["q_proj"]), CourseError, r"\['q_proj'\] not found"),
    ("dora: r=0", lambda: dora_recipe(TINY, r=0), ValueError, "dora_recipe\\(\\): r must be an integer >= 1, got 0"),
    ("dora: lora_dropout=-0.1", lambda: dora_recipe(TINY, lora_dropout=-0.1), ValueError, "lora_dropout must be a finite number >= 0 and < 1"),
    ("dora: target_modules=[q_proj]", lambda: dora_recipe(TINY, target_modules=["q_proj"]), CourseError, r"\['q_proj'\] not found"),
    ("rslora: r=64", lambda: rslora_recipe(TINY, r=64), ValueError, r"rank 64 is not below the smaller side \(64\)"),
    ("rslora: lora_alpha=0", lambda: rslora_recipe(TINY, lora_alpha=0), ValueError, "lora_alpha must be a finite number > 0, got 0"),
    ("pissa: r=0", lambda: pissa_recipe(TINY, r=0), ValueError, "pissa_recipe\\(\\): r must be an integer >= 1, got 0"),
    ("pissa: target_modules=[c_attn]", lambda: pissa_recipe(TINY, target_modules=["c_attn"]), CourseError, r"\['c_attn'\] not found"),
    ("loraplus: loraplus_lr_ratio=0.5", lambda: loraplus_recipe(TINY, loraplus_lr_ratio=0.5), ValueError, "loraplus_lr_ratio must be a finite number >= 1, got 0.5"),
    ("loraplus: r=64", lambda: loraplus_recipe(TINY, r=64), ValueError, "rank 64 is not below"),
]


@pytest.mark.parametrize("make, error, message", [case[1:] for case in BAD_RECIPES],
                         ids=[case[0] for case in BAD_RECIPES])
def test_recipes_refuse_arguments_that_cannot_work(make, error, message, monkeypatch):
    loads = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(error, match=message):
        make()
    assert loads == []  # refused before any model is loaded


def _expected_trainable(method: str, model_id: str) -> int | None:
    """The methods' parameter counts from their papers' formulas and the model's published shapes (not from peft);
    None for a method the test has no formula for."""
    config = real_config(model_id)
    h, layers = config.hidden_size, config.n_layer
    n, e = 20, 128  # the recipes' num_virtual_tokens and P-Tuning's encoder width
    return {
        "prompt_tuning": n * h,  # one vector per virtual token
        "p_tuning": n * h + (h * e + e) + (e * e + e) + (e * h + h),  # embeddings + a 3-layer MLP
        "prefix_tuning": n * layers * 2 * h,  # a key and a value per virtual token, per layer
        "prefix_projection": n * h + (h * 256 + 256) + (256 * layers * 2 * h + layers * 2 * h),  # embeddings + MLP
        "lora": layers * 8 * (h + 3 * h),  # A (8 x h) and B (3h x 8) on each fused query_key_value
        "ia3": layers * (3 * h + 4 * h),  # one scale per attention output and per feed-forward activation
        "adalora": layers * (12 * h + 3 * h * 12 + 12),  # Q (12 x h), P (3h x 12), lambda (12)
        "dora": layers * (8 * (h + 3 * h) + 3 * h),  # LoRA's A and B, and one magnitude per output row (3h)
        "rslora": layers * 32 * (h + 3 * h),  # LoRA at rank 32
        "pissa": layers * 8 * (h + 3 * h),  # LoRA's tensors, initialised from the SVD
        "loraplus": layers * 8 * (h + 3 * h),  # LoRA's tensors, another optimizer
    }.get(method)


@pytest.mark.parametrize("model_id", ["bigscience/bloomz-560m", "bigscience/bloom-7b1"])
@pytest.mark.parametrize("method", [*METHODS, "prefix_projection"])
def test_trainable_parameters_at_real_scale(method, model_id):
    """count_at_real_scale (what the notebooks show) against the formulas, and the frozen rest against the
    models' published sizes."""
    make = (lambda: prefix_tuning_recipe(prefix_projection=True).config) if method == "prefix_projection" else (
        lambda: make_recipe(method, TINY, 100).config)
    (row,) = count_at_real_scale(make, [model_id])
    expected = _expected_trainable(method, model_id)
    if expected is None:  # a method without a formula here: a small share trains, the whole base model is frozen
        assert 0 < row["trainable params"] < PUBLISHED_PARAMETERS[model_id] // 100
        assert row["all params"] - row["trainable params"] >= PUBLISHED_PARAMETERS[model_id]
        return
    assert row["trainable params"] == expected
    constants = real_config(model_id).n_layer if method == "adalora" else 0  # AdaLoRA's ranknum: one, frozen, per layer
    assert row["all params"] == PUBLISHED_PARAMETERS[model_id] + expected + constants


def test_adalora_rank_counters_are_not_trained():
    """peft 0.21.2 makes AdaLoRA's ranknum trainable when it moves the adapter to the base model's dtype;
    trainable_parameters freezes it again, so the optimizer never sees it."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.bfloat16),
                           adalora_recipe(TINY, total_step=10).config)
    counters = [p for n, p in model.named_parameters() if ".ranknum." in n]
    assert len(counters) == 2 and all(p.requires_grad for p in counters)  # the quirk this guards against
    params = trainable_parameters(model)
    assert not any(p.requires_grad for p in counters) and all(p is not c for p in params for c in counters)
    assert sum(p.numel() for p in params) == 2 * (12 * 64 + 192 * 12 + 12)


def _batches(tokenizer, size=8):
    pairs = load_reviews(fixture_path("rotten_tomatoes_train"))
    return (collate(pairs[i % 48:i % 48 + size], tokenizer) for i in itertools.count(0, size))


def test_lora_loss_falls_on_the_tiny_model(tokenizer):
    torch.manual_seed(0)
    recipe = lora_recipe(TINY)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), recipe.config)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    losses, seconds = train(model, _batches(tokenizer), steps=30, lr=recipe.learning_rate)
    assert len(losses) == len(seconds) == 30 and all(s > 0 for s in seconds)
    assert sum(losses[-5:]) / 5 < losses[0] - 2, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)  # base untouched
    assert not model.training  # left in eval mode
    with pytest.raises(ValueError, match="train\\(\\): steps must be an integer >= 1, got 0"):
        train(model, _batches(tokenizer), steps=0, lr=1e-3)
    with pytest.raises(ValueError, match="train\\(\\): lr must be a finite number > 0, got 0"):
        train(model, _batches(tokenizer), steps=1, lr=0)


@pytest.mark.parametrize("method", list(METHODS))
def test_training_lowers_the_held_out_loss(method, tokenizer):
    """Every method learns: 30 steps at its recipe's rate lower the held-out loss on the label words, and leave the
    base model's weights as they were."""
    steps, pairs = 30, load_reviews(fixture_path("rotten_tomatoes_validation"))
    recipe = make_recipe(method, TINY, steps)
    model = get_peft_model(load_base(TINY), recipe.config)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = held_out_loss(model, tokenizer, pairs)
    train(model, _batches(tokenizer), steps=steps, lr=recipe.learning_rate, after_step=after_step(model),
          loraplus_lr_ratio=recipe.loraplus_lr_ratio)
    after = held_out_loss(model, tokenizer, pairs)
    assert after < before - 1, (before, after)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_adalora_reallocates_every_step_after_backward(tokenizer):
    torch.manual_seed(0)
    steps = 20
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), adalora_recipe(TINY, total_step=steps).config)
    calls = []

    def allocate(step):
        grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
        calls.append((step, all(g is not None and g.abs().sum() > 0 for g in grads)))
        model.base_model.update_and_allocate(step)

    train(model, _batches(tokenizer), steps=steps, lr=1e-2, after_step=allocate)
    assert [step for step, _ in calls] == list(range(steps))
    assert all(had_grads for _, had_grads in calls), "update_and_allocate must see the gradients (before zero_grad)"
    pattern = model.peft_config["default"].rank_pattern
    assert sum(sum(keep) for keep in pattern.values()) == 4 * 2  # the budget: target_r x layers
    lora_e = torch.cat([p.detach().flatten() for n, p in model.named_parameters() if "lora_E" in n])
    assert (lora_e == 0).sum() == 2 * 12 - 8  # the pruned singular values are zero


def test_held_out_loss_is_the_task_loss_without_adalora_penalty(tokenizer):
    pairs = load_reviews(fixture_path("rotten_tomatoes_validation"))[:8]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), adalora_recipe(TINY, total_step=10).config)
    batch = collate(pairs, tokenizer)
    with torch.no_grad():
        task = model.base_model.model(**batch).loss.item()  # without AdaLoraModel's orthogonality penalty
        with_penalty = model(**batch).loss.item()
    assert held_out_loss(model, tokenizer, pairs) == pytest.approx(task, rel=1e-5)
    assert with_penalty > task + 0.1
    prompt_model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), p_tuning_recipe().config)
    with torch.no_grad():  # prompt-style methods: the virtual positions carry no label, so the loss is the same
        assert held_out_loss(prompt_model, tokenizer, pairs) == pytest.approx(prompt_model(**batch).loss.item(), rel=1e-5)


# peft checks AdaLoRA's rank_pattern keys (lambda parameter names) by LoRA's rules, against module names, and warns;
# AdaLoRA's loader uses them all the same (07_adalora.ipynb filters it by the same message, and says why)
@pytest.mark.filterwarnings("ignore:The following rank_pattern keys did not match any targeted module:RuntimeWarning")
@pytest.mark.parametrize("method", list(METHODS))
def test_save_and_reload_gives_the_same_logits(method, tokenizer, tmp_path):
    pairs = load_reviews(fixture_path("rotten_tomatoes_validation"))[:4]
    model = get_peft_model(load_base(TINY), make_recipe(method, TINY, 6).config)
    train(model, _batches(tokenizer), steps=6, lr=1e-2, after_step=after_step(model))
    reloaded, size = save_and_reload(model, TINY, tmp_path / method, collate(pairs, tokenizer))
    assert size == (tmp_path / method / "adapter_model.safetensors").stat().st_size > 0
    assert type(reloaded).__name__ == type(model).__name__
    # another base: other logits, or (for an adapter that rewrote its base, PiSSA) not the base it started from
    with pytest.raises(CourseError, match="gives other logits than the trained model|is not the base model this"):
        save_and_reload(model, tiny_checkpoint("bloom", seed=1), tmp_path / "other", collate(pairs, tokenizer))


def test_adalora_p_and_q_get_gradient_only_from_the_penalty_while_lambda_is_zero(tokenizer):
    """While every lambda is zero the task loss gives P (lora_B) and Q (lora_A) no gradient at all (they reach it only
    through P diag(lambda) Q); peft's loss adds the orthogonality penalty, which gives them one from the first step."""
    batch = collate(load_reviews(fixture_path("rotten_tomatoes_train"))[:8], tokenizer)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), adalora_recipe(TINY, total_step=10).config)

    def grads(loss):
        loss.backward()
        sums = {part: sum(float(p.grad.abs().sum()) for n, p in model.named_parameters() if f".lora_{part}." in n)
                for part in "ABE"}
        model.zero_grad(set_to_none=True)
        return sums

    assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters() if ".lora_E." in n)
    task = grads(model.base_model.model(**batch).loss)
    peft_loss = grads(model(**batch).loss)
    assert task["A"] == task["B"] == 0.0 and task["E"] > 0
    assert peft_loss["A"] > 0 and peft_loss["B"] > 0 and peft_loss["E"] == pytest.approx(task["E"], rel=1e-5)


def test_p_tunings_encoder_width_defaults_to_the_models_hidden_size():
    """peft's PromptEncoderConfig leaves encoder_hidden_size unset and fills in the model's hidden size; the course's
    128 is its own choice."""
    assert peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4).encoder_hidden_size is None
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY),
                           peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    hidden = model.config.hidden_size
    assert model.prompt_encoder["default"].mlp_head[0].out_features == hidden == 64
    assert p_tuning_recipe().config.encoder_hidden_size == 128


@pytest.mark.parametrize("method", ["p_tuning", "prefix_projection"])
def test_a_prompt_encoder_cannot_resume_from_the_adapter_file(method, tokenizer, tmp_path):
    """The adapter file holds the encoder's output only. peft refuses to reload it trainable; a trainable model that
    loads it anyway (as Trainer's resume_from_checkpoint does) gets, for P-Tuning, the output as its encoder's input
    under a fresh random MLP, without a warning, and for a reparameterised prefix a shape error. The encoder's own
    state_dict resumes it."""
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    recipe = p_tuning_recipe() if method == "p_tuning" else prefix_tuning_recipe(prefix_projection=True)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), recipe.config)
    train(model, _batches(tokenizer), steps=3, lr=1e-2)
    model.save_pretrained(tmp_path)
    tokens = torch.arange(model.peft_config["default"].num_virtual_tokens)[None]
    trained = model.prompt_encoder["default"](tokens).detach()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"] and torch.equal(saved["prompt_embeddings"], trained[0])
    with pytest.raises(ValueError, match="Cannot set a prompt learning adapter to trainable"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY), tmp_path, is_trainable=True)
    torch.manual_seed(1)
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), recipe.config)  # trainable, as a resume builds it
    if method == "p_tuning":
        set_peft_model_state_dict(fresh, saved)
        encoder = fresh.prompt_encoder["default"]
        assert torch.equal(encoder.embedding.weight.detach(), trained[0])  # the output, loaded as the encoder's input
        assert not torch.allclose(encoder(tokens).detach(), trained, atol=1e-3)  # ... under a random MLP
    else:
        with pytest.raises(RuntimeError, match="size mismatch"):
            set_peft_model_state_dict(fresh, saved)
    fresh.prompt_encoder.load_state_dict(model.prompt_encoder.state_dict())  # what resuming needs
    assert torch.equal(fresh.prompt_encoder["default"](tokens).detach(), trained)


def test_trainer_resumes_a_p_tuning_run_with_a_fresh_encoder(tmp_path):
    """transformers' Trainer checkpoints a peft model as its adapter file; resuming a P-Tuning run from one puts the
    saved output where the encoder's input goes, under the new model's random MLP: the prompt is not the trained one."""
    from transformers import Trainer, TrainingArguments

    ids = torch.randint(5, 200, (8, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]

    def p_tuning_model(seed):
        torch.manual_seed(seed)
        return get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), p_tuning_recipe().config)

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, save_steps=2,
                             learning_rate=1e-2, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = Trainer(model=p_tuning_model(0), args=args, train_dataset=data)
    trainer.train()
    tokens = torch.arange(20)[None]
    trained = trainer.model.prompt_encoder["default"](tokens).detach()
    resumed = Trainer(model=p_tuning_model(1), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))  # at max_steps already: loads, no step
    encoder = resumed.model.prompt_encoder["default"]
    assert torch.equal(encoder.embedding.weight.detach(), trained[0])
    assert not torch.allclose(encoder(tokens).detach(), trained, atol=1e-3)


def test_lora_scales_by_alpha_over_r_and_rslora_by_alpha_over_sqrt_r():
    """Hu et al.'s alpha / r, peft's default; rsLoRA's alpha / sqrt(r) with use_rslora=True."""
    for use_rslora, expected in ((False, 16 / 8), (True, 16 / 8**0.5)):
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query_key_value"], use_rslora=use_rslora)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), config)
        layer = model.base_model.model.transformer.h[0].self_attention.query_key_value
        assert layer.scaling["default"] == pytest.approx(expected)


# --- LoRA+ (a recipe's optimizer), PiSSA (an initialisation that rewrites the base), counts of such configs --------

def _lora(**kwargs):
    return peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["query_key_value"], **kwargs)


def test_a_loraplus_ratio_gives_b_its_own_rate(tokenizer):
    """make_optimizer (what train builds): one AdamW group without a ratio; with one, peft's LoRA+ groups, every
    lora_A at lr and every lora_B at lr x ratio, all with AdamW's default weight decay."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), _lora())
    plain = make_optimizer(model, 1e-3)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in plain.param_groups] == [(1e-3, 0.01, 4)]
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [(g["lr"], g["weight_decay"], {names[id(p)].split(".")[-3] for p in g["params"]})
               for g in make_optimizer(model, 1e-3, 16).param_groups if g["params"]]
    assert grouped == [(1e-3, 0.01, {"lora_A"}), (pytest.approx(16e-3), 0.01, {"lora_B"})]
    with pytest.raises(ValueError, match=r"train\(\): loraplus_lr_ratio must be a finite number >= 1"):
        train(model, _batches(tokenizer), steps=1, lr=1e-3, loraplus_lr_ratio=0.5)


def test_train_uses_the_loraplus_rates(tokenizer):
    """Adam's first step moves every element with a gradient by its group's rate: B (from zero) by lr x ratio."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), _lora(lora_dropout=0.0))
    train(model, _batches(tokenizer), steps=1, lr=1e-3, loraplus_lr_ratio=16)
    moved = max(p.detach().abs().max().item() for n, p in model.named_parameters() if "lora_B" in n)
    assert moved == pytest.approx(16e-3, rel=1e-3)


def test_a_pissa_adapter_is_saved_as_lora_for_the_untouched_base(tokenizer, tmp_path):
    """save_and_reload saves an adapter whose initialisation rewrote the base weights as the rank-2r LoRA adapter it
    equals on the original base (peft's path_initial_model_for_weight_conversion), which loads without an SVD."""
    assert rewrites_base(_lora(init_lora_weights="pissa")) and rewrites_base(_lora(init_lora_weights="olora"))
    assert not rewrites_base(_lora()) and not rewrites_base(_lora(init_lora_weights="gaussian"))
    assert not rewrites_base(peft.IA3Config(task_type="CAUSAL_LM"))
    pairs = load_reviews(fixture_path("rotten_tomatoes_validation"))[:4]
    original = load_base(TINY).transformer.h[0].self_attention.query_key_value.weight.detach().clone()
    model = get_peft_model(load_base(TINY), _lora(init_lora_weights="pissa"))
    residual = model.base_model.model.transformer.h[0].self_attention.query_key_value.base_layer.weight
    assert not torch.allclose(residual, original, atol=1e-3)  # PiSSA rewrote the base weight
    train(model, _batches(tokenizer), steps=4, lr=3e-3)
    reloaded, size = save_and_reload(model, TINY, tmp_path / "pissa", collate(pairs, tokenizer))
    saved = json.loads((tmp_path / "pissa" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (16, 32, True)
    assert torch.equal(reloaded.base_model.model.transformer.h[0].self_attention.query_key_value.base_layer.weight,
                       original)  # loaded onto the untouched base
    assert size == (tmp_path / "pissa" / "adapter_model.safetensors").stat().st_size
    assert (tmp_path / "pissa" / "initial" / "adapter_model.safetensors").is_file()  # the adapter before training
    with pytest.raises(CourseError, match="is not the base model this adapter was initialised from"):
        save_and_reload(model, tiny_checkpoint("bloom", seed=1), tmp_path / "other", collate(pairs, tokenizer))


def test_a_data_dependent_initialisation_is_counted_as_lora():
    """PiSSA's SVD cannot run on the meta device; it trains LoRA's tensors, so it is counted as LoRA."""
    assert count_at_real_scale(lambda: _lora(init_lora_weights="pissa")) == count_at_real_scale(_lora)
