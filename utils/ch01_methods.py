"""Chapter 01's methods, registered once, as peft registers its own: the comparison notebook, the tests, the times
table and the READMEs' method tables (`make sync`) all read METHODS. A new method is its notebook, whose
`#| export peft_recipes` cell defines its recipe, and one entry here (several methods may share a notebook, in a row)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from utils.ch01_peft import Recipe
from utils.errors import CourseArgumentError
from utils.lessons import peft_recipes


@dataclass(frozen=True)
class Paper:
    """The paper a method comes from."""

    authors: str
    year: int
    title: str
    arxiv: str  # the arXiv id, e.g. "2106.09685"

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class Method:
    """One chapter 01 method: its key, display name, notebook (in 01-peft-setup/), recipe (exported from that
    notebook), paper, and what it trains (one line)."""

    key: str
    name: str
    notebook: str
    recipe: Callable[..., Recipe]
    paper: Paper
    trains: str


#: The chapter's last notebook, which trains every method below side by side (the times table and the tests read this
#: name). A new method's notebook is numbered before it, in teaching order, so adding one renames it: `git mv`, this
#: line, and the chapter README's file table (tests/test_ch01_registry.py checks the order).
COMPARISON = "10_peft_methods_compared.ipynb"

#: The chapter's methods, in teaching order.
METHODS: dict[str, Method] = {method.key: method for method in (
    Method("prompt_tuning", "Prompt Tuning", "02_prompt_tuning.ipynb", peft_recipes.prompt_tuning_recipe,
           Paper("Lester, Al-Rfou and Constant", 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning",
                 "2104.08691"),
           "trained vectors in front of the input embeddings"),
    Method("p_tuning", "P-Tuning", "03_p_tuning.ipynb", peft_recipes.p_tuning_recipe,
           Paper("Liu et al.", 2021, "GPT Understands, Too", "2103.10385"),
           "virtual tokens computed by a small prompt encoder (MLP or LSTM)"),
    Method("prefix_tuning", "Prefix Tuning (P-Tuning v2)", "04_prefix_tuning.ipynb", peft_recipes.prefix_tuning_recipe,
           Paper("Li and Liang", 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", "2101.00190"),
           "trained keys and values in every layer, through the KV cache"),
    Method("lora", "LoRA", "05_lora.ipynb", peft_recipes.lora_recipe,
           Paper("Hu et al.", 2022, "LoRA: Low-Rank Adaptation of Large Language Models", "2106.09685"),
           "a low-rank update B A added to frozen weights"),
    Method("ia3", "IA3", "06_ia3.ipynb", peft_recipes.ia3_recipe,
           Paper("Liu et al.", 2022,
                 "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", "2205.05638"),
           "learned vectors rescaling keys and values (on BLOOM, all of query_key_value's output) "
           "and the feed-forward's inner activations"),
    Method("adalora", "AdaLoRA", "07_adalora.ipynb", peft_recipes.adalora_recipe,
           Paper("Zhang et al.", 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
                 "2303.10512"),
           "LoRA in SVD form whose rank budget moves between layers during training"),
    Method("dora", "DoRA", "08_dora.ipynb", peft_recipes.dora_recipe,
           Paper("Liu et al.", 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", "2402.09353"),
           "LoRA's update on each weight's direction, and a trained magnitude for each output row"),
    Method("rslora", "rsLoRA", "09_lora_variants.ipynb", peft_recipes.rslora_recipe,
           Paper("Kalajdzievski", 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", "2312.03732"),
           "LoRA at rank 32, its update scaled by alpha / sqrt(r) instead of alpha / r"),
    Method("pissa", "PiSSA", "09_lora_variants.ipynb", peft_recipes.pissa_recipe,
           Paper("Meng, Wang and Zhang", 2024,
                 "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large Language Models", "2404.02948"),
           "LoRA whose A and B start as the weight's principal singular vectors, the frozen weight their residual"),
    Method("loraplus", "LoRA+", "09_lora_variants.ipynb", peft_recipes.loraplus_recipe,
           Paper("Hayou, Ghosh and Yu", 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", "2402.12354"),
           "LoRA with B trained at 16 times A's learning rate"),
)}


def make_recipe(key: str, model_id: str, total_steps: int) -> Recipe:
    """The method's recipe for `model_id` and a run of `total_steps` optimizer steps, with its other settings at their
    defaults: `model_id` and `total_step` are passed only to a recipe that takes them."""
    if key not in METHODS:
        raise CourseArgumentError(f"make_recipe(): key={key!r} is not a chapter 01 method; use one of {list(METHODS)}")
    recipe = METHODS[key].recipe
    given = {"model_id": model_id, "total_step": total_steps}
    return recipe(**{name: given[name] for name in inspect.signature(recipe).parameters if name in given})
