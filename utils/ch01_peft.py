"""Chapter 01's plumbing, the same for every PEFT method: the `Recipe` a recipe returns and its checks; the reviews,
read and checked; the base model; saving an adapter (PiSSA's converted). The batching, the loop, the measures,
reloading and counting at real scale are taught in 01_peft_overview.ipynb (utils/lessons/peft_task.py); each method
is written out in its notebook and registered in utils/ch01_methods.py (which imports this module, never the other
way round)."""

from __future__ import annotations

import copy
import random
import re
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import peft
import torch
from transformers import AutoConfig, AutoModelForCausalLM, set_seed

from utils.checks import (
    check_field,
    check_flag,
    check_int,
    check_names,
    check_number,
    check_target_modules,
    read_records,
)
from utils.errors import CourseArgumentError, CourseError
from utils.hub import hub_errors
from utils.machine import pick_device
from utils.real_models import REAL_CONFIGS, meta_model


class Recipe(NamedTuple):
    """A method's peft config and the learning rate it trains with; `loraplus_lr_ratio` (LoRA+) sets the rate of every
    `lora_B` to that multiple of `learning_rate` (`train` then builds peft's `create_loraplus_optimizer`)."""

    config: peft.PeftConfig
    learning_rate: float
    loraplus_lr_ratio: float | None = None


def check_targets(recipe: str, model_id: str, target_modules, rank: int | None = None) -> None:
    """A CourseError naming any of `target_modules` the model lacks, or a `rank` not below the smaller side of a
    targeted layer. Reads the model's config only: its skeleton is built on the meta device."""
    if model_id in REAL_CONFIGS:  # the published config: no network
        skeleton = meta_model(model_id)
    else:
        with hub_errors(model_id):  # a mistyped id, offline: the course's Hub message, not transformers' OSError
            config = AutoConfig.from_pretrained(model_id)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    check_target_modules(skeleton, list(target_modules))
    if rank is None:
        return
    for name, module in skeleton.named_modules():
        if name.rsplit(".", 1)[-1] in target_modules and hasattr(module, "in_features"):
            side = min(module.in_features, module.out_features)
            if rank >= side:
                raise CourseArgumentError(f"{recipe}: rank {rank} is not below the smaller side ({side}) of {name} "
                                          f"[{module.out_features} x {module.in_features}]: the update would "
                                          f"not be low-rank; use a rank < {side}")



#: How `check_recipe` checks a recipe argument, by its name (one place for every recipe's checks).
COUNTS = ("r", "init_r", "target_r", "num_virtual_tokens", "encoder_hidden_size", "total_step", "deltaT")
FLAGS = ("prefix_projection",)


def check_recipe(model_id: str | None = None, **args) -> None:
    """A recipe's one check call, before any model loads: counts are integers >= 1, lora_alpha > 0, lora_dropout in
    [0, 1), loraplus_lr_ratio >= 1, `*_modules` lists of names (a bare string is refused, not read as its letters),
    flags True or False (the string "False" is refused); then `target_modules` (and the rank `r` or `init_r`) against
    `model_id`'s config. A CourseArgumentError names the recipe and the argument."""
    recipe = sys._getframe(1).f_code.co_name
    for name, value in args.items():
        if name in COUNTS:
            check_int(name, value, minimum=1)
        elif name == "lora_alpha":
            check_number(name, value, above=0)
        elif name == "lora_dropout":
            check_number(name, value, minimum=0, below=1)
        elif name == "loraplus_lr_ratio":
            check_number(name, value, minimum=1, hint="B's rate over A's")
        elif name.endswith("_modules"):
            check_names(name, value, hint="give a list of module names such as ['query_key_value'], not one string")
        elif name in FLAGS:
            check_flag(name, value)
        else:
            raise TypeError(f"check_recipe() has no rule for {name!r}: add it to COUNTS, FLAGS or the rules above")
    if model_id is not None and "target_modules" in args:
        check_targets(recipe, model_id, args["target_modules"], rank=args.get("r", args.get("init_r")))

DATASET = "cornell-movie-review-data/rotten_tomatoes"
LABELS = ("negative", "positive")  # the dataset's label 0 and 1 (its ClassLabel names are "neg" and "pos")
REVIEW_PROMPT = "Review: {text}\nSentiment:"  # the model continues it with " positive" or " negative"


