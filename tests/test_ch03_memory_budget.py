"""Chapter 03's memory budget: each term against a hand calculation, the weights against a real 4-bit model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from utils.lessons.memory_budget import CUDA_CONTEXT_BYTES, GIB, T4_USABLE_BYTES, budget_parameter_counts, memory_budget
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


def _saved_for_backward(model, batch_size: int, seq_len: int) -> int:
    """Bytes of the tensors autograd keeps for the backward pass in one forward of `model`, weights excluded:
    measured by PyTorch, independent of the budget's formulas."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(batch_size, seq_len, model.config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.transformer(inputs_embeds=x, attention_mask=torch.ones(batch_size, seq_len, dtype=torch.long))
    return sum(storages.values())


@pytest.mark.parametrize(("h", "a", "s", "b"), [(256, 4, 128, 2), (512, 8, 64, 4), (128, 2, 32, 2)])
def test_activation_terms_match_what_autograd_keeps(h, a, s, b):
    """One block's tensors in a full fine-tune in bf16 (every weight trains, so every linear keeps its input) against
    the bytes a real BLOOM block keeps for backward (the difference between a 2-layer and a 1-layer model): equal
    but for LayerNorm's statistics, which the budget leaves out. And gradient checkpointing's one input per block."""
    from transformers import BloomConfig, BloomForCausalLM

    def bloom(layers, checkpointing):
        torch.manual_seed(0)
        model = BloomForCausalLM(BloomConfig(vocab_size=256, hidden_size=h, n_layer=layers, n_head=a, use_cache=False))
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        return model.to(torch.bfloat16).train()

    kept = {gc: _saved_for_backward(bloom(2, gc), b, s) - _saved_for_backward(bloom(1, gc), b, s) for gc in (False, True)}
    budgets = {gc: memory_budget(bloom(2, gc), weight_bits=16, lora_r=0, batch_size=b, seq_len=s, activation_bytes=2,
                                 gradient_checkpointing=gc) for gc in (False, True)}
    one_layer = budgets[False].terms["activations"] / 2  # the budget keeps every layer's activations without checkpointing
    # 32sbh + 6as^2b: Korthikanti's 34sbh + 5as^2b without the dropout masks (BLOOM's dropout is 0), with BLOOM's fp32
    # softmax output (4as^2b) and its bf16 copy for P V (2as^2b)
    assert one_layer == 32 * s * b * h + 6 * a * s * s * b
    assert kept[False] - one_layer == 2 * 2 * s * b * 2  # two LayerNorms' mean and rstd (bf16), left out
    assert kept[True] == s * b * h * 2  # with checkpointing a block keeps its bf16 input only
    assert budgets[True].terms["activations"] == 2 * kept[True] + one_layer  # ... plus one layer's while recomputed


