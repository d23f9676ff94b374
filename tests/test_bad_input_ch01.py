"""Chapter 01's bad input, class by class (issue 23): a string where a list of module names is meant, a string where
a flag is meant, a mistyped Hub id while offline, and a reviews file in another format than the loader reads. Each
case asserts the course's error (CourseArgumentError or CourseError), raised before any model is loaded, and that its
message names the argument or file and what to do."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from utils.ch01_methods import METHODS, make_recipe
from utils.ch01_peft import load_base, load_reviews
from utils.checks import check_target_modules
from utils.errors import CourseArgumentError, CourseError
from utils.lessons import peft_recipes
from utils.smoke import tiny_checkpoint

BLOOM = tiny_checkpoint("bloom")


@pytest.fixture(scope="module")
def skeleton():
    """The tiny BLOOM's modules, on the meta device (no weights read)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(BLOOM))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if anything loads model weights: every check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad argument was refused")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


# --- a string where a list of names is meant ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["query_key_value", "dense", "query_key_value,dense", ""])
def test_check_target_modules_refuses_a_string(skeleton, value):
    with pytest.raises(CourseArgumentError, match=r"target_modules must be a non-empty list of names.*pass a list"):
        check_target_modules(skeleton, value)


@pytest.mark.parametrize(("recipe", "arguments", "name"), [
    (peft_recipes.lora_recipe, {"target_modules": "query_key_value"}, "target_modules"),
    (peft_recipes.dora_recipe, {"target_modules": "query_key_value"}, "target_modules"),
    (peft_recipes.rslora_recipe, {"target_modules": "dense"}, "target_modules"),
    (peft_recipes.pissa_recipe, {"target_modules": "query_key_value"}, "target_modules"),
    (peft_recipes.loraplus_recipe, {"target_modules": "query_key_value"}, "target_modules"),
    (peft_recipes.adalora_recipe, {"target_modules": "query_key_value", "total_step": 20}, "target_modules"),
    (peft_recipes.ia3_recipe, {"target_modules": "query_key_value"}, "target_modules"),
    (peft_recipes.ia3_recipe, {"feedforward_modules": "dense_4h_to_h"}, "feedforward_modules"),
    (peft_recipes.ia3_recipe, {"target_modules": ["query_key_value", "dense_4h_to_h"],
                               "feedforward_modules": "dense_4h_to_h"}, "feedforward_modules"),
    (peft_recipes.lora_recipe, {"target_modules": ["query_key_value", ""]}, "target_modules"),
    (peft_recipes.lora_recipe, {"target_modules": [1, 2]}, "target_modules"),
])
def test_recipes_refuse_a_string_for_a_list(no_model_loads, recipe, arguments, name):
    with pytest.raises(CourseArgumentError, match=rf"{recipe.__name__}\(\): {name} must be a non-empty list of names"
                                                  r".*give a list of module names"):
        recipe(BLOOM, **arguments)


def test_every_list_argument_of_the_registry_is_checked(no_model_loads):
    """Every recipe in the registry that takes a `*_modules` argument refuses a bare string for it."""
    import inspect

    checked = 0
    for method in METHODS.values():
        parameters = inspect.signature(method.recipe).parameters
        for name in (n for n in parameters if n.endswith("_modules")):
            given = {"model_id": BLOOM, "total_step": 20, name: "query_key_value"}
            with pytest.raises(CourseArgumentError, match=rf"{name} must be a non-empty list"):
                method.recipe(**{k: v for k, v in given.items() if k in parameters})
            checked += 1
    assert checked >= 8  # LoRA, IA3 (two), AdaLoRA, DoRA, rsLoRA, PiSSA, LoRA+


# --- a string (or another value) where a flag is meant ------------------------------------------------------------

@pytest.mark.parametrize("value", ["False", "True", "false", "0", 0, 1, None, "no"])
def test_prefix_projection_must_be_a_bool(value):
    with pytest.raises(CourseArgumentError, match=r"prefix_tuning_recipe\(\): prefix_projection must be True or False"):
        peft_recipes.prefix_tuning_recipe(prefix_projection=value)


