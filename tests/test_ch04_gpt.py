"""Chapter 04: GPTModel, its GPT-2 weight loader, generation, the loss, and checkpoint/resume."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from utils.ch04_gpt2 import config_from_hf
from utils.errors import CourseError
from utils.lessons.gpt import (
    GPT_CONFIG_124M,
    GPT_CONFIGS,
    GPTModel,
    calc_loss_batch,
    generate,
    load_gpt2,
    text_to_token_ids,
    token_ids_to_text,
    train_model,
)
from utils.lessons.instruction_data import InstructionDataset, custom_collate_fn
from utils.resume import load_checkpoint
from utils.smoke import fixture_path, tiny_checkpoint


def _tiny_hf(tmp_path, **overrides):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4, **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that a transposed or swapped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def test_loader_matches_transformers_logits(tmp_path):
    hf = _tiny_hf(tmp_path)
    model, cfg = load_gpt2(tmp_path)
    assert cfg == {"vocab_size": 96, "context_length": 32, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
                   "drop_rate": 0.0, "qkv_bias": True}
    x = torch.randint(0, 96, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.shape == (3, 20, 96)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_loader_on_the_smoke_checkpoint_matches_transformers():
    from transformers import AutoModelForCausalLM

    path = tiny_checkpoint("gpt2")
    model, cfg = load_gpt2(path)
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    x = torch.randint(0, cfg["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() < 1e-4


def test_loader_rejects_a_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 8, "n_positions": 8, "n_embd": 8,
                                                      "n_layer": 1, "n_head": 2}))
    with pytest.raises(CourseError, match="safetensors"):
        load_gpt2(tmp_path)
    with pytest.raises(CourseError, match="no field 'n_positions'.*GPT2LMHeadModel"):
        config_from_hf({"vocab_size": 8})


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(CourseError, match="'openai-community/gpt2-medium' is not in the local Hugging Face cache and "
                                          "HF_HUB_OFFLINE=1 forbids downloading it: run with COURSE_SMOKE=1"):
        load_gpt2("openai-community/gpt2-medium")


@pytest.mark.parametrize("name,params", [("gpt2-small (124M)", 124_439_808), ("gpt2-medium (355M)", 354_823_168),
                                         ("gpt2-large (774M)", 774_030_080), ("gpt2-xl (1558M)", 1_557_611_200)])
def test_configs_have_the_published_sizes(name, params):
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIGS[name])
    total = sum(p.numel() for p in model.parameters())
    assert total - model.out_head.weight.numel() == params  # GPT-2 ties the output head to the token embedding


def test_gpt_config_124m_is_the_source_one():
    with torch.device("meta"):
        model = GPTModel(GPT_CONFIG_124M)
    assert sum(p.numel() for p in model.parameters()) == 163_009_536  # the source's count (untied head, no qkv bias)


def test_generate_greedy_stops_at_eos_and_crops_context():
    class Next(torch.nn.Module):  # predicts (last token + 1) mod 10; sees at most context_size tokens
        def forward(self, idx):
            assert idx.shape[1] <= 4
            return torch.nn.functional.one_hot((idx + 1) % 10, 10).float()

    out = generate(Next(), torch.tensor([[1, 2]]), max_new_tokens=5, context_size=4)
    assert out.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    out = generate(Next(), torch.tensor([[1, 2]]), max_new_tokens=5, context_size=4, eos_id=5)
    assert out.tolist() == [[1, 2, 3, 4]]
    torch.manual_seed(0)
    out = generate(Next(), torch.tensor([[1]]), max_new_tokens=3, context_size=4, temperature=1.0, top_k=1)
    assert out.tolist() == [[1, 2, 3, 4]]  # top_k=1 leaves one choice even when sampling


def test_token_ids_roundtrip_with_the_tiny_tokenizer():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2"))
    ids = text_to_token_ids("Rewrite the sentence.<|endoftext|>", tok)
    assert ids.shape[0] == 1 and ids[0, -1].item() == tok.eos_token_id
    assert token_ids_to_text(ids, tok) == "Rewrite the sentence.<|endoftext|>"


def test_loss_ignores_minus_100_targets():
    torch.manual_seed(0)
    model = GPTModel({**GPT_CONFIG_124M, "vocab_size": 16, "context_length": 8, "emb_dim": 8, "n_heads": 2,
                      "n_layers": 1, "drop_rate": 0.0})
    x = torch.randint(0, 16, (2, 5))
    y = torch.randint(0, 16, (2, 5))
    y_masked = y.clone()
    y_masked[:, 3:] = -100
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, :3].reshape(-1, 16), y[:, :3].reshape(-1))
    assert torch.allclose(calc_loss_batch(x, y_masked, model, "cpu"), expected)


def _setup_run(seed=0):
    torch.manual_seed(seed)
    path = tiny_checkpoint("gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    model, cfg = load_gpt2(path, drop_rate=0.1)  # dropout on: resume must restore the random state too
    data = json.loads(fixture_path("instructions").read_text())
    collate = partial(custom_collate_fn, pad_token_id=tok.eos_token_id, allowed_max_length=64)
    train = DataLoader(InstructionDataset(data[:20], tok), batch_size=4, shuffle=True, drop_last=True,
                       collate_fn=collate)
    val = DataLoader(InstructionDataset(data[20:28], tok), batch_size=4, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, optimizer, train, val


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    kwargs = dict(device="cpu", num_epochs=3, eval_freq=2, eval_iter=1)
    model, optimizer, train, val = _setup_run()
    torch.manual_seed(123)
    full_log = train_model(model, train, val, optimizer, **kwargs)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(full_log["train_losses"]) == 15 // 2

    for k in (3, 5, 7):  # mid-epoch (3, 7) and at an epoch's end (5 batches per epoch)
        model, optimizer, train, val = _setup_run()
        torch.manual_seed(123)
        train_model(model, train, val, optimizer, **kwargs, checkpoint_dir=tmp_path / f"ck{k}", stop_after_steps=k)
        model, optimizer, train, val = _setup_run(seed=99)  # a fresh process: different state everywhere
        torch.manual_seed(7)
        log = train_model(model, train, val, optimizer, **kwargs, checkpoint_dir=tmp_path / f"ck{k}", resume=True)
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, reference[name]), (k, name)
        assert log == full_log
        assert load_checkpoint(tmp_path / f"ck{k}" / "checkpoint.safetensors")["global_step"] == 15


def test_resume_without_checkpoint_says_what_to_do(tmp_path):
    model, optimizer, train, val = _setup_run()
    with pytest.raises(CourseError, match="no complete checkpoint"):
        train_model(model, train, val, optimizer, "cpu", 1, 1, 1, checkpoint_dir=tmp_path / "none", resume=True)


def test_layernorm_and_gelu_are_the_formulas_and_the_fused_ones_equal_them() -> None:
    """LayerNorm and GELU (what the notebook's learner reads) are GPT-2's; the fused subclasses GPTModel uses compute
    the same, with the same parameters."""
    from utils.lessons.gpt import GELU, FusedGELU, FusedLayerNorm, LayerNorm

    torch.manual_seed(0)
    x = torch.randn(4, 7, 64) * 3
    norm, fused = LayerNorm(64), FusedLayerNorm(64)
    with torch.no_grad():
        norm.scale.normal_()
        norm.shift.normal_()
    fused.load_state_dict(norm.state_dict())
    reference = torch.nn.LayerNorm(64, eps=1e-5)  # torch's: biased variance, as GPT-2
    reference.load_state_dict({"weight": norm.scale, "bias": norm.shift})
    torch.testing.assert_close(norm(x), reference(x))
    torch.testing.assert_close(fused(x), norm(x))
    assert list(fused.state_dict()) == list(norm.state_dict()) == ["scale", "shift"]
    torch.testing.assert_close(GELU()(x), torch.nn.GELU(approximate="tanh")(x))
    torch.testing.assert_close(FusedGELU()(x), GELU()(x))
    assert not torch.allclose(GELU()(x), torch.nn.GELU()(x), atol=1e-4)  # the tanh form, not the exact erf GELU


def test_gpt_model_uses_the_fused_layers() -> None:
    from utils.lessons.gpt import FusedGELU, FusedLayerNorm

    model = GPTModel({**GPT_CONFIG_124M, "vocab_size": 16, "context_length": 8, "emb_dim": 8, "n_heads": 2,
                      "n_layers": 2})
    norms = [m for m in model.modules() if type(m).__name__.endswith("LayerNorm")]
    assert len(norms) == 2 * 2 + 1 and all(type(m) is FusedLayerNorm for m in norms)
    assert [type(m) for m in model.modules() if type(m).__name__.endswith("GELU")] == [FusedGELU, FusedGELU]
