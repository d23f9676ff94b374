"""Chapter 02's full-mode path where a CPU can show it: the T4 recipe's fp16 autocast with a GradScaler and fp32 LoRA
weights, a checkpoint every epoch that a resumed run continues from, and GPT-J's float16 branch (a .bin only)
loaded with weights_only and mmap and without the background safetensors-conversion look-up."""

from __future__ import annotations

import ast
import logging
import threading

import nbformat
import pytest
import torch
from peft import (
    LoraConfig,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.trainer_pt_utils import LengthGroupedSampler

from tools.nbexport import load
from utils.hub import hub_errors
from utils.paths import ROOT
from utils.resume import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from utils.smoke import fixture_path, tiny_checkpoint

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
collate_squad_batch = SQUAD.collate_squad_batch
encode_records = SQUAD.encode_records
load_squad = SQUAD.load_squad
squad_train_epoch = SQUAD.squad_train_epoch

logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
NOTEBOOK = ROOT / "02-lora-gptj" / "01_lora_gptj_squad.ipynb"


def lora_model(seed: int = 0):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float16, device_map={"": "cpu"},
                                                 quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # as chapter 02 calls it
    model.activation_checkpointing_enable({"use_reentrant": False})
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"))


@pytest.fixture(scope="module")
def batches():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    examples, _ = encode_records(load_squad(fixture_path("squad_train"), "train", n=12), tok, 256)
    return [examples[i:i + 4] for i in range(0, 12, 4)], tok.eos_token_id


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.parametrize("amp_dtype", [torch.float16, None], ids=["fp16-autocast-gradscaler", "fp32"])
def test_an_epoch_under_the_t4_recipe_trains_fp32_lora_with_16_bit_matmuls(batches, amp_dtype):
    """The T4 recipe forced on a CPU: fp16 autocast and an enabled GradScaler. The optimizer is built on fp32 LoRA
    weights and they stay fp32; the projections compute (and so backpropagate) in fp16; the loss falls."""
    data, pad = batches
    model = lora_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    assert {p.dtype for g in optimizer.param_groups for p in g["params"]} == {torch.float32}
    scaler = torch.amp.GradScaler("cpu", enabled=amp_dtype == torch.float16)
    seen = set()
    q_proj = model.base_model.model.transformer.h[0].attn.q_proj
    hook = q_proj.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    before = lora_state(model)
    losses = []
    for _ in range(4):
        losses += squad_train_epoch(model, data, optimizer, scaler, grad_accum=1, pad_token_id=pad,
                                    amp_dtype=amp_dtype)
    hook.remove()
    assert seen == {amp_dtype or torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert any(not torch.equal(before[k], v) for k, v in lora_state(model).items())
    if amp_dtype == torch.float16:
        assert scaler.get_scale() > 1.0  # the loss was scaled before backward


def test_gradient_accumulation_steps_once_per_group(batches):
    data, pad = batches
    model = lora_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    losses = squad_train_epoch(model, data, optimizer, torch.amp.GradScaler("cpu", enabled=False), grad_accum=2,
                               pad_token_id=pad)
    assert len(losses) == len(steps) == 2  # 3 batches: a group of 2, then the last one alone


def test_a_resumed_run_ends_with_the_uninterrupted_runs_adapter(batches, tmp_path):
    """The notebook's loop, short: each epoch's batches in the length-grouped sampler's order (drawn from torch's random
    state), the T4 recipe's fp16 autocast and GradScaler, and the notebook's checkpoint dict saved after every epoch.
    A fresh model resumed from epoch 1's checkpoint ends with the uninterrupted run's adapter, bit for bit."""
    data, pad = batches
    examples = [example for batch in data for example in batch]
    lengths = [len(example["input_ids"]) for example in examples]

    def run(epochs, resume_from=None):
        model = lora_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)  # its scale moves every step
        loader = DataLoader(examples, batch_size=4, sampler=LengthGroupedSampler(4, lengths=lengths), collate_fn=list)
        epochs_done = 0
        if resume_from is not None:  # as the notebook's resume cell
            lora = get_peft_model_state_dict(model)
            checkpoint = load_checkpoint(resume_from, like={"adapter": lora, "best_adapter": lora,
                                                            "optimizer": optimizer.state_dict()})
            set_peft_model_state_dict(model, checkpoint["adapter"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            set_rng_state(checkpoint["rng"])
            epochs_done = checkpoint["epoch"]
        else:
            torch.manual_seed(1)
        for epoch in range(epochs_done + 1, epochs + 1):
            squad_train_epoch(model, list(loader), optimizer, scaler, grad_accum=2, pad_token_id=pad,
                              amp_dtype=torch.float16)
            checkpoint = {"adapter": get_peft_model_state_dict(model), "best_adapter": lora_state(model),
                          "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                          "epoch": epoch, "step": 2 * epoch, "history": {"val": [1.5]}, "best": {"epoch": epoch}}
            save_checkpoint(tmp_path / f"epoch{epoch}.safetensors", checkpoint)
        return lora_state(model), scaler.get_scale()

    uninterrupted, scale = run(3)
    resumed, resumed_scale = run(3, resume_from=tmp_path / "epoch1.safetensors")
    assert uninterrupted.keys() == resumed.keys() and scale == resumed_scale
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert sorted(load_checkpoint(tmp_path / "epoch1.safetensors")) == [
        "adapter", "best", "best_adapter", "epoch", "history", "optimizer", "rng", "scaler", "step"]


def test_the_length_grouped_order_follows_torchs_random_state():
    """transformers' LengthGroupedSampler, as the notebook uses it (no generator), draws each epoch's order from torch's
    random state, as shuffle=True does: a seed, or the random state a checkpoint restores, fixes it, and the next epoch
    draws another. Full mode's 2,000 examples in batches of 4 come in groups of 50 batches, each sorted longest first
    (the first group starts with the longest example of all, so memory runs out at the first step if at all)."""
    lengths = [(i * 37) % 509 + 1 for i in range(2000)]
    sampler = LengthGroupedSampler(4, lengths=lengths)
    torch.manual_seed(3)
    first = list(sampler)
    torch.manual_seed(3)
    assert list(sampler) == first
    assert list(sampler) != first
    assert sorted(first) == list(range(2000)) and lengths[first[0]] == max(lengths)
    groups = [[lengths[i] for i in first[start:start + 200]] for start in range(0, 2000, 200)]
    assert all(group == sorted(group, reverse=True) for group in groups[1:])


def test_a_short_last_group_is_averaged_over_its_own_batches(batches):
    """3 batches, accumulation 2: the first step's loss is the mean of batches 1 and 2, the second is batch 3's own
    (divided by 1, not by 2). A learning rate of 0 keeps the weights, so each batch's loss can be measured apart."""
    data, pad = batches
    model = lora_model()
    for module in model.modules():  # no dropout: the losses must be the same twice
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    losses = squad_train_epoch(model, data, optimizer, torch.amp.GradScaler("cpu", enabled=False), grad_accum=2,
                               pad_token_id=pad)
    with torch.no_grad():
        each = [model(**collate_squad_batch(batch, pad)).loss.item() for batch in data]
    assert losses == pytest.approx([(each[0] + each[1]) / 2, each[2]], rel=1e-5)
    assert abs(losses[1] - each[2] / 2) > 1e-3  # dividing the short group by grad_accum would be caught


def notebook_loader():
    """The notebook's own `load_gptj_8bit` (and what it uses), compiled from its cell."""
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    source = next(c.source for c in nb.cells if "def load_gptj_8bit" in c.source)
    tree = ast.parse(source)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) or (
        isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "CHECKPOINTING")]
    import os

    namespace = {"os": os, "torch": torch, "AutoModelForCausalLM": AutoModelForCausalLM,
                 "BitsAndBytesConfig": BitsAndBytesConfig, "prepare_model_for_kbit_training": prepare_model_for_kbit_training,
                 "hub_errors": hub_errors}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(NOTEBOOK), "exec"), namespace)  # noqa: S102
    return namespace["load_gptj_8bit"]


