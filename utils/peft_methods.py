"""Chapter 01's plumbing for the six methods' recipes: the `Recipe` a recipe returns, the check that a model has the
target modules (on the meta device: nothing is loaded), and which notebook teaches which method.

The recipes themselves are written in the methods' notebooks (02 to 07) and exported by `make sync` to
utils/peft_recipes.py, which the comparison notebook (08) and the tests import.
"""

from __future__ import annotations

from typing import NamedTuple

import peft


class Recipe(NamedTuple):
    """A method's peft config and the learning rate it trains with."""

    config: peft.PeftConfig
    learning_rate: float


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


#: The six methods in the chapter's teaching order, and the notebook that teaches each.
NOTEBOOKS = {
    "prompt_tuning": "02_prompt_tuning.ipynb",
    "p_tuning": "03_p_tuning.ipynb",
    "prefix_tuning": "04_prefix_tuning.ipynb",
    "lora": "05_lora.ipynb",
    "ia3": "06_ia3.ipynb",
    "adalora": "07_adalora.ipynb",
}
