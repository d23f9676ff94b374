"""Chapter 04: LoRA from scratch (LoRALayer, LinearWithLoRA, replace_linear_with_lora) against the base model,
the merged weight, and peft's LoRA."""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, get_peft_model

from tools.nbexport import load
from utils.lessons.gpt import GPT_CONFIGS, GPTModel

LORA = load("04-instruction-gpt2/02_lora_from_scratch.ipynb")  # LoRA from scratch, from its notebook
LinearWithLoRA = LORA.LinearWithLoRA
LoRALayer = LORA.LoRALayer
count_trainable = LORA.count_trainable
lora_model = LORA.lora_model
merge_all_lora = LORA.merge_all_lora
merge_lora = LORA.merge_lora
replace_linear_with_lora = LORA.replace_linear_with_lora

TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0,
        "qkv_bias": True}


def test_lora_layer_init_and_scaling():
    torch.manual_seed(0)
    layer = LoRALayer(in_dim=20, out_dim=6, rank=4, alpha=8)
    assert layer.A.shape == (20, 4) and layer.B.shape == (4, 6)
    assert torch.count_nonzero(layer.B) == 0 and layer.scaling == 2.0
    bound = 1 / math.sqrt(4)  # kaiming_uniform_(a=sqrt(5)) on a (in, rank) tensor: U(-1/sqrt(rank), 1/sqrt(rank))
    assert layer.A.abs().max() <= bound and layer.A.abs().max() > 0.8 * bound
    with torch.no_grad():
        layer.B.fill_(1.0)
    x = torch.randn(3, 20)
    assert torch.allclose(layer(x), 2.0 * x @ layer.A @ layer.B)


def test_b_zero_gives_the_base_model_outputs_exactly():
    torch.manual_seed(0)
    model = GPTModel(TINY).eval()
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = model(x)
        replace_linear_with_lora(model, rank=4, alpha=8)
        after = model(x)
    assert torch.equal(before, after)
    n_linear = 2 * (4 + 2) + 1  # per block: W_query, W_key, W_value, out_proj, two feed-forward; plus out_head
    assert sum(isinstance(m, LinearWithLoRA) for m in model.modules()) == n_linear


def test_freezing_then_lora_leaves_only_a_and_b_trainable():
    torch.manual_seed(0)
    model = GPTModel(TINY)
    total = sum(p.numel() for p in model.parameters())
    counts = lora_model(model, rank=4, alpha=8)
    expected = sum(4 * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert counts == {"before freezing": total, "after freezing": 0, "with LoRA (r=4)": expected}
    assert count_trainable(model) == expected
    assert all(name.endswith((".A", ".B")) for name, p in model.named_parameters() if p.requires_grad)


def test_merged_equals_unmerged():
    torch.manual_seed(0)
    layer = LinearWithLoRA(torch.nn.Linear(24, 12), rank=3, alpha=6)
    with torch.no_grad():
        layer.lora.B.normal_()
    x = torch.randn(5, 24)
    merged = merge_lora(layer)
    assert isinstance(merged, torch.nn.Linear)
    assert (merged(x) - layer(x)).abs().max().item() < 1e-5
    assert not torch.allclose(layer.linear(x), layer(x), atol=1e-3)  # the update is not negligible

    model = GPTModel(TINY).eval()
    replace_linear_with_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALayer):
                m.B.normal_(std=0.1)
        inputs = torch.randint(0, 64, (2, 10))
        unmerged = model(inputs)
        merge_all_lora(model)
        assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
        assert (model(inputs) - unmerged).abs().max().item() < 1e-5


def test_matches_peft_lora_with_the_same_a_and_b():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(x)

    base = Net()
    ours = LinearWithLoRA(base.fc, rank=4, alpha=16)
    with torch.no_grad():
        ours.lora.B.normal_()
    peft_model = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=16, target_modules=["fc"], lora_dropout=0.0))
    peft_fc = peft_model.base_model.model.fc
    with torch.no_grad():
        peft_fc.base_layer.weight.copy_(base.fc.weight)
        peft_fc.base_layer.bias.copy_(base.fc.bias)
        peft_fc.lora_A["default"].weight.copy_(ours.lora.A.T)  # peft: lora_A is Linear(in, r), weight (r x in)
        peft_fc.lora_B["default"].weight.copy_(ours.lora.B.T)  # lora_B is Linear(r, out), weight (out x r)
    assert peft_fc.scaling["default"] == ours.lora.scaling == 4.0
    x = torch.randn(6, 16)
    with torch.no_grad():
        assert (peft_model(x) - ours(x)).abs().max().item() < 1e-5


def test_gpt2_medium_lora_counts_on_the_meta_device():
    with torch.device("meta"):
        counts = lora_model(GPTModel(GPT_CONFIGS["gpt2-medium (355M)"]), rank=16, alpha=16)
    assert counts["before freezing"] == 406_286_336  # 354,823,168 plus the untied output head (50,257 x 1,024)
    assert counts["after freezing"] == 0
    # per block: 4 x (1024+1024) attention, (1024+4096) + (4096+1024) feed-forward, times r=16; plus out_head
    per_block = 16 * (4 * 2048 + 2 * 5120)
    assert counts["with LoRA (r=16)"] == 24 * per_block + 16 * (1024 + 50257)
