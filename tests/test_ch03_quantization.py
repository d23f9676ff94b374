"""Chapter 03, quantization basics: the round-to-n-bits scheme and bitsandbytes' blockwise int8 / NF4."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import numpy as np
import pytest
import torch

from tools.nbexport import load
from utils.lessons.quantization import quantization_constant_bits

CH03 = load("03-qlora-bloom/01_quantization_basics.ipynb")  # the lesson's code, from its notebook
quantize_symmetric, dequantize_symmetric = CH03.quantize_symmetric, CH03.dequantize_symmetric


def test_source_values_at_4_and_8_bits():
    # scale = (2**(bits-1) - 1) / max_abs with max_abs = 1: 0.622 * 7 = 4.354 -> 4; 0.622 * 127 = 78.994 -> 79
    assert int(quantize_symmetric(0.622, 4)) == 4
    assert round(float(dequantize_symmetric(4, 4)), 4) == 0.5714
    assert int(quantize_symmetric(0.622, 8)) == 79
    assert round(float(dequantize_symmetric(79, 8)), 4) == 0.6220
    assert float(dequantize_symmetric(79, 8)) == pytest.approx(79 / 127, abs=0)
    # the lesson's sentence: right to four decimals at 8 bits, not even to one at 4 bits
    assert abs(float(dequantize_symmetric(79, 8)) - 0.622) < 0.5e-4 < 0.5e-1 < abs(float(dequantize_symmetric(4, 4)) - 0.622)


def test_clipping_range_and_error_bound():
    x = np.linspace(-1, 1, 1001)
    for bits in (4, 8):
        levels = 2 ** (bits - 1) - 1
        q = quantize_symmetric(x, bits)
        assert q.min() == -levels and q.max() == levels
        assert np.abs(dequantize_symmetric(q, bits) - x).max() <= 0.5 / levels + 1e-12
    assert int(quantize_symmetric(3.0, 4)) == 7  # beyond max_abs: clipped, not wrapped
    assert int(quantize_symmetric(-3.0, 8)) == -127
    assert int(quantize_symmetric(1.0, 4, max_abs=2.0)) == 4  # 1 * 7 / 2 = 3.5 -> 4 (round half to even)


def test_constant_bits_with_and_without_double_quant():
    assert quantization_constant_bits(64, double_quant=False) == 0.5
    assert quantization_constant_bits(64, double_quant=True) == 8 / 64 + 32 / (64 * 256) == 0.126953125


def test_bitsandbytes_blockwise_int8_and_nf4_on_a_weight():
    torch.manual_seed(0)
    weight = torch.randn(256, 128) * 0.02  # 32,768 weights: 512 blocks of 64, 2 blocks of 256 absmaxes
    q8, s8 = bnbf.quantize_blockwise(weight, blocksize=64)
    err8 = (bnbf.dequantize_blockwise(q8, s8) - weight).abs()
    assert s8.absmax.numel() == weight.numel() // 64 and s8.absmax.dtype == torch.float32
    errors = {}
    for double in (False, True):
        q4, s4 = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=double)
        assert q4.numel() == weight.numel() // 2  # two 4-bit codes per byte
        errors[double] = (bnbf.dequantize_4bit(q4, s4) - weight).abs()
        stored = s4.absmax.numel() * s4.absmax.element_size() * 8
        if double:
            assert s4.nested and s4.absmax.dtype == torch.uint8
            stored += s4.state2.absmax.numel() * 32
        assert stored / weight.numel() == quantization_constant_bits(64, double_quant=double)
    # int8 is ~10x more precise than NF4; double quantization barely changes the error
    assert err8.mean() < errors[False].mean() / 5
    assert errors[False].max() < weight.abs().max() / 5
    assert abs(errors[True].mean() - errors[False].mean()) < 0.05 * errors[False].mean()


def test_block_sizes_bitsandbytes_uses_by_default():
    """What section 3 says: 4-bit blocks of 64 (quantize_4bit's default and the Linear4bit layers transformers makes),
    quantize_blockwise's 8 bits in blocks of 4,096 by default, and LLM.int8 one scale per output row, not blocks."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from utils.smoke import tiny_checkpoint

    weight = torch.randn(128, 256)
    assert bnbf.quantize_4bit(weight)[1].blocksize == 64
    assert bnbf.quantize_blockwise(weight)[1].blocksize == 4096
    nf4 = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"),
                                               quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    assert {m.weight.quant_state.blocksize for m in nf4.modules() if type(m).__name__ == "Linear4bit"} == {64}
    int8 = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"),
                                                quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    layer = int8.transformer.h[0].mlp.dense_h_to_4h
    assert type(layer).__name__ == "Linear8bitLt" and layer.weight.dtype == torch.int8
    assert layer.weight.SCB.shape == (layer.out_features,)  # one fp32 scale per row
