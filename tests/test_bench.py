"""The benchmark harness's pieces on tiny shapes: FLOP counts, padding waste, the sampler, the table writer,
interleaved timing, the LoRA recipes' equivalence, and the GPU section's random quantized models (on the CPU)."""

from __future__ import annotations

import pytest
import torch

from bench.harness import Timing, markdown_table, matmul_parameters, time_interleaved, training_flops, write_results
from bench.run import build_variant, lora_targets, optimizer_state_bytes
from bench.sampler import length_grouped_batches, padding_fraction, shuffled_batches

TINY = {"vocab_size": 97, "context_length": 32, "emb_dim": 16, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
        "qkv_bias": True}


def test_training_flops_formula():
    assert training_flops(params=1000, tokens=10) == 6 * 1000 * 10
    # PaLM's attention term: 12 x layers x seq x emb per token
    assert training_flops(params=1000, tokens=10, n_layers=2, seq_len=5, emb_dim=8) == 60_000 + 12 * 2 * 5 * 8 * 10


def test_matmul_parameters_counts_linear_weights_once():
    from utils.lessons.gpt import GPTModel

    model = GPTModel(TINY)
    e, v, layers = TINY["emb_dim"], TINY["vocab_size"], TINY["n_layers"]
    per_block = 4 * e * e + 2 * (4 * e * e)  # q, k, v, out; the two feed-forward layers
    assert matmul_parameters(model) == layers * per_block + e * v  # + the output head; embeddings not counted
    tied = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(4, 3))
    tied[1].weight = tied[0].weight  # the same Parameter twice counts once
    assert matmul_parameters(tied) == 12


def test_padding_fraction_by_hand():
    lengths = [2, 8, 3, 8]  # 21 real tokens
    # mixed batches {2, 8} and {3, 8}: 2 x 8 + 2 x 8 = 32 positions
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == 1 - 21 / 32
    # grouped batches {8, 8} and {2, 3}: 2 x 8 + 2 x 3 = 22 positions
    assert padding_fraction(lengths, [[1, 3], [0, 2]]) == 1 - 21 / 22
    assert padding_fraction(lengths, [[1, 3], [0], [2]]) == 0.0  # equal lengths, or alone: no padding
    assert padding_fraction(lengths, [[0, 1, 2, 3]]) == 1 - 21 / 32


def test_length_grouped_batches_cover_every_index_once_and_pad_less():
    lengths = [(i * 37) % 100 + 1 for i in range(200)]
    batches = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert len(batches) == 25 and all(len(b) == 8 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(200))
    plain = shuffled_batches(200, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in plain for i in b) == list(range(200))
    assert padding_fraction(lengths, batches) < padding_fraction(lengths, plain) / 2
    again = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert again == batches != length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))  # the seed's


def test_transformers_groups_by_length_through_train_sampling_strategy():
    """What chapter 02 names: transformers 5's option is train_sampling_strategy="group_by_length" (its
    LengthGroupedSampler, which chapter 02 uses directly); the old group_by_length=True is gone."""
    from transformers import TrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    args = TrainingArguments(output_dir="unused", train_sampling_strategy="group_by_length", report_to="none")
    assert args.train_sampling_strategy == "group_by_length"
    with pytest.raises(TypeError, match="group_by_length"):
        TrainingArguments(output_dir="unused", group_by_length=True)
    sampler = LengthGroupedSampler(batch_size=4, lengths=list(range(1, 41)), generator=torch.Generator().manual_seed(0))
    assert sorted(sampler) == list(range(40))