@pytest.mark.parametrize("value", [False, True])
def test_prefix_projection_takes_the_bool(value):
    recipe = peft_recipes.prefix_tuning_recipe(prefix_projection=value)
    assert recipe.config.prefix_projection is value
    assert recipe.learning_rate == (1e-2 if value else 3e-2)


# --- numbers that arrive as strings, in the recipes' other arguments ---------------------------------------------

@pytest.mark.parametrize(("arguments", "name"), [
    ({"r": "8"}, "r"), ({"r": 8.0}, "r"), ({"r": True}, "r"), ({"lora_alpha": "16"}, "lora_alpha"),
    ({"lora_dropout": "0.05"}, "lora_dropout"), ({"lora_dropout": 1.0}, "lora_dropout"),
])
def test_lora_recipe_numbers_are_not_strings(no_model_loads, arguments, name):
    with pytest.raises(CourseArgumentError, match=rf"lora_recipe\(\): {name} must be"):
        peft_recipes.lora_recipe(BLOOM, **arguments)


# --- a mistyped Hub id, offline ----------------------------------------------------------------------------------

TYPOS = ["bigscience/bloomz-560mm", "bigsience/bloomz-560m", "bloomz-560m", "EleutherAI/gpt-j-6B-typo"]


@pytest.mark.parametrize("model_id", TYPOS)
@pytest.mark.parametrize("key", ["lora", "ia3", "adalora", "dora", "pissa"])
def test_a_mistyped_hub_id_gets_the_course_message(key, model_id):
    """Offline (the tests set HF_HUB_OFFLINE=1), the recipe's target check reads the config: the course's message."""
    with pytest.raises(CourseError, match=rf"model {re.escape(repr(model_id))} is not in the local Hugging Face cache "
                                          r"and HF_HUB_OFFLINE=1 forbids downloading it: run with COURSE_SMOKE=1"):
        make_recipe(key, model_id, total_steps=20)


@pytest.mark.parametrize("model_id", [*TYPOS, "bigscience//bloomz-560m"])
def test_load_base_with_a_mistyped_hub_id(model_id):
    with pytest.raises(CourseError, match=rf"model {re.escape(repr(model_id))} is (not in the local Hugging Face cache|"
                                          r"neither a local folder nor a Hugging Face Hub id)"):
        load_base(model_id, device="cpu")


# --- a reviews file in another format ----------------------------------------------------------------------------

REVIEWS = [{"text": "A fine film.", "label": 1}, {"text": "Dull.", "label": 0}, {"text": "Moving.", "label": 1}]


@pytest.mark.parametrize("content", [
    json.dumps(REVIEWS),  # a JSON list of records
    json.dumps(REVIEWS, indent=2),  # pretty-printed
    "\n".join(json.dumps(r) for r in REVIEWS) + "\n",  # JSON lines saved under .json
])
def test_a_json_reviews_file_is_read(tmp_path, content):
    path = tmp_path / "reviews.json"
    path.write_text(content)
    pairs = load_reviews(path, seed=0)
    assert sorted(pairs) == sorted([(f"Review: {r['text']}\nSentiment:", " positive" if r["label"] else " negative")
                                    for r in REVIEWS])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("reviews.csv", "text,label\nFine.,1\n", r"reviews.csv: reviews are read from a .jsonl file .* or a .json list"),
    ("reviews.txt", json.dumps(REVIEWS[0]) + "\n", r"reviews.txt: reviews are read from a .jsonl file"),
    ("reviews.JSONL", json.dumps(REVIEWS[0]) + "\n", r"reviews.JSONL: reviews are read from a .jsonl file"),
    ("reviews.json", json.dumps({"train": REVIEWS}), r"reviews.json: expected a JSON list of records"),
    ("reviews.json", '[{"text": "Fine.", "label": 1},', r"reviews.json, line 1 column \d+: not valid JSON"),
    ("reviews.json", json.dumps([{"text": "Fine.", "label": "1"}]), r"reviews.json, record 0: field 'label' is '1'"),
])
def test_a_reviews_file_of_another_format_is_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CourseError, match=message):
        load_reviews(path)


def test_a_missing_json_reviews_file_is_named(tmp_path):
    with pytest.raises(CourseError, match=r"missing.json: no such file"):
        load_reviews(tmp_path / "missing.json")
