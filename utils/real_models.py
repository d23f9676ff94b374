"""The real models' published configurations, copied from their config.json on the Hub, for real-scale numbers without a
download: parameter counts and memory budgets cost nothing on PyTorch's meta device (tests/test_real_models.py checks
the counts against the published ones, which it records)."""

from __future__ import annotations

from utils.errors import CourseError

#: model id -> (transformers config class, the fields of its published config.json that define its shapes)
REAL_CONFIGS: dict[str, tuple[str, dict[str, object]]] = {
    "EleutherAI/gpt-j-6b": ("GPTJConfig", {
        "vocab_size": 50400, "n_positions": 2048, "n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64,
        "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False,
        "bos_token_id": 50256, "eos_token_id": 50256,
    }),
    "bigscience/bloom-7b1": ("BloomConfig", {
        "vocab_size": 250880, "hidden_size": 4096, "n_layer": 30, "n_head": 32, "layer_norm_epsilon": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    }),
    "bigscience/bloomz-560m": ("BloomConfig", {
        "vocab_size": 250880, "hidden_size": 1024, "n_layer": 24, "n_head": 16, "layer_norm_epsilon": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    }),
    **{
        f"openai-community/{name}": ("GPT2Config", {
            "vocab_size": 50257, "n_positions": 1024, "n_embd": emb, "n_layer": layers, "n_head": heads,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256,
        })
        for name, emb, layers, heads in [("gpt2", 768, 12, 12), ("gpt2-medium", 1024, 24, 16),
                                         ("gpt2-large", 1280, 36, 20), ("gpt2-xl", 1600, 48, 25)]
    },
}


def real_config(model_id: str):
    """The transformers config of a real model, built from its published values (no network)."""
    import transformers

    if model_id not in REAL_CONFIGS:
        raise CourseError(f"no published config recorded for {model_id!r}; known: {', '.join(REAL_CONFIGS)}")
    class_name, values = REAL_CONFIGS[model_id]
    return getattr(transformers, class_name)(**values)


def meta_model(model_id: str):
    """The real model's causal-LM architecture on the meta device: every shape, no memory, no download."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(real_config(model_id))
