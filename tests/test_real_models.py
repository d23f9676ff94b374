"""The real models' configs the course relies on, checked against their published values (facts, not downloads)."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model

from utils.errors import CourseError
from utils.real_models import REAL_CONFIGS, meta_model, real_config

#: Published parameter counts (the models' cards and papers), which utils.real_models' configs must reproduce.
PUBLISHED_PARAMETERS: dict[str, int] = {
    "EleutherAI/gpt-j-6b": 6_050_882_784,
    "bigscience/bloom-7b1": 7_069_016_064,
    "bigscience/bloomz-560m": 559_214_592,
    "openai-community/gpt2": 124_439_808,
    "openai-community/gpt2-medium": 354_823_168,
    "openai-community/gpt2-large": 774_030_080,
    "openai-community/gpt2-xl": 1_557_611_200,
}

# transformers documents its default GPT2Config and GPTJConfig as the configurations of openai-community/gpt2 and
# EleutherAI/gpt-j-6B (`@auto_docstring(checkpoint=...)` in their configuration modules): a source of the published
# values independent of REAL_CONFIGS. The other models' shapes are pinned by their published parameter counts below.
DOCUMENTED_DEFAULTS = {"openai-community/gpt2": "GPT2Config", "EleutherAI/gpt-j-6b": "GPTJConfig"}

# Module names LoRA targets in the course, as the real checkpoints name them.
TARGETS = {
    "EleutherAI/gpt-j-6b": ["q_proj", "v_proj"],
    "bigscience/bloom-7b1": ["query_key_value"],
    "bigscience/bloomz-560m": ["query_key_value"],
    "openai-community/gpt2-medium": ["c_attn"],
}


@pytest.mark.parametrize("model_id", sorted(DOCUMENTED_DEFAULTS))
def test_config_matches_the_documented_published_values(model_id: str) -> None:
    import transformers

    ours, published = real_config(model_id).to_dict(), getattr(transformers, DOCUMENTED_DEFAULTS[model_id])().to_dict()
    for key in REAL_CONFIGS[model_id][1]:
        assert ours[key] == published[key], key


@pytest.mark.parametrize("model_id", sorted(REAL_CONFIGS))
def test_every_recorded_model_builds_with_its_published_parameter_count(model_id: str) -> None:
    assert model_id in PUBLISHED_PARAMETERS, f"record the published parameter count of {model_id}"
    model = meta_model(model_id)
    assert type(model).config_class.__name__ == REAL_CONFIGS[model_id][0]
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[model_id]
    assert next(model.parameters()).device.type == "meta"


@pytest.mark.parametrize("model_id", sorted(TARGETS))
def test_lora_targets_exist_in_the_real_model(model_id: str) -> None:
    leaves = {name.rsplit(".", 1)[-1] for name, _ in meta_model(model_id).named_modules()}
    assert set(TARGETS[model_id]) <= leaves


def test_gptj_lora_trainable_parameters_at_real_scale() -> None:
    """peft's count equals r (d + k) summed over the model's own q_proj and v_proj layers, at GPT-J 6B's real shapes."""
    base = meta_model("EleutherAI/gpt-j-6b")
    by_shapes = sum(16 * (m.in_features + m.out_features) for name, m in base.named_modules()
                    if name.rsplit(".", 1)[-1] in ("q_proj", "v_proj"))
    frozen = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == by_shapes == 7_340_032  # the figure chapter 02 prints (COURSE.md)
    assert total == frozen + trainable == 6_058_222_816
    assert round(100 * trainable / total, 4) == 0.1212


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(CourseError, match="no published config"):
        real_config("meta-llama/Llama-9-900b")
