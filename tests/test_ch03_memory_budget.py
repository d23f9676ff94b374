"""Chapter 03's memory budget: each term against a hand calculation, the weights against a real 4-bit model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from utils.memory_budget import CUDA_CONTEXT_BYTES, GIB, budget_parameter_counts, memory_budget
from utils.real_models import meta_model
from utils.smoke import tiny_checkpoint

H, L, A, V = 4096, 30, 32, 250_880  # bigscience/bloom-7b1


@pytest.fixture(scope="module")
def bloom7b():
    return meta_model("bigscience/bloom-7b1")


def test_parameter_counts_by_hand(bloom7b):
    n = budget_parameter_counts(bloom7b, target_modules=("query_key_value",), lora_r=16)
    # per block: query_key_value h x 3h, dense h x h, dense_h_to_4h h x 4h, dense_4h_to_h 4h x h = 12 h^2
    assert n.quantized == L * 12 * H * H == 6_039_797_760
    assert n.quantized_rows == L * (3 * H + H + 4 * H + H)
    # embedding (tied to lm_head, once) + its layer norm + per block 2 layer norms and 4 biases + final norm
    unquantized = V * H + 2 * H + L * (2 * 2 * H + (3 * H + H + 4 * H + H)) + 2 * H
    assert n.unquantized == unquantized == 1_029_218_304
    assert n.quantized + n.unquantized == 7_069_016_064  # the published count
    assert n.lora == L * 16 * (H + 3 * H) == 7_864_320


def test_each_term_by_hand(bloom7b):
    b, s = 4, 256
    with_gc = memory_budget(bloom7b, batch_size=b, seq_len=s, gradient_checkpointing=True).terms
    without = memory_budget(bloom7b, batch_size=b, seq_len=s, gradient_checkpointing=False).terms
    q = L * 12 * H * H
    assert with_gc["quantized weights"] == q / 2  # 4 bits
    assert with_gc["quantization constants"] == pytest.approx(q * (8 / 64 + 32 / (64 * 256)) / 8)
    assert with_gc["unquantized weights"] == 1_029_218_304 * 2  # fp16
    assert with_gc["LoRA weights + grads + AdamW"] == 7_864_320 * 16
    layer = s * b * H * (34 + 5 * A * s / H)  # Korthikanti et al., 16-bit
    assert without["activations"] == pytest.approx(L * layer)
    assert with_gc["activations"] == pytest.approx(L * s * b * H * 2 + layer)
    assert with_gc["logits"] == b * s * V * (2 + 4 + 4)
    assert with_gc["CUDA context"] == CUDA_CONTEXT_BYTES
    total = memory_budget(bloom7b, batch_size=b, seq_len=s).total
    assert total == pytest.approx(sum(with_gc.values()))
    assert 7 * GIB < total < 15 * GIB  # fits a T4's 15 usable GiB with checkpointing ...
    assert memory_budget(bloom7b, batch_size=b, seq_len=s, gradient_checkpointing=False).total > total + 4 * GIB


def test_other_widths_and_bad_bits(bloom7b):
    q = L * 12 * H * H
    no_dq = memory_budget(bloom7b, double_quant=False).terms
    assert no_dq["quantization constants"] == q * 0.5 / 8
    int8 = memory_budget(bloom7b, weight_bits=8).terms
    assert int8["quantized weights"] == q and int8["quantization constants"] == L * 9 * H * 4
    upcast = memory_budget(bloom7b, unquantized_bytes=4).terms  # after prepare_model_for_kbit_training
    assert upcast["unquantized weights"] == 1_029_218_304 * 4
    fp16 = memory_budget(bloom7b, weight_bits=16).terms
    assert fp16["quantized weights"] == 0 and fp16["unquantized weights"] == 7_069_016_064 * 2
    with pytest.raises(ValueError, match="weight_bits"):
        memory_budget(bloom7b, weight_bits=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_weights_term_matches_a_real_4bit_model(dtype):
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=config, dtype=dtype)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    terms = memory_budget(model, unquantized_bytes=dtype.itemsize).terms
    weights = terms["quantized weights"] + terms["quantization constants"] + terms["unquantized weights"]
    footprint = model.get_memory_footprint()
    assert abs(weights - footprint) / footprint < 0.05
    # get_memory_footprint counts parameters and buffers only, not the absmax constants in the quant states
    assert terms["quantized weights"] + terms["unquantized weights"] == footprint


def test_a_peft_wrapped_model_budgets_like_its_base():
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"))
    before = budget_parameter_counts(base, lora_r=16)
    wrapped = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=["query_key_value"]))
    after = budget_parameter_counts(wrapped.base_model.model, lora_r=16)
    assert after.quantized == before.quantized and after.lora == before.lora
    assert after.lora == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)  # 2 layers x 16 x (64 + 192)
    assert after.unquantized == before.unquantized + after.lora  # the adapters themselves are parameters too
