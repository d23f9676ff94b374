"""Chapter 03, the QLoRA recipe on a tiny 4-bit BLOOM: bad input, adapter save/reload, resume from checkpoint."""

from __future__ import annotations

import sys

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from trl import SFTConfig, SFTTrainer

from utils.ch03_qlora import adapters_to_fp32, keep_4bit_trainable, load_prompt_dataset, require_4bit_support
from utils.checks import check_target_modules
from utils.errors import CourseError
from utils.smoke import fixture_path, tiny_checkpoint

BNB = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
STEPS = 6


def _model():
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=BNB,
                                                 device_map={"": "cpu"})
    keep_4bit_trainable(model)  # as the notebook does: the same 4-bit kernels on every CPU
    return model


def _peft_model():
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"],
                      task_type="CAUSAL_LM")
    return get_peft_model(prepare_model_for_kbit_training(_model(), use_gradient_checkpointing=False), lora)


def _trainer(model, out, data):
    config = SFTConfig(output_dir=str(out), max_steps=STEPS, learning_rate=1e-2, per_device_train_batch_size=4,
                       max_length=128, dataset_text_field="text", fp16=False, bf16=False, use_cpu=True,
                       logging_steps=1, save_strategy="steps", save_steps=STEPS // 2, report_to="none", seed=0,
                       disable_tqdm=True, activation_checkpointing=True)  # as chapter 03's SFTConfig
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    adapters_to_fp32(trainer.model)
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora")
    data = load_prompt_dataset(str(fixture_path("prompts")))
    trainer = _trainer(_peft_model(), out / "checkpoints", data)
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return trainer, out, data


# --- bad input ----------------------------------------------------------------------------------------------

def test_loader_renames_prompt_to_text():
    data = load_prompt_dataset(str(fixture_path("prompts")), limit=10)
    assert data.column_names == ["text"] and len(data) == 10
    assert data[0]["text"].startswith("I want you to act as")


# The loader's bad inputs (encoding, structure, fields, empty files, ragged CSV rows, a missing file) are tried in
# tests/test_bad_input.py, with every other loader's.


def test_unknown_target_module_is_caught_before_peft():
    model = _model()
    check_target_modules(model, ["query_key_value", "dense"])  # BLOOM's real names pass
    with pytest.raises(CourseError, match=r"\['q_proj'\] not found in BloomForCausalLM.*query_key_value"):
        check_target_modules(model, ["query_key_value", "q_proj"])


def test_4bit_where_bitsandbytes_cannot_run(monkeypatch):
    require_4bit_support("cpu")  # works here
    if torch.backends.mps.is_available():  # the probe decides on every device: on a Mac with MPS it passes
        require_4bit_support("mps")
    else:  # ... and where torch has no MPS it says so, in one line
        with pytest.raises(CourseError, match=r"cannot quantize to 4-bit on mps \(NotImplementedError: [^\n]*\); use a CUDA"):
            require_4bit_support("mps")
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)  # as if bitsandbytes failed to import
    with pytest.raises(CourseError, match="cannot quantize to 4-bit on cpu"):
        require_4bit_support("cpu")


def test_bitsandbytes_has_4bit_kernels_for_apples_mps():
    """Why the probe, not a list of device types, decides: bitsandbytes 0.50 registers NF4 kernels for MPS (its
    backends/mps/ops.py, imported where MPS is available; imported here to read its registrations)."""
    import bitsandbytes.backends.mps.ops  # noqa: F401

    for op in ("quantize_4bit", "dequantize_4bit", "gemm_4bit"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"bitsandbytes::{op}", "MPS"), op


def test_auto_find_batch_size_multiplies_the_batch_by_0_9():
    """SFTConfig(auto_find_batch_size=True): on out-of-memory the Trainer retries with 0.9 times the batch
    (transformers' find_executable_batch_size hands over to accelerate's), not half: 4 -> 3 -> 2 -> 1, then gives up."""
    from transformers.trainer_utils import find_executable_batch_size

    tried, fits = [], [1]

    def inner_training_loop(batch_size):  # what the Trainer wraps: out of memory above the sizes in `fits`
        tried.append(batch_size)
        if batch_size not in fits:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return batch_size

    assert find_executable_batch_size(inner_training_loop, starting_batch_size=4, auto_find_batch_size=True)() == 1
    assert tried == [4, 3, 2, 1]
    tried.clear()
    fits.clear()  # nothing fits
    with pytest.raises(RuntimeError, match="reached zero"):
        find_executable_batch_size(inner_training_loop, starting_batch_size=16, auto_find_batch_size=True)()
    assert tried == [16, 14, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]


# --- training, saving, reloading, resuming -------------------------------------------------------------------