def test_markdown_table_and_results_file(tmp_path):
    table = markdown_table([{"a": 1.23456, "b": "x|y"}, {"a": 2}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "| 2 |  |"]
    path = tmp_path / "RESULTS.md"
    text = write_results(path, "Results", {"cpu": "test cpu"}, [("One", "a note", [{"k": 1}])])
    assert path.read_text() == text
    assert "| cpu | test cpu |" in text and "## One" in text and "a note" in text and "| 1 |" in text


def test_time_interleaved_runs_round_robin_after_warmup():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(timings) == {"a", "b"} and all(len(t.seconds) == 3 and t.median >= 0 for t in timings.values())
    assert Timing("x", [1.0, 2.0, 4.0]).median == 2.0 and Timing("x", [1.0, 2.0, 4.0]).spread == 1.5


def test_lora_variants_same_model_same_trainable_parameters():
    torch.manual_seed(0)
    ours = build_variant("LoRA (from scratch)", TINY, rank=4, alpha=8)
    torch.manual_seed(0)
    theirs = build_variant("LoRA (peft)", TINY, rank=4, alpha=8)
    full = build_variant("full fine-tune", TINY, rank=4, alpha=8)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    linears = [m for m in full.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lora_targets(full)) == len(linears) == 6 * TINY["n_layers"] + 1
    assert count(ours) == count(theirs) == sum(4 * (m.in_features + m.out_features) for m in linears)
    x = torch.randint(0, TINY["vocab_size"], (2, 8))
    with torch.no_grad():  # B starts at zero in both: the same outputs as the frozen base (same seed, same weights)
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad])
    ours(x).sum().backward()
    optimizer.step()
    assert optimizer_state_bytes(optimizer) == 2 * 4 * count(ours)  # exp_avg and exp_avg_sq, fp32


def test_gpu_section_builds_random_quantized_models_on_cpu():
    from transformers import AutoConfig

    from bench.gpu import Recipe, lora_model, measure, random_quantized_model
    from utils.smoke import tiny_checkpoint

    cpu = torch.device("cpu")
    config = AutoConfig.from_pretrained(tiny_checkpoint("bloom"))
    model = random_quantized_model(config, 4, torch.bfloat16, cpu)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # BLOOM's tie kept
    assert not any(p.is_meta for p in model.parameters())
    recipe = Recipe("t", "x", 8, ("q_proj", "v_proj"), rank=4, alpha=8, batch=1, seq=8)
    peft_model = lora_model(AutoConfig.from_pretrained(tiny_checkpoint("gptj")), recipe, torch.bfloat16, cpu)
    assert "Linear8bitLt" in {type(m).__name__ for m in peft_model.modules()}
    result = measure(peft_model, 1024, recipe, cpu, torch.bfloat16, warmup=1, steps=1)
    assert result["tokens_per_s"] > 0 and result["peak_bytes"] > 0


def test_gpu_section_runs_the_t4_recipe_on_cpu(tmp_path):
    """bench/gpu.py's CPU part: fp16 autocast with an enabled GradScaler on fp32 LoRA weights, chapter 03's loss
    through trl's fused LM head, and the results written into their own section of a results file."""
    from transformers import AutoConfig

    from bench.gpu import HEADING, Recipe, lora_model, measure, predicted_bytes, replace_section
    from utils.smoke import tiny_checkpoint

    cpu = torch.device("cpu")
    recipe = Recipe("t", "bigscience/bloom-7b1", 4, ("query_key_value",), rank=4, alpha=4, batch=2, seq=16,
                    fused_head=True)
    model = lora_model(AutoConfig.from_pretrained(tiny_checkpoint("bloom")), recipe, torch.float16, cpu)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    result = measure(model, 1024, recipe, cpu, torch.float16, warmup=1, steps=1)
    assert result["tokens_per_s"] > 0
    # the budget the GPU run prints beside its measurement: chapter 03's, with the fused head
    assert 7 * 2**30 < predicted_bytes(Recipe("r", "bigscience/bloom-7b1", 4, ("query_key_value",), batch=4, seq=256,
                                              fused_head=True)) < 9 * 2**30
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## 5. Before\n\nkept\n\n## 6. GPU: real-shape recipes, random weights"
                       "\n\nold\n\n## 7. After\n\nkept too\n")
    replace_section(results, HEADING, "new note", [{"recipe": "x", "tokens/s": 1.5}])
    text = results.read_text()
    assert "old" not in text and "new note" in text and text.count("kept") == 2 and "| x | 1.5 |" in text

