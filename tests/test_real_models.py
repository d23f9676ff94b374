"""The real models' configs the course relies on, checked against their published values (facts, not downloads)."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model

from utils.errors import CourseError
from utils.real_models import PUBLISHED_PARAMETERS, REAL_CONFIGS, meta_model, real_config

# Facts from each model's config.json on the Hub: the hidden sizes and depths the notebooks' numbers depend on.
PUBLISHED = {
    "EleutherAI/gpt-j-6b": {"n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64, "vocab_size": 50400},
    "bigscience/bloom-7b1": {"hidden_size": 4096, "n_layer": 30, "n_head": 32, "vocab_size": 250880},
    "bigscience/bloomz-560m": {"hidden_size": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 250880},
    "openai-community/gpt2": {"n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "openai-community/gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16, "vocab_size": 50257},
}
# Module names LoRA targets in the course, as the real checkpoints name them.
TARGETS = {
    "EleutherAI/gpt-j-6b": ["q_proj", "v_proj"],
    "bigscience/bloom-7b1": ["query_key_value"],
    "bigscience/bloomz-560m": ["query_key_value"],
    "openai-community/gpt2-medium": ["c_attn"],
}


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_config_matches_the_published_values(model_id: str) -> None:
    config = real_config(model_id)
    for key, value in PUBLISHED[model_id].items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize("model_id", sorted(PUBLISHED_PARAMETERS))
def test_meta_model_has_the_published_parameter_count(model_id: str) -> None:
    model = meta_model(model_id)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[model_id]
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("model_id", sorted(TARGETS))
def test_lora_targets_exist_in_the_real_model(model_id: str) -> None:
    leaves = {name.rsplit(".", 1)[-1] for name, _ in meta_model(model_id).named_modules()}
    assert set(TARGETS[model_id]) <= leaves


def test_gptj_lora_trainable_parameters_at_real_scale() -> None:
    model = get_peft_model(meta_model("EleutherAI/gpt-j-6b"), LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    assert (trainable, total) == (7_340_032, 6_058_222_816)
    assert round(100 * trainable / total, 4) == 0.1212


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(CourseError, match="no published config"):
        real_config("meta-llama/Llama-9-900b")


def test_every_recorded_model_builds() -> None:
    assert set(PUBLISHED_PARAMETERS) <= set(REAL_CONFIGS)
