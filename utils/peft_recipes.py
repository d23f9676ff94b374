"""Each PEFT method's recommended settings for BLOOM, in one place: its peft config and its learning rate.

Each `*_recipe` function is written out, and explained, in that method's notebook in 01-peft-setup/ (02 to 07);
the comparison notebook (08) and the tests import them from here, and tests/test_notebooks.py checks the two
copies are identical. The argument checks below run before any model is loaded, so a bad value stops at once
with a message that names it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import peft


class Recipe(NamedTuple):
    """A method's peft config and the learning rate it trains with."""

    config: peft.PeftConfig
    learning_rate: float


def check_count(recipe: str, name: str, value) -> None:
    """A ValueError unless `value` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{recipe}: {name}={value!r}; use a whole number >= 1")


def check_positive(recipe: str, name: str, value) -> None:
    """A ValueError unless `value` is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{recipe}: {name}={value!r}; use a finite number > 0")


def check_fraction(recipe: str, name: str, value) -> None:
    """A ValueError unless 0 <= `value` < 1 (a dropout probability)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"{recipe}: {name}={value!r}; use a probability from 0 to below 1")


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
    from utils.quantization import check_target_modules

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


def prompt_tuning_recipe(model_id, num_virtual_tokens=20,
                         init_text="Classify the sentiment of this movie review as positive or negative."):
    """Prompt Tuning: `num_virtual_tokens` trainable vectors prepended to the input embeddings, started from the
    embeddings of `init_text` (read with `model_id`'s tokenizer), or at random when it is None."""
    check_count("prompt_tuning_recipe", "num_virtual_tokens", num_virtual_tokens)
    if init_text is None:
        init = {"prompt_tuning_init": peft.PromptTuningInit.RANDOM}
    elif isinstance(init_text, str) and init_text.strip():
        init = {"prompt_tuning_init": peft.PromptTuningInit.TEXT, "prompt_tuning_init_text": init_text,
                "tokenizer_name_or_path": model_id}
    else:
        raise ValueError(f"prompt_tuning_recipe: init_text={init_text!r}; give a sentence, or None for random")
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, **init)
    return Recipe(config, learning_rate=3e-2)  # free vectors below frozen layers: a rate ~10x LoRA's


def p_tuning_recipe(num_virtual_tokens=20, encoder_hidden_size=128, encoder_type="MLP"):
    """P-Tuning: the virtual tokens come out of a small prompt encoder (an MLP, or an LSTM then an MLP) that is
    trained instead of the vectors themselves."""
    check_count("p_tuning_recipe", "num_virtual_tokens", num_virtual_tokens)
    check_count("p_tuning_recipe", "encoder_hidden_size", encoder_hidden_size)
    if encoder_type not in ("MLP", "LSTM"):
        raise ValueError(f"p_tuning_recipe: encoder_type={encoder_type!r}; use 'MLP' or 'LSTM'")
    config = peft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                                      encoder_hidden_size=encoder_hidden_size,
                                      encoder_reparameterization_type=encoder_type)
    return Recipe(config, learning_rate=3e-3)  # ordinary layers, each moving every virtual token


def prefix_tuning_recipe(num_virtual_tokens=20, prefix_projection=False, encoder_hidden_size=256):
    """Prefix Tuning: a trained key and value for each virtual token in every layer, fed through the KV cache.
    prefix_projection=False trains them directly (P-Tuning v2's deep prompts); True makes an MLP of width
    `encoder_hidden_size` produce them from smaller embeddings (Li and Liang's reparameterisation)."""
    check_count("prefix_tuning_recipe", "num_virtual_tokens", num_virtual_tokens)
    if prefix_projection:
        check_count("prefix_tuning_recipe", "encoder_hidden_size", encoder_hidden_size)
    config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                                     prefix_projection=bool(prefix_projection), encoder_hidden_size=encoder_hidden_size)
    return Recipe(config, learning_rate=3e-2 if not prefix_projection else 1e-2)  # free vectors vs an MLP's weights