def _recipe_model(lora_r: int = 4):
    """The tiny BLOOM as chapter 03 trains it on a T4: 4-bit NF4 at fp16 compute, prepare_model_for_kbit_training,
    LoRA on query_key_value (no LoRA dropout: on a CPU its mask would be fp32, on a GPU a 1-byte bool)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from utils.ch03_qlora import keep_4bit_trainable

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=config,
                                                 dtype=torch.float16)
    keep_4bit_trainable(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_r, lora_dropout=0.0,
                                             target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    model.base_model.model.activation_checkpointing_disable()  # to see one block's own tensors
    return model.train()


def test_the_recipes_activation_dtypes_and_what_one_block_keeps():
    """What the budget's residual_bytes=4, activation_bytes=2 stand for, on a 4-bit BLOOM after prepare at fp16
    compute under fp16 autocast (the recipe on a T4; autocast on the CPU casts BLOOM's matmuls as CUDA's does, and
    its LayerNorm and softmax run in fp32 here as there): the residual stream, the query_key_value output and the
    dense_h_to_4h output (the GELU's input) are fp32, because Linear4bit returns its input's dtype; the attention's
    matmuls and the dense layer after them are fp16. And the tensors block 1 keeps for backward, dtype by dtype,
    are the budget's `layer_activations`."""
    model = _recipe_model()
    block = model.base_model.model.transformer.h[1]
    dtypes, saved, recording = {}, {}, [False]

    def dtype_of(name, of_input=False):
        def hook(_module, args, output):
            tensor = args[0] if of_input else (output[0] if isinstance(output, tuple) else output)
            dtypes[name] = tensor.dtype
        return hook

    for module, name, of_input in [(block, "residual stream", True), (block.self_attention.query_key_value,
                                   "query_key_value output", False), (block.self_attention.dense, "dense input", True),
                                   (block.self_attention.dense, "dense output", False),
                                   (block.mlp.dense_h_to_4h, "dense_h_to_4h output", False),
                                   (block.mlp.gelu_impl, "GELU input", True)]:
        module.register_forward_hook(dtype_of(name, of_input))
    block.register_forward_pre_hook(lambda *_: recording.__setitem__(0, True))
    block.register_forward_hook(lambda *_: recording.__setitem__(0, False))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    b, s = 2, 32
    h = model.config.hidden_size

    def keep(tensor):
        storage = tensor.untyped_storage()
        # LayerNorm's statistics, LoRA's r-wide output and autocast's copies of the LoRA weights are left out, as
        # the budget leaves them out: every tensor it counts has at least s*b*h values
        if recording[0] and storage.data_ptr() not in weights and tensor.numel() >= s * b * h // 2:
            saved[storage.data_ptr()] = (tensor.dtype, storage.nbytes())
        return tensor

    ids = torch.randint(5, 200, (b, s))
    with torch.autocast("cpu", dtype=torch.float16), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # it trains: the LoRA weights get gradients
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert dtypes == {"residual stream": torch.float32, "query_key_value output": torch.float32,
                      "dense input": torch.float16, "dense output": torch.float16,
                      "dense_h_to_4h output": torch.float32, "GELU input": torch.float32}
    layer = memory_budget(model.base_model.model, lora_r=4, target_modules=["query_key_value"], batch_size=b,
                          seq_len=s, activation_bytes=2, residual_bytes=4, unquantized_bytes=4).layer
    assert layer["LayerNorm 1 input (residual stream)"].dtype_bytes == dtypes["residual stream"].itemsize
    assert layer["GELU input (dense_h_to_4h output)"].dtype_bytes == dtypes["GELU input"].itemsize
    assert layer["dense input (attention context)"].dtype_bytes == dtypes["dense input"].itemsize
    assert not layer["dense input (attention context)"].kept  # a frozen 4-bit layer keeps no input
    measured = {dtype.itemsize: sum(n for d, n in saved.values() if d == dtype) for dtype in (torch.float32, torch.float16)}
    budgeted = {size: sum(t.bytes for t in layer.values() if t.dtype_bytes == size) for size in (4, 2)}
    assert measured == budgeted
    assert {d for d, _ in saved.values()} == {torch.float32, torch.float16}
    # fp32: both LayerNorm inputs, the softmax output, the GELU input; fp16: Q, K, V, the probabilities, LoRA's input
    a = model.config.n_head
    assert budgeted == {4: (2 * s * b * h + a * s * s * b + 4 * s * b * h) * 4, 2: (4 * s * b * h + a * s * s * b) * 2}


def test_lora_term_is_what_peft_trains(bloom7b):
    from peft import LoraConfig, get_peft_model

    term = memory_budget(bloom7b, lora_r=16, target_modules=("query_key_value",)).terms["LoRA weights + grads + AdamW"]
    peft_model = get_peft_model(meta_model("bigscience/bloom-7b1"), LoraConfig(r=16, target_modules=["query_key_value"]))
    trainable = peft_model.get_nb_trainable_parameters()[0]
    assert trainable == 7_864_320 and term == trainable * 16  # fp32 weight, gradient and AdamW's two moments


@pytest.mark.parametrize("double_quant", [True, False], ids=["double quantization", "fp32 absmax"])
def test_quantization_terms_match_what_bitsandbytes_stores(bloom7b, double_quant):
    """bitsandbytes' NF4 codes and absmax constants for one of bloom-7b1's h x h weights, against the budget's rates."""
    import bitsandbytes.functional as bnbf

    from utils.lessons.quantization import quantization_constant_bits

    torch.manual_seed(0)
    weight = torch.randn(H, H)
    codes, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    constants = state.absmax.numel() * state.absmax.element_size()
    if state.nested:
        constants += state.state2.absmax.numel() * state.state2.absmax.element_size()
    assert codes.numel() * codes.element_size() == weight.numel() * 4 / 8
    assert constants == weight.numel() * quantization_constant_bits(64, double_quant) / 8
    terms = memory_budget(bloom7b, double_quant=double_quant).terms
    n = budget_parameter_counts(bloom7b)
    assert terms["quantized weights"] == n.quantized * 4 / 8
    assert terms["quantization constants"] == n.quantized * quantization_constant_bits(64, double_quant) / 8


def test_the_total_is_the_sum_and_fits_a_t4(bloom7b):
    b, s = 4, 256
    terms = memory_budget(bloom7b, batch_size=b, seq_len=s).terms
    assert terms["unquantized weights"] == 1_029_218_304 * 2  # fp16, the count checked by hand above
    assert terms["logits"] == b * s * V * (2 + 4 + 4)  # fp16 logits, their fp32 upcast, the fp32 log-softmax
    assert terms["CUDA context"] == CUDA_CONTEXT_BYTES
    total = memory_budget(bloom7b, batch_size=b, seq_len=s).total
    assert total == pytest.approx(sum(terms.values()))
    assert 7 * GIB < total < 15 * GIB  # fits a T4's 15 usable GiB with checkpointing ...
    # an fp16 stream (no prepare), LoRA on query_key_value: both LayerNorm inputs, LoRA's copy of the qkv input, Q, K,
    # V, the fp32 softmax output and its fp16 copy, the GELU's input, per block; the frozen 4-bit linears keep nothing
    sbh, as2b = s * b * H, A * s * s * b
    layer = 2 * sbh * 2 + sbh * 2 + 3 * sbh * 2 + as2b * (4 + 2) + 4 * sbh * 2
    assert terms["activations"] == L * sbh * 2 + layer  # with checkpointing: the stream at each block, one block
    no_checkpointing = memory_budget(bloom7b, batch_size=b, seq_len=s, gradient_checkpointing=False)
    assert no_checkpointing.terms["activations"] == L * layer
    assert no_checkpointing.total - total == pytest.approx(3.39 * GIB, abs=0.01 * GIB)


def test_the_recipe_as_it_runs_fused_head_and_fp32_residual_stream(bloom7b):
    """trl 1.16's fused LM head never holds the logits; after prepare the stream and what the 4-bit linears compute
    from it are fp32, the attention's matmuls fp16; frozen 4-bit linears keep no input."""
    b, s = 4, 256
    budget = memory_budget(bloom7b, batch_size=b, seq_len=s, unquantized_bytes=4, activation_bytes=2,
                           residual_bytes=4, loss="fused", lora_dropout=0.05)
    recipe = budget.terms
    sbh, as2b = s * b * H, A * s * s * b
    layer = (2 * sbh * 4  # both LayerNorm inputs: the fp32 residual stream
             + 2 * sbh * 2 + sbh * 2  # Q and K for Q K^T, V for P V: autocast's fp16 copies of the fp32 qkv output
             + as2b * 4 + as2b * 2  # the fp32 softmax output and its fp16 copy for P V
             + 4 * sbh * 4  # the GELU's input: dense_h_to_4h's output, fp32 (Linear4bit returns its input's dtype)
             + sbh * 2 + sbh * 1)  # LoRA's fp16 copy of query_key_value's input, and its dropout mask
    assert sum(t.bytes for t in budget.layer.values()) == layer == 45 * sbh  # here as2b = 2 sbh
    assert recipe["activations"] == L * sbh * 4 + layer  # fp32 stream at every checkpoint, one block recomputed
    assert memory_budget(bloom7b, batch_size=b, seq_len=s, unquantized_bytes=4, activation_bytes=2, residual_bytes=4,
                         loss="fused", lora_dropout=0.05, gradient_checkpointing=False).terms["activations"] == L * layer
    # one [1024 tokens, 32768] fp16 tile, one [32768, 4096] fp16 slice of the fp32 head, fp32 dL/dhidden, statistics
    assert recipe["loss (fused LM head)"] == 1024 * 32768 * 2 + 32768 * H * 2 + 1024 * H * 4 + 1024 * 8 * 4
    assert "logits" not in recipe
    full = memory_budget(bloom7b, batch_size=b, seq_len=s, unquantized_bytes=4).terms["logits"]
    assert full > 7 * recipe["loss (fused LM head)"]  # 2.39 GiB against 0.33 GiB
    with pytest.raises(ValueError, match="loss"):
        memory_budget(bloom7b, loss="chunked")


def test_the_qlora_papers_7b_figure_against_the_weights(bloom7b):
    """The QLoRA paper's 5,048 MB is a 7B LLaMA's 4-bit model: weights, set beside the budget's weights. bloom-7b1's,
    as loaded with the rest in fp16, are about that; prepare's fp32 upcast adds 2 bytes per unquantized parameter."""
    weights = ("quantized weights", "quantization constants", "unquantized weights")
    loaded, prepared = (memory_budget(bloom7b, unquantized_bytes=rest).terms for rest in (2, 4))
    assert [round(sum(terms[k] for k in weights) / 1e6) for terms in (loaded, prepared)] == [5174, 7233]
    assert round((loaded["quantized weights"] + loaded["quantization constants"]) / 1e6) == 3116
    assert [round(terms["unquantized weights"] / 1e6) for terms in (loaded, prepared)] == [2058, 4117]
    assert abs(sum(loaded[k] for k in weights) - 5_048e6) < 0.03 * 5_048e6
    # LLaMA-7B's published shape (hidden 4096, 32 blocks, MLP 11008, vocabulary 32,000) against bloom-7b1's
    llama_linears, llama_embeddings = 32 * (4 * 4096**2 + 3 * 4096 * 11008), 2 * 32_000 * 4096
    assert (round(llama_linears / 1e9, 1), round(L * 12 * H * H / 1e9, 1)) == (6.5, 6.0)
    assert (round(llama_embeddings / 1e9, 2), round(V * H / 1e9, 2)) == (0.26, 1.03)


def _recipe_budget(bloom7b, b=4, s=256, checkpointing=True, loss="fused"):
    """Chapter 03's recipe as its notebook and README compute it."""
    return memory_budget(bloom7b, batch_size=b, seq_len=s, lora_r=16, target_modules=["query_key_value"],
                         lora_dropout=0.05, unquantized_bytes=4, activation_bytes=2, residual_bytes=4,
                         gradient_checkpointing=checkpointing, loss=loss)


def test_the_figures_quoted_in_prose_are_the_budgets(bloom7b):
    """Every prose figure of the budget is the computed one: the chapter README's table, the course README's and the
    QLoRA notebook's 8.3 GiB, the budget notebook's figures, the environment check's RECIPE_GPU_GB comment."""
    import re

    import nbformat

    from tools import nbexport
    from utils.paths import ROOT

    columns = [_recipe_budget(bloom7b), _recipe_budget(bloom7b, checkpointing=False), _recipe_budget(bloom7b, 1, 512),
               _recipe_budget(bloom7b, loss="full")]
    readme = (ROOT / "03-qlora-bloom" / "README.md").read_text()
    rows = {"quantized weights": "quantized weights (NF4)", "quantization constants": "quantization constants",
            "unquantized weights": "unquantized weights (embedding = lm_head, norms, biases; fp32)",
            "LoRA weights + grads + AdamW": "LoRA weights + grads + AdamW (16 B/param)",
            "activations": "activations (fp32 stream at the checkpoints; one block: below)"}
    for term, label in rows.items():
        assert f"| {label} | " + " | ".join(f"{b.terms[term] / GIB:.3f}" for b in columns) + " |" in readme, term
    loss = [b.terms.get("loss (fused LM head)", b.terms.get("logits")) / GIB for b in columns]
    assert "| " + " | ".join(f"{x:.3f}" for x in loss) + " |" in readme
    assert "| **total** | " + " | ".join(f"**{b.total / GIB:.3f}**" for b in columns) + " |" in readme
    spare = [(T4_USABLE_BYTES - b.total) / GIB for b in columns[:2]]
    assert f"about {spare[0]:.1f} GiB spare" in readme and f"about {spare[1]:.0f} GiB spare" in readme
    layer = columns[0].layer
    assert f"{sum(t.bytes for t in layer.values()) / 2**20:.0f} MiB (`memory_budget(...).layer_table()`" in readme
    recipe = f"{columns[0].total / GIB:.1f} GiB"
    assert f"bloom-7b1 in 4-bit on a 16 GB T4: **{recipe} predicted**" in readme
    assert f"the recipe's {recipe} each, predicted above" in readme
    assert f"a 16 GB GPU (T4): {recipe} predicted" in (ROOT / "README.md").read_text()
    notebook = (ROOT / "03-qlora-bloom" / "03_qlora_bloom_sfttrainer.ipynb").read_text()
    assert f"(about {recipe} predicted, below;" in notebook
    cells = nbformat.read(ROOT / "03-qlora-bloom" / "02_memory_budget.ipynb", as_version=4).cells
    lesson = " ".join(" ".join(c.source for c in cells if c.cell_type == "markdown").split())  # line breaks as spaces
    loaded = {bits: memory_budget(bloom7b, weight_bits=bits).terms for bits in (4, 16)}
    weights = [sum(loaded[bits][k] for k in ("quantized weights", "quantization constants", "unquantized weights"))
               for bits in (4, 16)]
    assert f"{weights[0] / GIB:.1f} GiB in NF4 with double quantization against {weights[1] / GIB:.1f} GiB in fp16" in lesson
    no_dq = memory_budget(bloom7b, double_quant=False).terms["quantization constants"]
    assert f"from {no_dq / GIB:.2f} GiB to {loaded[4]['quantization constants'] / GIB:.2f}" in lesson
    embedding = [b.terms["unquantized weights"] / GIB for b in (memory_budget(bloom7b), columns[0])]
    assert f"({embedding[0]:.1f} GiB in fp16, {embedding[1]:.1f} GiB in fp32)" in lesson
    logits = columns[3].terms["logits"]
    assert f"that is {logits / GIB:.1f} GiB, almost four times the activations" in lesson
    assert 3.5 < logits / columns[0].terms["activations"] < 4
    assert (f"would add {(columns[3].total - columns[0].total) / GIB:.1f} GiB to the recipe, "
            f"{columns[3].total / GIB:.1f} GiB in all") in lesson
    check = nbexport.load("01-peft-setup/00_environment_check.ipynb")
    need = check.RECIPE_GPU_GB["03 bloom-7b1 4-bit QLoRA"]
    source = "".join(cell.source for cell in nbformat.read(check.__file__, as_version=4).cells)
    assert re.search(rf'"03 bloom-7b1 4-bit QLoRA": {need},  # {re.escape(recipe)} predicted by '
                     r'03-qlora-bloom/02_memory_budget\.ipynb', source)
    assert need > columns[0].total / GIB  # ... and the environment check's estimate holds it


def test_the_residual_stream_is_fp32_after_prepare_at_fp16_compute():
    """What residual_bytes=4 stands for: at fp16 compute the blocks of a prepared 4-bit model pass fp32 states."""
    from peft import prepare_model_for_kbit_training

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float16)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=config,
                                                 dtype=torch.float16)
    seen = {}
    for when in ("loaded", "prepared"):
        hook = model.transformer.h[1].register_forward_pre_hook(
            lambda _m, args, when=when: seen.__setitem__(when, args[0].dtype))
        with torch.no_grad():
            model(torch.tensor([[5, 6, 7, 8]]))
        hook.remove()
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert seen == {"loaded": torch.float16, "prepared": torch.float32}