@pytest.fixture
def bin_only_hub(tmp_path, monkeypatch):
    """A Hub that serves a revision holding only pytorch_model.bin (as GPT-J's float16 branch does), and records
    every torch.load call and every background thread transformers starts."""
    import transformers.modeling_utils as mu
    import transformers.utils.hub as hub

    folder = tmp_path / "gptj-float16"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float16)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    real_cached_files = hub.cached_files

    def cached_files(path_or_repo_id, filenames, **kwargs):
        if path_or_repo_id != "EleutherAI/gpt-j-6b":
            return real_cached_files(path_or_repo_id, filenames, **kwargs)
        found = [str(folder / f) for f in filenames if (folder / f).is_file()]
        return found or None

    loads, threads = [], []
    real_load = torch.load
    monkeypatch.setattr(hub, "cached_files", cached_files)
    monkeypatch.setattr(mu, "has_file", lambda *a, **k: False)
    monkeypatch.setattr(mu, "is_offline_mode", lambda: False)  # online, as on Colab
    monkeypatch.setattr(mu, "auto_conversion", lambda *a, **k: pytest.fail("auto_conversion ran"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))

    class RecordingThread(threading.Thread):
        def start(self):
            threads.append(self.name)

    monkeypatch.setattr(mu, "Thread", RecordingThread)
    monkeypatch.delenv("DISABLE_SAFETENSORS_CONVERSION", raising=False)
    return loads, threads


def test_the_float16_branch_loads_its_own_bin_with_weights_only_and_mmap(bin_only_hub):
    loads, threads = bin_only_hub
    # the control: transformers' plain call starts the conversion look-up for a .bin-only revision
    AutoModelForCausalLM.from_pretrained("EleutherAI/gpt-j-6b", revision="float16", dtype=torch.float16)
    assert threads == ["Thread-auto_conversion"]
    threads.clear()
    loads.clear()
    model = notebook_loader()("EleutherAI/gpt-j-6b", "float16", prepare=False)
    assert threads == [], "the notebook's loader must not start the safetensors conversion look-up"
    assert loads and all(k.get("weights_only") is True and k.get("mmap") is True for k in loads)
    assert type(model.transformer.h[0].attn.q_proj).__name__ == "Linear8bitLt"
