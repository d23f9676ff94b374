"""LoRA written out from scratch (after rasbt/LLMs-from-scratch, appendix E): a low-rank update B A added to a
frozen nn.Linear, and the function that wraps every Linear of a model with it.

Chapter 04's second notebook writes these out (a test proves the copies identical); tests import them.
"""

from __future__ import annotations

import math

import torch

from utils.checks import check_int, check_number


class LoRALayer(torch.nn.Module):
    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        check_int("rank", rank, minimum=1)  # alpha / rank below: a rank of 0 has no update to scale
        check_number("alpha", alpha)  # a NaN or infinite alpha would make every output NaN
        self.A = torch.nn.Parameter(torch.empty(in_dim, rank))
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # random, like a Linear layer's default init
        self.B = torch.nn.Parameter(torch.zeros(rank, out_dim))  # zero: the update B A starts at zero
        self.alpha = alpha
        self.rank = rank
        self.scaling = alpha / rank

    def forward(self, x):
        return self.scaling * (x @ self.A @ self.B)


class LinearWithLoRA(torch.nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model, rank, alpha):
    check_int("rank", rank, minimum=1)  # checked before any layer is replaced
    check_number("alpha", alpha)
    for name, module in model.named_children():
        if isinstance(module, torch.nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))  # wrap the Linear layer
        else:
            replace_linear_with_lora(module, rank, alpha)  # recurse into the children's children


def num_parameters(model, trainable_only=True):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def merge_lora(layer: LinearWithLoRA) -> torch.nn.Linear:
    """A plain nn.Linear whose weight is W + (alpha/rank) (A B)^T: the same outputs, without the extra matmuls."""
    linear = layer.linear
    merged = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                             device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        merged.weight.copy_(linear.weight + layer.lora.scaling * (layer.lora.A @ layer.lora.B).T)
        if linear.bias is not None:
            merged.bias.copy_(linear.bias)
    return merged


def merge_all_lora(model) -> None:
    """Replace every LinearWithLoRA in `model` by its merged nn.Linear, in place."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            setattr(model, name, merge_lora(module))
        else:
            merge_all_lora(module)
