"""bitsandbytes' two CPU code paths for 4-bit layers, exercised on any machine, and the workaround in utils/ch03_qlora.py.

On a CPU with AVX512-BF16, bitsandbytes 0.50.2 repacks a Linear4bit's weight for inference at its first eval-mode,
no-grad forward; elsewhere (other CPUs, every GPU) it never does. Both paths are run here: with the repacking forced
off (as every machine without the instruction runs), and with it on where this CPU has the instruction.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bitsandbytes
import nbformat
import pytest
import torch
from bitsandbytes.functional import has_avx512bf16
from bitsandbytes.nn import Linear4bit
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tools.kernels import CourseNotebookClient
from utils.ch03_qlora import is_repacked, keep_4bit_trainable
from utils.errors import CourseError
from utils.paths import ROOT
from utils.smoke import tiny_checkpoint

BNB = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                         bnb_4bit_compute_dtype=torch.float32)
NEEDS_AVX512_BF16 = pytest.mark.skipif(
    not has_avx512bf16(),
    reason="this CPU has no AVX512-BF16, so bitsandbytes never repacks 4-bit weights here: that path cannot run on "
           "this machine (the forced-off path above is the one it takes)")


def _layers(model) -> list[Linear4bit]:
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def _model(repacking: bool):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("bloom"), quantization_config=BNB,
                                                 device_map={"": "cpu"})
    if not repacking:  # what bitsandbytes decides on a CPU without AVX512-BF16
        for layer in _layers(model):
            layer.support_avx512bf16_for_cpu = False
    return model


def _generate(model) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("bloom"))
    ids = tokenizer("I want you to act as a poet.", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def _train_steps(model, steps: int = 3) -> tuple[list[float], float]:
    """LoRA on the prepared 4-bit model, a few AdamW steps on one batch; returns the losses and |LoRA B| after."""
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.activation_checkpointing_enable({"use_reentrant": False})  # as SFTTrainer does in chapter 03
    model = get_peft_model(model,
                           LoraConfig(r=8, lora_alpha=16, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    model.train()
    batch = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    b_norm = sum(p.abs().sum().item() for n, p in model.named_parameters() if "lora_B" in n)
    return losses, b_norm


def _assert_learned(losses: list[float], b_norm: float) -> None:
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses  # the steps changed the model in the right direction
    assert b_norm > 0  # gradients reached LoRA's B, which starts at zero


def test_generate_then_train_with_repacking_forced_off():
    model = _model(repacking=False)
    _generate(model)
    assert not any(is_repacked(layer) for layer in _layers(model))
    _assert_learned(*_train_steps(model))


@NEEDS_AVX512_BF16
def test_the_workaround_keeps_the_checkpoint_weights_and_trains():
    """On this CPU bitsandbytes would repack at the first generate; with the workaround it does not, the weights
    stay bit for bit those of a fresh load, and training works."""
    fresh, model = _model(repacking=True), _model(repacking=True)
    assert keep_4bit_trainable(model) == len(_layers(model)) == 8  # 4 linears in each of the 2 blocks
    _generate(model)
    assert not any(is_repacked(layer) for layer in _layers(model))
    for ours, theirs in zip(_layers(model), _layers(fresh), strict=True):
        assert torch.equal(ours.weight.data, theirs.weight.data)
        assert torch.equal(ours.weight.quant_state.absmax, theirs.weight.quant_state.absmax)
    _assert_learned(*_train_steps(model))


@NEEDS_AVX512_BF16
def test_the_workaround_refuses_a_model_already_repacked():
    model = _model(repacking=True)
    _generate(model)
    with pytest.raises(CourseError, match=r"8 4-bit layers \(first: transformer.h.0.self_attention.query_key_value\) "
                                          r"were already repacked.*load the model again"):
        keep_4bit_trainable(model)


@NEEDS_AVX512_BF16
def test_both_cpu_paths_compute_the_same_logits():
    """The repacked kernel computes in bf16, the other path in the compute dtype (fp32 here): they agree to bf16."""
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    off, on = _model(repacking=False).eval(), _model(repacking=True).eval()
    with torch.no_grad():
        reference, repacked = off(input_ids=ids).logits, on(input_ids=ids).logits
    assert all(is_repacked(layer) for layer in _layers(on))
    scale = reference.abs().max()
    assert (reference - repacked).abs().max() < 2e-2 * scale  # bf16 keeps 8 bits of mantissa: about 0.4% per op
    assert not torch.equal(reference, repacked)  # two kernels really ran


@NEEDS_AVX512_BF16
def test_bitsandbytes_still_needs_the_workaround():
    """Without the workaround, generate-then-train fails. When a bitsandbytes release fixes it, this test fails:
    then pin that release and delete utils/ch03_qlora.py and its calls."""
    model = _model(repacking=True)
    _generate(model)
    assert all(is_repacked(layer) for layer in _layers(model))  # the AVX512-BF16 inference path did run
    try:
        _train_steps(model, steps=1)
    except RuntimeError as exc:
        assert "in-place operation" in str(exc)
    else:
        pytest.fail(f"bitsandbytes {bitsandbytes.__version__} trains after repacking: the bug is fixed, so pin this "
                    f"release and delete utils/ch03_qlora.py and its calls")


def test_the_workaround_is_idempotent_and_ignores_other_layers():
    model = _model(repacking=True)
    assert keep_4bit_trainable(model) == keep_4bit_trainable(model) == 8
    assert not any(layer.support_avx512bf16_for_cpu for layer in _layers(model))
    assert keep_4bit_trainable(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0


NO_AVX512_BF16 = Path(__file__).resolve().parent / "no_avx512_bf16"  # a sitecustomize that hides the instruction


def test_the_machine_without_avx512_bf16_is_simulated():
    probe = ("import bitsandbytes.functional as f, bitsandbytes.nn.modules as m; "
             "print(f.has_avx512bf16(), m.has_avx512bf16())")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={"PYTHONPATH": str(NO_AVX512_BF16), "PATH": "/usr/bin:/bin"})
    assert run.stdout.split() == ["False", "False"], run.stderr


def test_chapter_03_runs_as_on_a_cpu_without_avx512_bf16(monkeypatch):
    """The QLoRA notebook top to bottom with bitsandbytes' other CPU path, which CI machines without the instruction
    take (the plain notebook run, in `make test`, takes this machine's own path)."""
    monkeypatch.setenv("PYTHONPATH", str(NO_AVX512_BF16))
    path = ROOT / "03-qlora-bloom" / "03_qlora_bloom_sfttrainer.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import bitsandbytes.functional\n"
                                              "print('AVX512-BF16:', bitsandbytes.functional.has_avx512bf16())"))
    CourseNotebookClient(nb, timeout=600, kernel_name="python3",
                         resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "AVX512-BF16: False" in printed  # the kernel ran with the instruction hidden
    assert "reloaded vs trained: 0.00e+00" in printed and "resumed from checkpoint-" in printed
