"""A memory budget for a (Q)LoRA fine-tune, predicted from the model's shapes before anything is loaded.

Peak memory = frozen weights (quantized linears, their quantization constants, the unquantized rest: embeddings,
norms, biases, lm_head) + trainable state (LoRA weights, gradients and AdamW's two moments, all fp32: 16 bytes
per trainable parameter) + activations kept for the backward pass (with or without gradient checkpointing) +
the loss's working memory (the full logits of a plain loop, or the tiles of trl's fused, chunked LM head) + the
CUDA context.

Two things the recipe does that a textbook budget misses. `prepare_model_for_kbit_training` upcasts the
embeddings to fp32, so the residual stream between blocks, which gradient checkpointing keeps, is fp32
(`residual_bytes=4`), twice what fp16 activations would take. And trl 1.16's SFTTrainer computes the loss through
a fused LM head (`trl/trainer/utils.py` `add_fused_lm_head`, `trl/kernels/chunked_logprob.py`) that projects
[4096 tokens x 32768 vocabulary] tiles and never holds the [batch, sequence, vocabulary] logits (`loss="fused"`);
a plain loop (chapter 02) holds them (`loss="full"`).

It counts parameters on a model built on the meta device (`utils.real_models.meta_model`), so the budget of
bigscience/bloom-7b1 costs no memory and no download. Every term is a formula written out below; chapter 03's
tests check each against a hand calculation, and the weights against `get_memory_footprint()` of a model
quantized for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from utils.checks import check_choice, check_int, check_names
from utils.errors import CourseArgumentError

GIB = 2**30
#: The CUDA context plus cuBLAS workspaces and the caching allocator's slack: an estimate (typically 0.3-0.8 GiB).
CUDA_CONTEXT_BYTES = GIB // 2
#: Bytes per trainable parameter: fp32 weight (4) + fp32 gradient (4) + AdamW's two fp32 moments (4 + 4).
TRAINABLE_BYTES_PER_PARAM = 16
#: A free Colab T4: 15 GiB of its 16 GB is usable by PyTorch.
T4_USABLE_BYTES = 15 * GIB
#: trl 1.16's fused LM head: tiles of this many tokens x this many vocabulary entries (trl/kernels/chunked_logprob.py
#: TOKEN_CHUNK_SIZE, trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE).
FUSED_TOKEN_TILE, FUSED_VOCAB_TILE = 4096, 32768


@dataclass(frozen=True)
class ParameterCounts:
    """The parameters a budget needs, counted from a model's modules."""

    quantized: int  # weights of the linears that bitsandbytes replaces (every nn.Linear but the output head)
    quantized_rows: int  # their output features (LLM.int8 keeps one fp32 scale per row)
    unquantized: int  # everything else: embeddings, norms, biases, an untied lm_head
    lora: int  # A and B of every targeted linear at the budget's rank
    layers: int
    hidden: int
    heads: int
    vocab: int


def budget_parameter_counts(model, target_modules=("query_key_value",), lora_r: int = 16) -> ParameterCounts:
    """Count quantizable, unquantized and LoRA parameters of `model` (real or on the meta device).

    bitsandbytes (through transformers) quantizes the weight of every `nn.Linear` except the output head;
    biases stay in the compute dtype. Tied parameters (BLOOM's lm_head is its input embedding) count once.
    A target the model has no linear layer for is a CourseError (its LoRA term would silently be 0).
    """
    import torch

    check_int("lora_r", lora_r, minimum=0, hint="0: no LoRA (a full fine-tune or inference)")
    target_modules = check_names("target_modules", target_modules) if lora_r else list(target_modules or ())
    head = model.get_output_embeddings()
    quantized = rows = lora = 0
    found, linears = set(), set()
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit and Linear8bitLt are torch.nn.Linear subclasses: one check counts them all
        if not isinstance(module, torch.nn.Linear) or module is head or ".lora_" in name:  # a peft model's own adapters are not frozen weights
            continue
        quantized += module.in_features * module.out_features
        rows += module.out_features
        parts = name.split(".")
        leaf = parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1]  # peft wraps the linear
        linears.add(leaf)
        if leaf in target_modules:
            lora += lora_r * (module.in_features + module.out_features)
            found.add(leaf)
    missing = [t for t in target_modules if t not in found] if lora_r else []
    if missing:
        raise CourseArgumentError(f"target_modules {missing} are not linear layers of {type(model).__name__} (its linear layers: "
                          f"{sorted(linears)}); their LoRA term would be 0: name the model's own modules")
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    # A quantized Params4bit reports half its element count (two 4-bit values per byte): count real models' way.
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            total += module.in_features * module.out_features - module.weight.numel()
    config = model.config
    return ParameterCounts(
        quantized=quantized,
        quantized_rows=rows,
        unquantized=total - quantized,
        lora=lora,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        vocab=config.vocab_size,
    )


def quantization_constant_bits(blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256) -> float:
    """Bits per parameter spent on the blockwise absmax constants.

    One fp32 absmax per block of `blocksize` weights: 32 / 64 = 0.5 bits. Double quantization stores those
    absmaxes in 8 bits, with one fp32 constant per `blocksize2` of them: 8 / 64 + 32 / (64 * 256) = 0.127 bits.
    """
    check_int("blocksize", blocksize, minimum=1)
    check_int("blocksize2", blocksize2, minimum=1)
    if double_quant:
        return 8 / blocksize + 32 / (blocksize * blocksize2)
    return 32 / blocksize