def load_reviews(source: str | Path, split: str = "train", limit: int | None = None,
                 seed: int = 0) -> list[tuple[str, str]]:
    """Reviews as (prompt, completion) pairs, shuffled with `seed`, the first `limit` kept. `source` is a .jsonl file
    (one {"text": ..., "label": 0 or 1} per line), a .json file (a list of such records, or the same JSON lines) or a
    Hub dataset id; a bad file or record is a CourseError naming it."""
    check_int("limit", limit, minimum=1, optional=True, hint="None keeps every review")
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):  # JSON lines, or a JSON list of records (read_records names bad ones)
        where, records = str(path), read_records(path)
    elif path.is_file():
        raise CourseError(f"{path}: reviews are read from a .jsonl file (one {{\"text\": ..., \"label\": 0 or 1}} "
                          f"per line) or a .json list of such records; convert the file, or pass a Hub dataset id")
    else:
        from datasets import load_dataset  # full mode only

        with hub_errors(str(source), "dataset"):
            dataset = load_dataset(str(source), split=split)
        where, records = f"{source} ({split})", [(f"record {i}", r) for i, r in enumerate(dataset.to_list())]
    if not records:
        raise CourseError(f"{where} has no reviews: nothing to train on")
    pairs = []
    for at, record in records:
        text, label = check_field(record, "text", f"{where}, {at}"), record.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise CourseError(f"{where}, {at}: field 'label' is {label!r}; use 0 (negative) or 1 (positive)")
        pairs.append((REVIEW_PROMPT.format(text=text.strip()), " " + LABELS[label]))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


REAL_MODELS = ("bigscience/bloomz-560m", "bigscience/bloom-7b1")


def trainable_parameters(model) -> list:
    """The parameters training updates (requires_grad), after re-freezing AdaLoRA's rank counters: peft 0.21.2 makes
    `ranknum`, a constant, trainable whenever it moves an adapter to another device or dtype."""
    for name, param in model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def load_base(model_id: str, device=None, seed: int = 0):
    """The frozen base model in fp32 on `device` (CUDA when present); seeded, so every call builds the same model."""
    set_seed(seed)
    with hub_errors(model_id):
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    return model.to(device or pick_device())


#: LoRA initialisations that rewrite the frozen base weight (PiSSA: W0 becomes W0 - s B0 A0), as peft 0.21.2 lists
#: them in LoraModel._convert_state_dict_for_initial_model: such an adapter only fits the rewritten base.
BASE_REWRITING_INITS = ("pissa", "corda", "olora", "lora_ga")
#: peft warns about that when the conversion below loads the initial adapter next to the trained one; it is the
#: warning the conversion answers, so it is silenced there alone.
PISSA_WARNING = "PiSSA changes the base weights of the model and should thus not be used with other adapters"


def rewrites_base(config) -> bool:
    """True for a LoRA config whose initialisation rewrites the base weights (PiSSA, CorDA, OLoRA, LoRA-GA)."""
    init = getattr(config, "init_lora_weights", True)
    return isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS)


def save_initial_adapter(model, model_id: str, folder: str | Path) -> Path:
    """Save, in `folder`, the adapter `model` started from, rebuilt by wrapping a fresh `model_id` base with a copy of
    its config; a CourseError when the rebuilt base weights differ from `model`'s frozen ones (another base model, or
    a random initialisation such as PiSSA's `pissa_niter_*`: then save the adapter before training instead)."""
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.base_model_name_or_path = None  # get_peft_model fills it in from the fresh base
    rebuilt = peft.get_peft_model(load_base(model_id, model.device), config)
    frozen = {n: p for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    for name, param in rebuilt.named_parameters():
        if name in frozen and not torch.allclose(param, frozen[name], atol=1e-6, rtol=0):
            raise CourseError(f"{model_id} is not the base model this adapter was initialised from: the rebuilt {name} "
                              f"differs from the trained model's frozen one by up to "
                              f"{(param - frozen[name]).abs().max().item():.2e}. Use the model it was trained on; for a "
                              f"random initialisation, save the adapter right after get_peft_model and pass that folder "
                              f"as save_pretrained(path_initial_model_for_weight_conversion=...)")
    rebuilt.save_pretrained(folder)
    return Path(folder)


def save_adapter(model, model_id: str, folder: str | Path) -> Path:
    """`model.save_pretrained(folder)`: the adapter alone, as safetensors, with its config; returns `folder`. An adapter
    whose initialisation rewrote the base weights (PiSSA) is saved as the plain LoRA adapter it equals on the untouched
    base (peft's `path_initial_model_for_weight_conversion`, from the initial adapter rebuilt in `folder`/initial), so
    that it loads onto a fresh base like every other adapter, with peft or without."""
    folder = Path(folder)
    if rewrites_base(model.peft_config[model.active_adapter]):
        initial = save_initial_adapter(model, model_id, folder / "initial")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=re.escape(PISSA_WARNING))
            model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(initial))
    else:
        model.save_pretrained(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise CourseError(f"save_pretrained wrote no adapter_model.safetensors in {folder}: "
                          f"{sorted(p.name for p in folder.iterdir())}")
    return folder
