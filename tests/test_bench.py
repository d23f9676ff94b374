"""The benchmark harness's pieces: medians with bootstrap intervals on synthetic timings of known ratios and noise,
the verdicts, adaptive interleaved rounds on a fake clock, the line fit, FLOP counts, padding waste, the results file
read back, the README's Performance block generated from bench/RESULTS.md, RESULTS.md naming only code that exists,
the LoRA recipes' equivalence, and the GPU section's random quantized models (on the CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.harness import (
    MET,
    NO_DIFFERENCE,
    NOT_MET,
    Estimate,
    Ratio,
    Target,
    line_fit,
    markdown_table,
    matmul_parameters,
    median_ci,
    read_results,
    time_rounds,
    training_flops,
    verdict,
    write_results,
)
from bench.padding import length_grouped_batches, padded_positions, padding_fraction, shuffled_batches
from bench.report import README, code_names, readme_block, readme_block_now, unresolved_names
from bench.run import RESULTS, build_variant, lora_targets, optimizer_state_bytes
from utils.paths import ROOT

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


def paired_timings(rng, n: int, truth: float, noise: float, shared: float) -> np.ndarray:
    """n rounds of per-round ratios A/B: A takes `truth` x B's time; every round a shared slow phase (lognormal,
    sigma `shared`) hits both, and each timing has its own lognormal noise (sigma `noise`)."""
    phase = rng.lognormal(0, shared, n)
    return (truth * phase * rng.lognormal(0, noise, n)) / (phase * rng.lognormal(0, noise, n))


def test_median_ci_covers_the_true_ratio_of_noisy_paired_timings():
    rng = np.random.default_rng(1)
    truth, trials = 0.9, 300
    estimates = [median_ci(paired_timings(rng, 8, truth, noise=0.05, shared=0.3), seed=t) for t in range(trials)]
    coverage = sum(e.low <= truth <= e.high for e in estimates) / trials
    assert 0.88 <= coverage <= 0.99  # nominal 95%; the percentile bootstrap of a median covers about 93% at n = 8
    # pairing cancels the shared slow phases (30%): the interval reflects the 5% per-timing noise only
    assert np.mean([e.half_width / e.value for e in estimates]) < 0.08
    assert all(e.low <= e.value <= e.high for e in estimates)


def test_median_ci_small_samples_are_min_to_max_and_reproducible():
    values = [1.0, 1.3, 0.8, 1.1, 0.95]
    assert median_ci(values) == Estimate(1.0, 0.8, 1.3)  # five values: the bootstrap's 2.5% and 97.5% are the extremes
    many = list(np.random.default_rng(0).normal(1.0, 0.05, 40))
    assert median_ci(many) == median_ci(many)  # seeded
    assert median_ci(many).half_width < (max(many) - min(many)) / 4  # and it narrows with more values
    with pytest.raises(ValueError, match="at least 2"):
        median_ci([1.0])


@pytest.mark.parametrize(("target", "low", "high", "expected"), [
    (Target(high=1.0), 0.90, 0.97, MET),
    (Target(high=1.0), 0.98, 1.02, NO_DIFFERENCE),  # straddles the bound
    (Target(high=1.0), 1.01, 1.10, NOT_MET),
    (Target(low=1.0), 1.05, 1.20, MET),
    (Target(low=1.0), 0.85, 0.99, NOT_MET),
    (Target(0.95, 1.05), 0.97, 1.03, MET),
    (Target(0.95, 1.05), 0.90, 0.99, NO_DIFFERENCE),
    (Target(0.95, 1.05), 0.90, 1.10, NO_DIFFERENCE),  # wider than the band: cannot tell
    (Target(0.95, 1.05), 1.06, 1.20, NOT_MET),
])
def test_verdict(target, low, high, expected):
    assert verdict(Estimate((low + high) / 2, low, high), target) == expected


def test_target_reads_as_written():
    assert [str(Target(high=1.0)), str(Target(low=1.0)), str(Target(0.95, 1.05))] == ["<= 1", ">= 1", "0.95 to 1.05"]


class FakeMachine:
    """A clock and tasks of known durations: each call takes its seconds x a slow phase that drifts with time (shared
    by whatever runs then) x its own lognormal noise; `calls` records the order."""

    def __init__(self, noise: float, drift: float = 0.0, seed: int = 0):
        self.now, self.noise, self.drift, self.calls = 0.0, noise, drift, []
        self.rng = np.random.default_rng(seed)

    def clock(self) -> float:
        return self.now

    def task(self, name: str, seconds: float):
        def run():
            self.calls.append(name)
            phase = 1 + self.drift * math.sin(self.now / 20)  # slow: about the same for both calls of a round
            self.now += seconds * phase * self.rng.lognormal(0, self.noise)
        return run


def test_time_rounds_alternates_the_order_and_stops_when_the_interval_is_tight():
    fake = FakeMachine(noise=0.01, drift=0.5)  # the machine's speed swings 50% either way; each timing 1% noise
    ratio = Ratio("a / b", "a", "b", Target(high=1.0))
    rounds = time_rounds({"a": fake.task("a", 0.8), "b": fake.task("b", 1.0)}, [ratio], min_rounds=5, cap_s=1e9,
                         clock=fake.clock)
    assert fake.calls[:2] == ["a", "b"]  # the warm-up
    assert fake.calls[2:12] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # A B, B A, ...
    assert rounds.stopped == "interval tight" and len(rounds.timings["a"].seconds) == 5
    (result,) = rounds.ratios
    assert result.estimate.low <= 0.8 <= result.estimate.high and result.estimate.half_width <= 0.03 * 0.8
    assert result.verdict == MET
    row = rounds.summary_rows()[0]
    assert row["met"] == MET and row["target"] == "<= 1" and row["from"].startswith("5 paired rounds")


def test_time_rounds_under_heavy_noise_stops_at_the_cap_and_cannot_tell():
    fake = FakeMachine(noise=0.3, seed=2)  # 30% noise per timing, no real difference
    ratio = Ratio("a / b", "a", "b", Target(high=1.0))
    rounds = time_rounds({"a": fake.task("a", 1.0), "b": fake.task("b", 1.0)}, [ratio], min_rounds=5, cap_s=30,
                         clock=fake.clock)
    n = len(rounds.timings["a"].seconds)
    assert rounds.stopped == "time cap" and 5 <= n < 30  # about 2 s a round: the cap ends it, not the interval
    assert rounds.seconds >= 30 and rounds.ratios[0].verdict == NO_DIFFERENCE
    capped = time_rounds({"a": fake.task("a", 1.0), "b": fake.task("b", 1.0)}, [ratio], min_rounds=3, max_rounds=4,
                         cap_s=1e9, clock=fake.clock)
    assert capped.stopped == "max rounds" and len(capped.timings["b"].seconds) == 4
    with pytest.raises(ValueError, match="min_rounds"):
        time_rounds({"a": fake.task("a", 1.0)}, min_rounds=1)


def test_time_rounds_interleaves_epochs_step_by_step():
    fake = FakeMachine(noise=0.0)
    epochs = {"plain": [fake.task(f"p{j}", 1.0 + j) for j in range(3)],
              "grouped": [fake.task(f"g{j}", 0.5 + j) for j in range(3)]}
    rounds = time_rounds(epochs, [Ratio("g / p", "grouped", "plain", Target(high=1.0))], min_rounds=2, max_rounds=2,
                         warmup=0, clock=fake.clock)
    assert fake.calls == ["p0", "g0", "g1", "p1", "p2", "g2",  # round 1: the order alternates at every step
                          "g0", "p0", "p1", "g1", "g2", "p2"]  # round 2 starts with the other
    assert rounds.timings["plain"].seconds == [6.0, 6.0] and rounds.timings["grouped"].seconds == [4.5, 4.5]
    assert rounds.ratios[0].estimate == Estimate(0.75, 0.75, 0.75)


def test_mfu_is_paired_with_the_matmul_timed_in_the_same_round():
    from bench.harness import Rounds, Timing, matmul_task
    from bench.run import mfu_cell

    run, flops = matmul_task(n=8, repeats=3)
    run()
    assert flops == 3 * 2 * 8**3
    # the machine halves its speed in round 2: step and matmul both take twice as long, the utilisation stays 25%
    rounds = Rounds({"ours": Timing("ours", [2.0, 4.0, 2.0]), "matmul": Timing("matmul", [1.0, 2.0, 1.0])}, [], 9.0,
                    "max rounds")
    assert mfu_cell(rounds, "ours", flops_ratio=0.5) == "25.0% [25.0%, 25.0%]"


def test_line_fit_covers_the_true_slope_intercept_and_overhead_share():
    rng = np.random.default_rng(0)
    x = np.repeat([128, 400, 700, 1000, 1300, 1600], 8)
    slope, intercept, share = 3e-4, 0.02, 0.02 / (0.02 + 3e-4 * 1000)  # 20 ms a step + 0.3 ms a token
    fits = [line_fit(x, intercept + slope * x + rng.normal(0, 0.01, x.size), at=1000, seed=t) for t in range(200)]
    for i, truth in enumerate((slope, intercept, share)):
        assert 0.88 <= sum(f[i].low <= truth <= f[i].high for f in fits) / len(fits) <= 0.99  # nominal 95%
    s, i, sh = fits[0]
    assert math.isclose(sh.value, i.value / (i.value + s.value * 1000)) and sh.high < 0.15
    exact = line_fit([1, 2, 3, 4], [3, 5, 7, 9], at=2)  # y = 1 + 2x: every resample finds it
    assert exact == (Estimate(2.0, 2.0, 2.0), Estimate(1.0, 1.0, 1.0), Estimate(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="at least 3 points"):
        line_fit([1, 1, 1], [1, 2, 3], at=1)


def test_length_grouped_batches_are_transformers_order_and_pad_less():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [(i * 37) % 100 + 1 for i in range(200)]
    grouped = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0))
    assert [i for b in grouped for i in b] == list(LengthGroupedSampler(8, lengths=lengths,
                                                                        generator=torch.Generator().manual_seed(0)))
    assert sorted(i for b in grouped for i in b) == list(range(200)) and all(len(b) == 8 for b in grouped)
    plain = shuffled_batches(200, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in plain for i in b) == list(range(200))
    assert padding_fraction(lengths, grouped) < padding_fraction(lengths, plain) / 2
    assert padded_positions([2, 8, 3], [[0, 1], [2]]) == 2 * 8 + 3


def test_the_bench_does_not_use_utils_batching():
    for path in (ROOT / "bench").glob("*.py"):
        assert "utils.batching" not in path.read_text(), path  # transformers' sampler and bench/padding.py instead


def test_markdown_table_reads_back(tmp_path):
    rows = [{"a": 1.23456, "b": "x|y"}, {"a": "21.9%", "b": "0.97 [0.95, 1.01]"}]
    text = write_results(tmp_path / "R.md", "Results", {"cpu": "test cpu"}, [("One", "note", rows), ("Two", "", [])])
    tables = read_results(text)
    assert tables["Machine"] == [{"": "cpu", "value": "test cpu"}]
    assert tables["One"] == [{"a": "1.235", "b": "x|y"}, {"a": "21.9%", "b": "0.97 [0.95, 1.01]"}]
    assert tables["Two"] == []


def fake_results(tmp_path, speed: str, overhead: str) -> str:
    """A results file with the sections the README block reads, the throughput and overhead verdicts as given."""
    from bench.run import H_FIT, H_LORA, H_MFU, H_PAD, H_SPEED, H_SUMMARY

    summary = [{"comparison": "GPTModel / transformers, eval forward", "ratio": "0.981", "95% interval": "0.962 to 1.004",
                "target": "<= 1", "met": NO_DIFFERENCE, "from": "9 paired rounds, 61 s, time cap"},
               {"comparison": "length-grouped / plain shuffle, real tokens per second", "ratio": "1.153",
                "95% interval": "1.131 to 1.170", "target": ">= 1", "met": speed, "from": "12 paired rounds"},
               {"comparison": "fixed per-step cost / mean step of 900 tokens: GPTModel 256 wide, 4 layers, batch 8",
                "ratio": "0.081",
                "95% interval": "0.041 to 0.120", "target": "<= 0.25", "met": overhead, "from": "line fit"}]
    sections = [(H_SUMMARY, "how", summary),
                (H_MFU, "", [{"model": "ours", "MFU (6N)": "70.1% [68.0%, 72.2%]"},
                             {"model": "transformers", "MFU (6N)": "69.0% [67.5%, 71.0%]"}]),
                (H_LORA, "", [{"recipe": r, "trainable params": t, "s/step": s, "peak RSS (GiB)": g,
                               "AdamW state (MiB)": m} for r, t, s, g, m in
                              (("full fine-tune", 406286336, "8.3 [8.1, 8.6]", 6.98, 3100.0),
                               ("LoRA (from scratch)", 7898384, "4.2 [4.1, 4.3]", 2.515, 60.26))]),
                (H_PAD, "", [{"data": d, "batch": 8, "batching": b, "pad fraction (mean of epochs)": f}
                             for d, b, f in (("ch04 x", "plain shuffle", "21.9%"), ("ch04 x", "length-grouped", "1.4%"),
                                             ("ch02 y", "plain shuffle", "6.7%"), ("ch02 y", "length-grouped", "4.8%"))]),
                (H_FIT, "", [{"quantity": "slope", "estimate": "301.0", "95% interval": "290.0 to 312.0"},
                             {"quantity": "intercept", "estimate": "21.0", "95% interval": "10.0 to 33.0"},
                             {"quantity": "share", "estimate": "8.1%", "95% interval": "4.1% to 12.0%"}]),
                (H_SPEED, "", [{"batching": "plain shuffle", "epoch (s)": "5.0 [4.9, 5.1]"}])]
    info = {"date": "2026-12-02 10:00 UTC", "cpu": "Test CPU", "AVX512-BF16": "yes", "cores": "2",
            "load average (1 min) at start": "1.50", "load average (1 min) at end": "2.25", "wall time": "700 s"}
    return write_results(tmp_path / "RESULTS.md", "Benchmark results", info, sections)


def test_readme_block_says_what_the_results_say(tmp_path):
    block = readme_block(fake_results(tmp_path, speed=MET, overhead=MET))
    assert block.startswith("<!-- bench:start -->") and block.endswith("<!-- bench:end -->")
    assert "2026-12-02 10:00 UTC on Test CPU" in block and "700 s in all" in block and "1.50 at the start" in block
    assert "| GPTModel / transformers, eval forward | 0.981 | 0.962 to 1.004 | <= 1 | no difference measurable |" in block
    assert "70.1% [68.0%, 72.2%]" in block and "7,898,384 of 406,286,336" in block and "2.515 GiB" in block
    assert "21.9% padding" in block and "1.4% and 4.8%" in block
    assert "(GPTModel 256 wide, 4 layers, batch 8), a training step costs 301.0 ms per 1,000 tokens (290.0 to " \
           "312.0) plus a fixed 21.0 ms (10.0 to 33.0): the fixed part is 8.1% (4.1% to 12.0%)" in block
    assert "the tokens, padding included, set a step's time" in block
    assert "trained 1.153x (1.131 to 1.170) as many real tokens per second" in block
    # no measurable win: the speed claim goes, the pad fraction stays; an overhead not shown small is said so
    block = readme_block(fake_results(tmp_path, speed=NO_DIFFERENCE, overhead=NO_DIFFERENCE))
    assert "trained" not in block and "no speed-up of length-grouped batches is measurable" in block
    assert "What is measured is the pad fraction" in block and "not shown to be small" in block


def test_readme_performance_block_is_generated_from_results():
    """The README's figures are RESULTS.md's: `make bench` rewrites the block; run it (or bench.report.update_readme)
    after editing RESULTS.md or bench/report.py."""
    assert readme_block_now(README.read_text(encoding="utf-8")) == readme_block(RESULTS.read_text(encoding="utf-8"))


def test_results_name_only_code_that_exists():
    text = RESULTS.read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    performance = readme[readme.index("## Performance"):readme.index("## Troubleshooting")]
    assert len(code_names(text)) >= 8  # the check has something to check
    assert unresolved_names(text) == [] and unresolved_names(performance) == []
    stale = ("`bench.sampler.LengthGroupedBatchSampler` and `utils.batching.padding_fraction`, beside "
             "`bench.padding.padding_fraction`, `torch.matmul`, `utils.machine` and the file `RESULTS.md`")
    assert code_names(stale)[-1] == "utils.machine"  # the file name is not code
    assert unresolved_names(stale) == ["bench.sampler.LengthGroupedBatchSampler", "utils.batching.padding_fraction"]


def test_markdown_table_and_results_file(tmp_path):
    table = markdown_table([{"a": 1.23456, "b": "x|y"}, {"a": 2}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "| 2 |  |"]
    path = tmp_path / "RESULTS.md"
    text = write_results(path, "Results", {"cpu": "test cpu"}, [("One", "a note", [{"k": 1}])])
    assert path.read_text() == text
    assert "| cpu | test cpu |" in text and "## One" in text and "a note" in text and "| 1 |" in text


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