def test_adapter_saved_alone(trained):
    _, out, _ = trained
    names = {p.name for p in (out / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin"}


def test_trl_casts_adapters_to_bf16_and_they_are_cast_back(tmp_path):
    """trl 1.16 casts a quantized model's adapters to bf16 in SFTTrainer's constructor, which fp16 AMP's GradScaler
    cannot unscale on a T4; `adapters_to_fp32` restores fp32 before the optimizer exists."""
    data = load_prompt_dataset(str(fixture_path("prompts")), limit=8)
    config = SFTConfig(output_dir=str(tmp_path), max_steps=1, max_length=64, dataset_text_field="text", fp16=False,
                       bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                       activation_checkpointing=True)
    trainer = SFTTrainer(model=_peft_model(), args=config, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint("bloom")))
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(p.dtype == torch.bfloat16 for p in trainable)  # what trl does
    assert adapters_to_fp32(trainer.model) == 4
    assert trainer.optimizer is None  # not built yet: it will hold the fp32 tensors
    trainer.train()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    assert {p.dtype for group in trainer.optimizer.param_groups for p in group["params"]} == {torch.float32}


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.float16], ids=["fp32 compute", "fp16 compute (T4)"])
def test_reloaded_adapter_gives_the_same_logits(trained, compute_dtype):
    """Like with like, as the notebook compares: the reload goes through prepare_model_for_kbit_training as the
    trained model did, the adapters are fp32 on both sides, and the NF4 codes re-quantize identically, so the logits
    are equal; unprepared at fp16 compute, they would differ by the preparation's fp32 norms alone."""
    trainer, out, _ = trained
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)

    def load(prepare: bool):
        model = AutoPeftModelForCausalLM.from_pretrained(out / "adapter", quantization_config=config,
                                                         dtype=compute_dtype, device_map={"": "cpu"})
        keep_4bit_trainable(model)
        return (prepare_model_for_kbit_training(model, use_gradient_checkpointing=False) if prepare else model).eval()

    model = trainer.model.eval() if compute_dtype == torch.float32 else load(prepare=True)
    reloaded = load(prepare=True)
    ours = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and len(ours) == 4
    assert all(v.dtype == torch.float32 for v in [*ours.values(), *theirs.values()])
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(ours[k].abs().sum() > 0 for k in ours if "lora_B" in k)  # trained: B moved away from zero
    ids = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))("I want you to act as a poet.", return_tensors="pt")
    with torch.no_grad():
        a, b = model(**ids).logits.float(), reloaded(**ids).logits.float()
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
        if compute_dtype == torch.float16:  # why the preparation must match: without it, fp16 norms move the logits
            assert (a - load(prepare=False)(**ids).logits.float()).abs().max() > 1e-3


def test_resume_from_checkpoint_reaches_the_same_step(trained, tmp_path):
    trainer, out, data = trained
    checkpoint = out / "checkpoints" / f"checkpoint-{STEPS // 2}"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    resumed = _trainer(_peft_model(), out / "checkpoints", data)
    ran = []

    class StepsRun(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ran.append(state.global_step)

    resumed.add_callback(StepsRun())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == trainer.state.global_step == STEPS
    assert ran == list(range(STEPS // 2 + 1, STEPS + 1))  # continued from the checkpoint, not restarted
    first = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    again = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    for step in again:  # same data order, weights and optimizer state: the same losses
        assert again[step] == pytest.approx(first[step], abs=1e-3)


# --- the T4 recipe forced on a CPU: fp16 compute dtype, SFTConfig(fp16=True) -------------------------------------


def _train_qlora_module():
    import importlib.util

    from utils.paths import ROOT

    spec = importlib.util.spec_from_file_location("train_qlora", ROOT / "03-qlora-bloom" / "train_qlora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cast_back", [True, False], ids=["as shipped", "without adapters_to_fp32"])
def test_train_qlora_under_the_t4_recipe_steps_on_fp32_adapters(tmp_path, monkeypatch, cast_back):
    """train_qlora.py with a T4's settings (fp16 compute dtype, SFTConfig(fp16=True)): every optimizer step sees
    fp32 trainable parameters; without `adapters_to_fp32` it would see trl's bf16 ones (what broke on a T4)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    train_qlora = _train_qlora_module()
    monkeypatch.setattr(train_qlora, "pick_dtype", lambda device: torch.float16)
    if not cast_back:
        monkeypatch.setattr("utils.ch03_qlora.adapters_to_fp32", lambda model: 0)  # main() imports it from there
    seen, trainers = [], []
    real_train = SFTTrainer.train
    monkeypatch.setattr(SFTTrainer, "train", lambda self, *a, **k: trainers.append(self) or real_train(self, *a, **k))
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append({p.dtype for g in opt.param_groups for p in g["params"]}))
    try:
        assert train_qlora.main(["--model", tiny_checkpoint("bloom"), "--data", str(fixture_path("prompts")),
                                 "--limit", "8", "--steps", "2", "--batch-size", "2", "--max-length", "64",
                                 "--output-dir", str(tmp_path)]) == 0
    finally:
        handle.remove()
    trainer = trainers[0]
    assert trainer.args.fp16 and not trainer.args.bf16
    import bitsandbytes as bnb

    assert {m.compute_dtype for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)} == {torch.float16}
    assert len(seen) == 2
    assert all(s == ({torch.float32} if cast_back else {torch.bfloat16}) for s in seen)


def test_every_sfttrainer_gets_fp32_adapters_before_it_trains():
    """In the notebook and the script, each SFTTrainer built is followed by adapters_to_fp32(<it>.model) before
    <it>.train(): the order that the behavioural tests above prove necessary."""
    import ast

    import nbformat

    from utils.paths import ROOT

    sources = [ROOT / "03-qlora-bloom" / "train_qlora.py", ROOT / "03-qlora-bloom" / "03_qlora_bloom_sfttrainer.ipynb"]
    checked = 0
    for path in sources:
        code = path.read_text() if path.suffix == ".py" else "\n".join(
            c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code")
        calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
        trainers = {n.targets[0].id: n.lineno for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Assign)
                    and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
                    and n.value.func.id.endswith(("Trainer", "trainer_class"))}
        for name, built in trainers.items():
            cast = [c.lineno for c in calls if ast.unparse(c) == f"adapters_to_fp32({name}.model)"]
            train = [c.lineno for c in calls if ast.unparse(c.func) == f"{name}.train"]
            assert train, f"{path.name}: {name} never trains"
            assert cast and built < min(cast) < min(train), f"{path.name}: {name} trains before adapters_to_fp32"
            checked += 1
    assert checked == 3  # the notebook's trainer and its resumed one, the script's