@dataclass
class MemoryBudget:
    """The predicted peak memory of a fine-tuning recipe, term by term (bytes)."""

    terms: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def table(self, unit: int = GIB):
        """The terms and their total as a pandas Series in GiB (or another `unit`)."""
        import pandas as pd

        series = pd.Series({**self.terms, "total": self.total}, name="GiB") / unit
        return series.round(3)


def memory_budget(
    model,
    *,
    weight_bits: int = 4,
    double_quant: bool = True,
    blocksize: int = 64,
    unquantized_bytes: int = 2,
    lora_r: int = 16,
    target_modules=("query_key_value",),
    batch_size: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = True,
    activation_bytes: int = 2,
    residual_bytes: int | None = None,
    loss: str = "full",
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    trainable_bytes: int = TRAINABLE_BYTES_PER_PARAM,
) -> MemoryBudget:
    """Predict the peak memory of training `model` (built on the meta device, or loaded) with LoRA.

    weight_bits: 4 (NF4, blockwise absmax constants), 8 (LLM.int8, one fp32 scale per row) or 16/32 (not
    quantized) for the linears' weights; unquantized_bytes: bytes
    per parameter of everything not quantized (2 for fp16/bf16, 4 for fp32); activation_bytes: bytes per
    activation value (2 in fp16/bf16 autocast, 4 in fp32). Activations follow Korthikanti et al. (2022),
    "Reducing Activation Recomputation in Large Transformer Models": s*b*h*(34 + 5*a*s/h) bytes per layer in
    16-bit; with gradient checkpointing only each layer's input (s*b*h values) is kept, plus one layer's full
    activations while it is recomputed. residual_bytes: bytes per value of the residual stream that checkpointing
    keeps at each block's input (default `activation_bytes`; 4 after `prepare_model_for_kbit_training`, which
    makes the embeddings, and so the stream, fp32). loss: "full" holds the logits (the lm_head output in the
    compute dtype, its fp32 upcast and the fp32 log-softmax that cross-entropy keeps for backward); "fused" is trl
    1.16's chunked LM head: one [4096, 32768] tile in the compute dtype (and one [32768, hidden] slice of an fp32
    lm_head cast to it), the fp32 gradient of the final hidden states and a few fp32 numbers per token, never the
    logits. trainable_bytes: 16 for fp32 LoRA weights with fp32
    gradients and AdamW moments (trl 1.16 casts a quantized model's adapters to bf16, which would make it 8; the
    course casts them back).
    """
    check_choice("weight_bits", weight_bits, (4, 8, 16, 32), hint="4 (NF4), 8 (int8), 16 or 32 (not quantized)")
    check_int("batch_size", batch_size, minimum=1)
    check_int("seq_len", seq_len, minimum=1)
    check_int("blocksize", blocksize, minimum=1)
    check_choice("unquantized_bytes", unquantized_bytes, (1, 2, 4, 8), hint="2 for fp16/bf16, 4 for fp32")
    check_choice("activation_bytes", activation_bytes, (1, 2, 4, 8), hint="2 in fp16/bf16 autocast, 4 in fp32")
    check_int("cuda_context_bytes", cuda_context_bytes, minimum=0)
    check_int("trainable_bytes", trainable_bytes, minimum=1)
    check_choice("loss", loss, ("full", "fused"), hint="'full' (a plain loop's logits) or 'fused' (trl's chunked LM head)")
    residual_bytes = activation_bytes if residual_bytes is None else residual_bytes
    check_choice("residual_bytes", residual_bytes, (1, 2, 4, 8), hint="4 after prepare_model_for_kbit_training (fp32)")
    n = budget_parameter_counts(model, target_modules=target_modules, lora_r=lora_r)
    s, b, h, a = seq_len, batch_size, n.hidden, n.heads
    quantized = weight_bits < 16
    if weight_bits == 4:
        constants = n.quantized * quantization_constant_bits(blocksize, double_quant) / 8
    elif weight_bits == 8:
        constants = n.quantized_rows * 4
    else:
        constants = 0.0
    full_layer = s * b * h * (34 + 5 * a * s / h) * activation_bytes / 2
    if gradient_checkpointing:
        activations = n.layers * s * b * h * residual_bytes + full_layer
    else:
        activations = n.layers * full_layer
    tokens = b * s
    if loss == "full":
        logits = tokens * n.vocab * (activation_bytes + 4 + 4)
    else:  # one tile at a time; the gradient of the hidden states accumulates in fp32; 8 fp32 statistics per token
        tile = min(tokens, FUSED_TOKEN_TILE) * min(n.vocab, FUSED_VOCAB_TILE) * activation_bytes
        # an fp32 lm_head (after prepare) is cast to the compute dtype one [32768, hidden] slice at a time
        weight_slice = min(n.vocab, FUSED_VOCAB_TILE) * h * activation_bytes if unquantized_bytes != activation_bytes else 0
        logits = tile + weight_slice + tokens * h * 4 + tokens * 8 * 4
    terms = {
        "quantized weights": n.quantized * weight_bits / 8 if quantized else 0.0,
        "quantization constants": constants,
        "unquantized weights": (n.unquantized + (0 if quantized else n.quantized)) * unquantized_bytes,
        "LoRA weights + grads + AdamW": n.lora * trainable_bytes,
        "activations": activations,
        "logits" if loss == "full" else "loss (fused LM head)": logits,
        "CUDA context": cuda_context_bytes,
    }
    return MemoryBudget(terms)