def test_trl_sft_training_never_holds_the_full_logits(tmp_path):
    """Measured on a CPU: an SFTTrainer step at BLOOM's real vocabulary (250,880) and the recipe's batch 4 x 256
    adds far less than the 2.4 GiB of logits a textbook budget (loss="full") predicts."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM
    from trl import SFTConfig, SFTTrainer

    from utils.machine import peak_memory

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))
    torch.manual_seed(0)
    base = BloomForCausalLM(BloomConfig(vocab_size=V, hidden_size=64, n_layer=1, n_head=4))
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=["query_key_value"],
                                            task_type="CAUSAL_LM"))
    text = " ".join(["the painter walked to the harbour and looked at the boats"] * 40)  # > 256 tokens
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, max_length=256,
                     use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
                     activation_checkpointing=True)  # trl's default, by transformers' current name
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": [text] * 4}),
                         processing_class=tokenizer)
    with peak_memory("cpu") as fused_step:
        trainer.train()
    # the textbook step on the same batch: logits, their fp32 copy and log-softmax held for backward
    batch = {"input_ids": torch.randint(0, len(tokenizer), (4, 256))}
    with peak_memory("cpu") as plain_step:
        model(**batch, labels=batch["input_ids"]).loss.backward()
    full = memory_budget(base, batch_size=4, seq_len=256, activation_bytes=4, loss="full").terms["logits"]
    print(f"added: SFTTrainer step {fused_step.added_bytes / GIB:.2f} GiB, plain step {plain_step.added_bytes / GIB:.2f}"
          f" GiB, full logits budgeted {full / GIB:.2f} GiB")
    assert plain_step.added_bytes > 0.8 * full  # the full-logits budget describes a plain loop ...
    assert fused_step.added_bytes < 0.5 * plain_step.added_bytes  # ... not trl's SFTTrainer


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