def lora_recipe(model_id, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=("query_key_value",)):
    """LoRA: a rank-`r` update B @ A, scaled by lora_alpha / r, added to each target layer's frozen weight."""
    check_count("lora_recipe", "r", r)
    check_positive("lora_recipe", "lora_alpha", lora_alpha)
    check_fraction("lora_recipe", "lora_dropout", lora_dropout)
    check_targets("lora_recipe", model_id, target_modules, rank=r)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                             target_modules=list(target_modules))
    return Recipe(config, learning_rate=3e-3)  # B starts at zero: the update grows from nothing


def ia3_recipe(model_id, target_modules=("query_key_value", "dense_4h_to_h"), feedforward_modules=("dense_4h_to_h",)):
    """IA3: a learned vector per target layer that rescales its output (attention) or, for the feed-forward
    modules, its input (the activations after the GELU); initialised to ones, so training starts from the base."""
    check_targets("ia3_recipe", model_id, target_modules)
    stray = [name for name in feedforward_modules if name not in target_modules]
    if stray:
        raise ValueError(f"ia3_recipe: feedforward_modules {stray} are not in target_modules {list(target_modules)}; "
                         f"every feed-forward module must also be a target")
    config = peft.IA3Config(task_type="CAUSAL_LM", target_modules=list(target_modules),
                            feedforward_modules=list(feedforward_modules))
    return Recipe(config, learning_rate=1e-2)  # multipliers around 1: about a 1% change per step


def adalora_recipe(model_id, total_step=None, init_r=12, target_r=4, lora_alpha=16, tinit=None, tfinal=None,
                   deltaT=1, target_modules=("query_key_value",)):
    """AdaLoRA: LoRA in SVD form (P diag(lambda) Q) whose total rank shrinks from init_r to target_r per layer
    on average over `total_step` optimizer steps: fixed for `tinit` steps, pruned every `deltaT` steps by
    importance, then fixed for the last `tfinal` (defaults: a tenth and a fifth of total_step)."""
    if total_step is None:
        raise ValueError("adalora_recipe: total_step is missing; give the number of optimizer steps you will "
                         "train (AdaLoRA schedules its rank budget over them)")
    for name, value in {"total_step": total_step, "init_r": init_r, "target_r": target_r, "deltaT": deltaT}.items():
        check_count("adalora_recipe", name, value)
    if target_r > init_r:
        raise ValueError(f"adalora_recipe: target_r={target_r} is above init_r={init_r}; the budget only shrinks")
    check_positive("adalora_recipe", "lora_alpha", lora_alpha)
    tinit = total_step // 10 if tinit is None else tinit
    tfinal = total_step // 5 if tfinal is None else tfinal
    if tinit < 0 or tfinal < 0 or tinit + tfinal >= total_step:
        raise ValueError(f"adalora_recipe: tinit={tinit} + tfinal={tfinal} leave no steps of total_step="
                         f"{total_step} to re-allocate ranks in; lower them or train longer")
    check_targets("adalora_recipe", model_id, target_modules, rank=init_r)
    config = peft.AdaLoraConfig(task_type="CAUSAL_LM", init_r=init_r, target_r=target_r, lora_alpha=lora_alpha,
                                target_modules=list(target_modules), total_step=total_step, tinit=tinit,
                                tfinal=tfinal, deltaT=deltaT)
    return Recipe(config, learning_rate=1e-2)  # lambda starts at 0, so P and Q get no gradient at first


#: The six methods in the chapter's teaching order, and the notebook that teaches each.
NOTEBOOKS = {
    "prompt_tuning": "02_prompt_tuning.ipynb",
    "p_tuning": "03_p_tuning.ipynb",
    "prefix_tuning": "04_prefix_tuning.ipynb",
    "lora": "05_lora.ipynb",
    "ia3": "06_ia3.ipynb",
    "adalora": "07_adalora.ipynb",
}
