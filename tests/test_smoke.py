"""The tiny checkpoints and fixtures of smoke mode."""

from __future__ import annotations

import inspect
import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tools import tiny_checkpoints
from tools.nbexport import load
from utils import smoke
from utils.ch01_peft import LABELS, REVIEW_PROMPT
from utils.errors import CourseError
from utils.lessons.instruction_data import ALPACA_TEMPLATE
from utils.lessons.peft_recipes import prompt_tuning_recipe

REAL_MODULES = {  # module names LoRA targets in the real models
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
CLASSES = {"gpt2": "GPT2LMHeadModel", "gptj": "GPTJForCausalLM", "bloom": "BloomForCausalLM",
           "llama": "LlamaForCausalLM"}


@pytest.mark.parametrize("arch", smoke.ARCHS)
def test_tiny_checkpoint_has_the_real_architecture(arch: str) -> None:
    path = smoke.tiny_checkpoint(arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == CLASSES[arch]
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(REAL_MODULES[arch]) <= leaf_names
    config = model.config
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    assert hidden % 64 == 0 and config.vocab_size % 64 == 0
    assert config.num_hidden_layers == 2
    # every Linear a quantizer would touch has in_features a multiple of 64 (bitsandbytes' CPU kernels)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            assert module.in_features % 64 == 0 and module.out_features % 32 == 0, name


@pytest.mark.parametrize("arch", smoke.ARCHS)
def test_tiny_tokenizer_round_trips_and_model_generates(arch: str) -> None:
    path = smoke.tiny_checkpoint(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = "Convert 5 kilometers to meters.\n\n### Response:\n5 kilometers is 5000 meters."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == text
    assert ids.shape[1] < len(text) / 2, "the BPE should have learned merges from the fixture text"
    assert tokenizer.eos_token_id is not None and tokenizer.eos_token_id < 4
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids.shape[1]


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path) -> None:
    first = tiny_checkpoints.build_tiny_checkpoint("bloom", tmp_path / "a", seed=3)
    second = tiny_checkpoints.build_tiny_checkpoint("bloom", tmp_path / "b", seed=3)
    other = tiny_checkpoints.build_tiny_checkpoint("bloom", tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_a_checkpoint_is_built_once_found_and_a_missing_one_names_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    with pytest.raises(CourseError, match=r"tiny gpt2 checkpoint \(seed 0\) is not built: run `python -m tools\.tiny_checkpoints` in"):
        smoke.tiny_checkpoint("gpt2")
    with pytest.raises(CourseError, match=r"run `python -m tools\.tiny_checkpoints bloom --seed 5`"):
        smoke.tiny_checkpoint("bloom", seed=5)
    assert tiny_checkpoints.build_missing([("gpt2", 0)]) == [smoke.checkpoint_folder("gpt2")]
    assert tiny_checkpoints.build_missing([("gpt2", 0)]) == []  # built once, then kept
    assert smoke.tiny_checkpoint("gpt2") == str(smoke.checkpoint_folder("gpt2"))
    assert tiny_checkpoints.TINY_SPECS.keys() == set(smoke.ARCHS)


def test_corrupt_cache_says_what_to_delete(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    tiny_checkpoints.build_missing([("gpt2", 0)])
    path = smoke.tiny_checkpoint("gpt2")
    with open(f"{path}/model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CourseError, match=r"corrupt.*rm -rf.*python -m tools\.tiny_checkpoints"):
        smoke.tiny_checkpoint("gpt2")
    shutil.rmtree(path)
    tiny_checkpoints.main([])  # deleting it and running the command, as the message says, rebuilds it
    assert smoke.tiny_checkpoint("gpt2") == path


def test_a_checkpoint_depends_on_the_corpus_files_never_on_a_chapters_code(tmp_path, monkeypatch) -> None:
    read = []
    monkeypatch.setattr(tiny_checkpoints, "fixture_path", lambda name: read.append(name) or smoke.fixture_path(name))
    tiny_checkpoints.corpus()
    assert read == list(smoke.CORPUS_FIXTURES)  # the builder reads exactly the files the fingerprint hashes
    before = {arch: smoke.fingerprint(arch, 0) for arch in smoke.ARCHS}
    monkeypatch.setitem(ALPACA_TEMPLATE, "preamble", "Another preamble.")  # a chapter edits its prompt
    assert {arch: smoke.fingerprint(arch, 0) for arch in smoke.ARCHS} == before
    fixtures = shutil.copytree(smoke.FIXTURES_DIR, tmp_path / "fixtures")
    monkeypatch.setattr(smoke, "FIXTURES_DIR", fixtures)
    (fixtures / smoke.FIXTURES["rotten_tomatoes_train"]).write_text('{"text": "fine", "label": 1}\n')
    assert smoke.fingerprint("gpt2", 0) == before["gpt2"]  # a fixture outside the corpus changes nothing
    with (fixtures / smoke.FIXTURES["tiny_corpus"]).open("a") as corpus:
        corpus.write("Another preamble.\n")
    assert smoke.fingerprint("gpt2", 0) != before["gpt2"]
    assert smoke.fingerprint("gpt2", 1) != smoke.fingerprint("gpt2", 0) != smoke.fingerprint("gptj", 0)


def _template_text(template: str) -> list[str]:
    """The fixed pieces of a prompt template between its {placeholders}, stripped."""
    return [piece.strip() for piece in re.split(r"\{\w+\}", template) if piece.strip()]


def test_the_corpus_holds_every_chapters_fixed_prompt_text() -> None:
    """The tiny tokenizers learn the chapters' fixed prompt words from the corpus file, where each is copied once:
    a chapter that changes its prompt copies the new text there (and every tiny checkpoint is rebuilt once)."""
    squad = load("02-lora-gptj/01_lora_gptj_squad.ipynb")
    fixed = {
        "01-peft-setup (utils/ch01_peft.py)": [*_template_text(REVIEW_PROMPT), *LABELS],
        "01-peft-setup (prompt_tuning_recipe's init_text)": [
            inspect.signature(prompt_tuning_recipe).parameters["init_text"].default],
        "02-lora-gptj": [*_template_text(squad.PROMPT_TEMPLATE), squad.INSTRUCTION, squad.NO_ANSWER],
        "04-instruction-gpt2 (ALPACA_TEMPLATE)": [text.strip() for text in ALPACA_TEMPLATE.values()],
    }
    corpus = smoke.fixture_path("tiny_corpus").read_text(encoding="utf-8")
    missing = [f"{chapter}: {text!r}" for chapter, texts in fixed.items() for text in texts if text not in corpus]
    assert not missing, f"copy into {smoke.FIXTURES['tiny_corpus']}: " + "; ".join(missing)


def test_unknown_architecture_and_missing_fixture_are_clear(tmp_path, monkeypatch) -> None:
    with pytest.raises(CourseError, match="unknown architecture 'mamba'.*gpt2"):
        smoke.tiny_checkpoint("mamba")
    with pytest.raises(CourseError, match="unknown fixture"):
        smoke.fixture_path("imagenet")
    monkeypatch.setattr(smoke, "FIXTURES_DIR", tmp_path)
    with pytest.raises(CourseError, match="missing.*git checkout"):
        smoke.fixture_path("story")


def test_smoke_switch_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("COURSE_SMOKE", "1")
    assert smoke.is_smoke()
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert not smoke.is_smoke()
    monkeypatch.setenv("COURSE_SMOKE", "yes please")
    with pytest.raises(CourseError, match="COURSE_SMOKE"):
        smoke.is_smoke()


def test_fixtures_have_the_real_schemas() -> None:
    records = json.loads(smoke.fixture_path("instructions").read_text())
    assert len(records) >= 30 and all(set(r) == {"instruction", "input", "output"} for r in records)
    for split in ("squad_train", "squad_validation"):
        squad = json.loads(smoke.fixture_path(split).read_text())
        qas = [qa for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"]]
        assert any(qa["is_impossible"] for qa in qas) and any(not qa["is_impossible"] for qa in qas)
        for article in squad["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    for answer in qa["answers"]:
                        start = answer["answer_start"]
                        assert paragraph["context"][start:start + len(answer["text"])] == answer["text"], qa["id"]
    header = smoke.fixture_path("prompts").read_text().splitlines()[0]
    assert header == "act,prompt"
    assert len(smoke.fixture_path("story").read_text()) > 5000


def test_tiny_bloom_loads_in_4bit_through_bitsandbytes() -> None:
    path = smoke.tiny_checkpoint("bloom")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config)
    layer = model.transformer.h[0].self_attention.query_key_value
    assert type(layer).__name__ == "Linear4bit"
    ids = torch.tensor([[5, 6, 7, 8]])
    assert model(ids).logits.shape == (1, 4, model.config.vocab_size)
