"""A memory budget for a (Q)LoRA fine-tune, predicted from the model's shapes before anything is loaded.

Peak memory = frozen weights (quantized linears, their quantization constants, the unquantized rest: embeddings,
norms, biases, lm_head) + trainable state (LoRA weights, gradients and AdamW's two moments, all fp32: 16 bytes
per trainable parameter) + activations kept for the backward pass (with or without gradient checkpointing) +
the loss's working memory (the full logits of a plain loop, or the tiles of trl's fused, chunked LM head) + the
CUDA context.

Three things the recipe does that a textbook budget misses. `prepare_model_for_kbit_training` upcasts the
embeddings and layer norms to fp32, so the residual stream is fp32 (`residual_bytes=4`), and bitsandbytes'
`Linear4bit` returns its output in its input's dtype (`bitsandbytes/nn/modules.py`, `Linear4bit.forward`:
`.to(inp_dtype)`), so what a 4-bit linear computes from the stream is fp32 too (the query_key_value output, the
GELU's input): only the attention's matmuls run in fp16 under autocast. Frozen weights keep no input for the
backward pass (a 4-bit `MatMul4Bit` keeps only its weight; a frozen `F.linear` only what the input's gradient
needs), so of Korthikanti et al.'s linear-layer inputs only LoRA's copies remain. And trl 1.16's SFTTrainer computes
the loss through a fused LM head (`trl/trainer/utils.py` `add_fused_lm_head`, `trl/kernels/chunked_logprob.py`) that
projects [4096 tokens x 32768 vocabulary] tiles and never holds the [batch, sequence, vocabulary] logits
(`loss="fused"`); a plain loop (chapter 02) holds them (`loss="full"`).

It counts parameters on a model built on the meta device (`utils.real_models.meta_model`), so the budget of
bigscience/bloom-7b1 costs no memory and no download. Every term is a formula written out below; chapter 03's
tests check each against a hand calculation, the weights against `get_memory_footprint()` of a model
quantized for real, and one block's activations, tensor by tensor and dtype by dtype, against what autograd keeps
in the recipe's conditions (`layer_activations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from utils.checks import check_choice, check_fraction, check_int, check_names
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
    lora_inputs: int = 0  # in_features of every targeted linear, summed: the values per token their LoRA keeps
    attention_dropout: float = 0.0  # the config's dropout on the attention probabilities (BLOOM: 0.0)
    hidden_dropout: float = 0.0  # ... and on the attention's and the MLP's outputs (BLOOM: 0.0; GPT-2: 0.1)


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
    quantized = rows = lora = lora_inputs = 0
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
            lora_inputs += module.in_features
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
        lora_inputs=lora_inputs,
        attention_dropout=_config_float(config, "attention_dropout", "attn_pdrop"),
        hidden_dropout=_config_float(config, "hidden_dropout", "resid_pdrop"),
    )


def _config_float(config, *names: str) -> float:
    """The first of `names` that `config` has (BLOOM's and GPT-2's names for the same dropout), else 0.0 (LLaMA has
    no residual dropout)."""
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


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


@dataclass(frozen=True)
class Activation:
    """One tensor a transformer block keeps for its backward pass: how many values, in which dtype, and whether
    autograd really keeps it (a frozen layer's input, or a second name for a tensor already counted, is not kept)."""

    values: int
    dtype_bytes: int
    kept: bool = True

    @property
    def bytes(self) -> int:
        return self.values * self.dtype_bytes if self.kept else 0


def layer_activations(n: ParameterCounts, *, batch_size: int, seq_len: int, weight_bits: int, lora_r: int,
                      activation_bytes: int, residual_bytes: int, lora_dropout: float = 0.0) -> dict[str, Activation]:
    """The tensors one BLOOM-shaped block keeps for backward, after Korthikanti et al. (2022), "Reducing Activation
    Recomputation in Large Transformer Models", section 4.1: s*b*h*(34 + 5*a*s/h) bytes per layer when every value
    is 16-bit, every linear trains and dropout is on. Their list, term by term, with the dtype each tensor has and
    whether it is kept in a (Q)LoRA fine-tune (s tokens, b sequences, hidden size h, a heads):

    - LayerNorm 1's input, 2sbh in 16 bits: the residual stream (`residual_bytes`: fp32 after
      `prepare_model_for_kbit_training`).
    - the query_key_value input, 2sbh: LayerNorm 1's output (the stream's dtype). A linear keeps its input only for
      its weight's gradient: kept (autocast's copy, `activation_bytes`) when the weights train; a frozen LLM.int8
      layer keeps it too (`MatMul8bitLt` holds its input); a frozen 4-bit or 16-bit layer does not (`MatMul4Bit`
      keeps only its weight). Likewise the dense, dense_h_to_4h and dense_4h_to_h inputs below.
    - Q and K for Q K^T, 4sbh: baddbmm's operands, in the dtype the matmul runs in (`activation_bytes`: autocast
      casts the fp32 query_key_value output to fp16 on a T4 and keeps the copies).
    - the softmax output, 2as^2b: fp32 whatever the compute dtype (BLOOM's `F.softmax(..., dtype=torch.float32)`;
      GPT-J's attention and CUDA autocast's softmax are fp32 too), 4as^2b bytes.
    - the softmax dropout mask, as^2b: one byte per value, kept only when attention dropout > 0 (BLOOM's is 0).
    - the dropout output and V for attention over V, 2as^2b + 2sbh: bmm's operands in `activation_bytes`. The
      probabilities are a tensor of their own only when dropout or a cast made one (else they are the softmax
      output, already counted).
    - the dense input (the attention context, bmm's `activation_bytes` output), 2sbh, and the attention output's
      dropout mask, sbh (kept when hidden dropout > 0).
    - LayerNorm 2's input, 2sbh: the residual stream again.
    - the dense_h_to_4h input, 2sbh: LayerNorm 2's output.
    - the GELU's input, 8sbh: dense_h_to_4h's output. A quantized linear returns its input's dtype (bitsandbytes'
      `.to(inp_dtype)`), so after prepare it is fp32 (`residual_bytes`); an unquantized one returns the compute dtype.
    - the dense_4h_to_h input (the GELU's output, the GELU input's dtype), 8sbh, and the MLP's dropout mask, sbh.
    - and beyond the paper's list, with LoRA: each targeted linear's LoRA keeps its own copy of that linear's input
      (`lora_A`'s operand, `activation_bytes`) and, when `lora_dropout` > 0, a one-byte dropout mask of it.

    Left out, as the paper leaves them: LayerNorm's statistics (2 x s*b fp32 values each), LoRA's r-wide
    intermediate, autocast's copies of the LoRA weights. The dtypes above are tested on a 4-bit BLOOM under fp16
    autocast (tests/test_ch03_memory_budget.py), and the whole table against the tensors autograd keeps.
    """
    s, b, h, a = seq_len, batch_size, n.hidden, n.heads
    sbh, as2b = s * b * h, a * s * s * b
    quantized = weight_bits < 16
    trains = lora_r == 0 and not quantized  # a full fine-tune: every weight trains

    def linear_input(values: int, input_bytes: int) -> Activation:
        """What a linear layer keeps of its input: autocast's copy when its weight trains, the input itself for a
        frozen LLM.int8 layer, nothing for a frozen 4-bit or 16-bit one."""
        if trains:
            return Activation(values, activation_bytes)
        return Activation(values, input_bytes, kept=weight_bits == 8)

    gelu_bytes = residual_bytes if quantized else activation_bytes  # Linear4bit/8bitLt return their input's dtype
    layer = {
        "LayerNorm 1 input (residual stream)": Activation(sbh, residual_bytes),
        "query_key_value input (LayerNorm 1 output)": linear_input(sbh, residual_bytes),
        "Q and K (for Q K^T)": Activation(2 * sbh, activation_bytes),
        "softmax output": Activation(as2b, 4),
        "softmax dropout mask": Activation(as2b, 1, kept=n.attention_dropout > 0),
        "probabilities (for P V)": Activation(as2b, activation_bytes,
                                             kept=n.attention_dropout > 0 or activation_bytes != 4),
        "V (for P V)": Activation(sbh, activation_bytes),
        "dense input (attention context)": linear_input(sbh, activation_bytes),
        "attention output dropout mask": Activation(sbh, 1, kept=n.hidden_dropout > 0),
        "LayerNorm 2 input (residual stream)": Activation(sbh, residual_bytes),
        "dense_h_to_4h input (LayerNorm 2 output)": linear_input(sbh, residual_bytes),
        "GELU input (dense_h_to_4h output)": Activation(4 * sbh, gelu_bytes),
        "dense_4h_to_h input (GELU output)": linear_input(4 * sbh, gelu_bytes),
        "MLP output dropout mask": Activation(sbh, 1, kept=n.hidden_dropout > 0),
    }
    if lora_r and not trains:
        lora_values = s * b * n.lora_inputs // n.layers  # per block: the targeted linears' inputs
        layer["LoRA inputs (lora_A's copies)"] = Activation(lora_values, activation_bytes)
        layer["LoRA dropout masks"] = Activation(lora_values, 1, kept=lora_dropout > 0)
    return layer


@dataclass
class MemoryBudget:
    """The predicted peak memory of a fine-tuning recipe, term by term (bytes), and one block's activations."""

    terms: dict[str, float] = field(default_factory=dict)
    layer: dict[str, Activation] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def table(self, unit: int = GIB):
        """The terms and their total as a pandas Series in GiB (or another `unit`)."""
        import pandas as pd

        series = pd.Series({**self.terms, "total": self.total}, name="GiB") / unit
        return series.round(3)

    def layer_table(self, unit: int = 2**20):
        """One block's activations tensor by tensor: values, dtype, whether kept, and MiB (or another `unit`)."""
        import pandas as pd

        dtype = {1: "1-byte mask", 2: "fp16/bf16", 4: "fp32", 8: "fp64"}
        rows = {name: {"values": t.values, "dtype": dtype[t.dtype_bytes], "kept for backward": t.kept,
                       "MiB": round(t.bytes / unit, 2)} for name, t in self.layer.items()}
        rows["one block"] = {"values": None, "dtype": "", "kept for backward": None,
                             "MiB": round(sum(t.bytes for t in self.layer.values()) / unit, 2)}
        return pd.DataFrame(rows).T


def memory_budget(
    model,
    *,
    weight_bits: int = 4,
    double_quant: bool = True,
    blocksize: int = 64,
    unquantized_bytes: int = 2,
    lora_r: int = 16,
    target_modules=("query_key_value",),
    lora_dropout: float = 0.0,
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
    quantized) for the linears' weights; unquantized_bytes: bytes per parameter of everything not quantized (2 for
    fp16/bf16, 4 for fp32); lora_r = 0 with 16/32-bit weights is a full fine-tune (every weight trains).
    activation_bytes: bytes per value of what the matmuls compute and keep (2 under fp16/bf16 autocast, 4 in fp32);
    residual_bytes: bytes per value of the residual stream (default `activation_bytes`; 4 after
    `prepare_model_for_kbit_training`, which makes the embeddings, and so the stream, fp32), and of what quantized
    linears compute from it. `layer_activations` lists one block's tensors and their dtypes; with gradient
    checkpointing only each block's input (s*b*h values of the stream) is kept, plus one block's activations while
    it is recomputed. lora_dropout: LoRA's dropout (a one-byte mask of each targeted input when > 0).
    loss: "full" holds the logits (the lm_head output in the compute dtype, its fp32 upcast and the fp32
    log-softmax that cross-entropy keeps for backward); "fused" is trl 1.16's chunked LM head: one [4096, 32768]
    tile in the compute dtype (and one [32768, hidden] slice of an fp32 lm_head cast to it), the fp32 gradient of
    the final hidden states and a few fp32 numbers per token, never the logits. trainable_bytes: 16 for fp32 LoRA
    weights with fp32 gradients and AdamW moments (trl 1.16 casts a quantized model's adapters to bf16, which would
    make it 8; the course casts them back).
    """
    check_choice("weight_bits", weight_bits, (4, 8, 16, 32), hint="4 (NF4), 8 (int8), 16 or 32 (not quantized)")
    check_int("batch_size", batch_size, minimum=1)
    check_int("seq_len", seq_len, minimum=1)
    check_int("blocksize", blocksize, minimum=1)
    check_choice("unquantized_bytes", unquantized_bytes, (1, 2, 4, 8), hint="2 for fp16/bf16, 4 for fp32")
    check_choice("activation_bytes", activation_bytes, (1, 2, 4, 8), hint="2 in fp16/bf16 autocast, 4 in fp32")
    check_fraction("lora_dropout", lora_dropout)
    check_int("cuda_context_bytes", cuda_context_bytes, minimum=0)
    check_int("trainable_bytes", trainable_bytes, minimum=1)
    check_choice("loss", loss, ("full", "fused"), hint="'full' (a plain loop's logits) or 'fused' (trl's chunked LM head)")
    residual_bytes = activation_bytes if residual_bytes is None else residual_bytes
    check_choice("residual_bytes", residual_bytes, (1, 2, 4, 8), hint="4 after prepare_model_for_kbit_training (fp32)")
    n = budget_parameter_counts(model, target_modules=target_modules, lora_r=lora_r)
    s, b, h = seq_len, batch_size, n.hidden
    quantized = weight_bits < 16
    if weight_bits == 4:
        constants = n.quantized * quantization_constant_bits(blocksize, double_quant) / 8
    elif weight_bits == 8:
        constants = n.quantized_rows * 4
    else:
        constants = 0.0
    layer = layer_activations(n, batch_size=b, seq_len=s, weight_bits=weight_bits, lora_r=lora_r,
                              activation_bytes=activation_bytes, residual_bytes=residual_bytes,
                              lora_dropout=lora_dropout)
    one_layer = sum(t.bytes for t in layer.values())
    if gradient_checkpointing:  # every block's input (the stream), and one block's activations while recomputed
        activations = n.layers * s * b * h * residual_bytes + one_layer
    else:
        activations = n.layers * one_layer
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
    return MemoryBudget(terms, layer)
