"""Chapter 03, the QLoRA recipe on a tiny 4-bit BLOOM: bad input, adapter save/reload, resume from checkpoint."""

from __future__ import annotations

import sys

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
from trl import SFTConfig, SFTTrainer

from utils.errors import CourseError
from utils.quantization import check_target_modules, load_prompt_dataset, require_4bit_support
from utils.smoke import fixture_path, tiny_checkpoint

BNB = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
STEPS = 6


def _model():
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=BNB,
                                                device_map={"": "cpu"})


def _peft_model():
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"],
                      task_type="CAUSAL_LM")
    return get_peft_model(prepare_model_for_kbit_training(_model()), lora)


def _trainer(model, out, data):
    config = SFTConfig(output_dir=str(out), max_steps=STEPS, learning_rate=1e-2, per_device_train_batch_size=4,
                       max_length=128, dataset_text_field="text", fp16=False, bf16=False, use_cpu=True,
                       logging_steps=1, save_strategy="steps", save_steps=STEPS // 2, report_to="none", seed=0,
                       disable_tqdm=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))
    return SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)


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
    with pytest.raises(CourseError, match="mps, where bitsandbytes does not run"):
        require_4bit_support("mps")
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)  # as if bitsandbytes failed to import
    with pytest.raises(CourseError, match="cannot quantize to 4-bit on cpu"):
        require_4bit_support("cpu")


# --- training, saving, reloading, resuming -------------------------------------------------------------------

def test_adapter_saved_alone(trained):
    _, out, _ = trained
    names = {p.name for p in (out / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin"}


def test_reloaded_adapter_gives_the_same_logits(trained):
    """The NF4 base weights re-quantize to identical codes, and the saved LoRA values are the trained ones exactly.
    trl keeps a quantized model's adapters in bf16 while the reload holds them in fp32, so the logits agree to
    bf16 rounding of the LoRA path (tolerance 1e-2); cast to the same dtype, they agree to 1e-5."""
    trainer, out, _ = trained
    model = trainer.model.eval()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out / "adapter", quantization_config=BNB,
                                                        device_map={"": "cpu"}).eval()
    ours = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert ours.keys() == theirs.keys() and len(ours) == 4
    assert all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)
    assert any(ours[k].abs().sum() > 0 for k in ours if "lora_B" in k)  # trained: B moved away from zero
    ids = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))("I want you to act as a poet.", return_tensors="pt")
    with torch.no_grad():
        a, b = model(**ids).logits, reloaded(**ids).logits
        assert (a - b).abs().max() < 1e-2
        for name, param in reloaded.named_parameters():
            if "lora_" in name:
                param.data = param.data.to(ours[name].dtype)
        assert (a - reloaded(**ids).logits).abs().max() < 1e-5


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
