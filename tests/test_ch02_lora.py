"""Chapter 02: LoRA on GPT-J in 8-bit - prepare_model_for_kbit_training, B = 0 at the start, the saved adapter
reloaded onto a fresh 8-bit base, and merge_and_unload on an unquantized model. (GPT-J 6B's real-scale LoRA count
is tested in tests/test_real_models.py, against the model's own layer shapes.)"""

import logging

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tools.nbexport import load
from utils.smoke import fixture_path, tiny_checkpoint

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
collate_squad_batch = SQUAD.collate_squad_batch
encode_records = SQUAD.encode_records
load_squad = SQUAD.load_squad

logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def lora_config():
    return LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none",
                      task_type="CAUSAL_LM")


def load_8bit():
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float16, device_map="auto",
                                                 quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # as chapter 02 calls it
    model.activation_checkpointing_enable({"use_reentrant": False})
    return model


@pytest.fixture(scope="module")
def batch():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    examples, _ = encode_records(load_squad(fixture_path("squad_train"), "train", n=8), tok, 256)
    return collate_squad_batch(examples, tok.eos_token_id)


def test_prepare_model_for_kbit_training_freezes_upcasts_and_checkpoints():
    model = load_8bit()
    assert not any(p.requires_grad for p in model.parameters())
    assert model.transformer.h[0].attn.q_proj.weight.dtype == torch.int8
    for param in (model.transformer.h[0].ln_1.weight, model.transformer.ln_f.weight, model.lm_head.weight):
        assert param.dtype == torch.float32  # loaded as float16, upcast
    assert model.is_activation_checkpointing
    assert model.get_input_embeddings()(torch.tensor([[1]])).requires_grad


def test_who_makes_the_input_embeddings_require_grad(monkeypatch):
    """Chapter 02's two calls: peft's prepare_model_for_kbit_training with use_gradient_checkpointing=False freezes
    and upcasts and leaves the embeddings' output alone (its enable_input_require_grads step belongs to the
    checkpointing it was told to skip); transformers' activation_checkpointing_enable registers that hook itself when
    it turns checkpointing on. Before prepare the embeddings' output requires grad for another reason: their weight
    is still trainable."""
    import inspect

    from transformers import PreTrainedModel

    callers = []
    original = PreTrainedModel.enable_input_require_grads

    def recorded(self):
        callers.append(inspect.stack()[1].frame.f_globals["__name__"].split(".")[0])
        return original(self)

    monkeypatch.setattr(PreTrainedModel, "enable_input_require_grads", recorded)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float16, device_map="auto",
                                                 quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    embeddings = model.get_input_embeddings()
    assert embeddings.weight.requires_grad and not embeddings._forward_hooks
    assert embeddings(torch.tensor([[1]])).requires_grad  # before: through the trainable weight
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    assert not embeddings.weight.requires_grad and not model.is_activation_checkpointing
    assert not embeddings(torch.tensor([[1]])).requires_grad and callers == []  # prepared: nothing requires grad
    model.activation_checkpointing_enable({"use_reentrant": False})
    assert model.is_activation_checkpointing
    assert embeddings(torch.tensor([[1]])).requires_grad  # after: through transformers' forward hook
    assert callers == ["transformers"]


def test_lora_starts_as_the_base_model_then_trains_and_reloads(batch, tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(load_8bit(), lora_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all((p == 0).all() for n, p in model.named_parameters() if "lora_B" in n)
    model.eval()
    with torch.no_grad():
        start = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
    assert torch.equal(start, base)  # B = 0: the adapted model is the base model

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    assert (trained - start).abs().max() > 1e-3

    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "adapter_config.json").is_file()
    assert not list(tmp_path.glob("*.bin"))
    reloaded = PeftModel.from_pretrained(load_8bit(), tmp_path)
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(**batch).logits
    assert (again - trained).abs().max().item() <= 1e-4  # the notebook's stated tolerance


def test_merge_and_unload_on_an_unquantized_model_keeps_the_logits(batch):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float32), lora_config())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.eval()
    with torch.no_grad():
        adapter = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with model.disable_adapter():
            base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (adapter - base).abs().max() > 1e-2  # the adapter does change the output
    assert (adapter - merged).abs().max() <= 1e-4
    assert not any("lora" in name for name, _ in merged_model.named_modules())
