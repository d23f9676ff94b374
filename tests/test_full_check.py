"""`make full-check`'s pieces: parameter injection, the real GPT-2 BPE, real-width checkpoints, the plans."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest
import torch

from tools import full_check, real_width
from tools.nbtools import notebooks
from tools.run_notebooks import Expr, inject_parameters

CELL = '''SMOKE = is_smoke()  # comment
MODEL_ID = tiny_checkpoint("bloom") if SMOKE else "bigscience/bloom-7b1"  # the model
BUDGET_MODEL_ID = "bigscience/bloom-7b1"  # budgeted on the meta device in both modes
TEXT = fixture_path("story") if SMOKE else download(URL, "the-verdict.txt")
STEPS = 40 if SMOKE else 500
EVAL_FREQ, EVAL_ITER = 5, (2 if SMOKE else 5)
'''


def notebook(source: str = CELL):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), cell, nbformat.v4.new_code_cell("MODEL_ID")]
    return nb


def test_injection_changes_only_the_parameters_cells_values():
    nb = notebook()
    done = inject_parameters(nb, {"STEPS": 3, "TEXT": "/data/verdict.txt", "EVAL_ITER": 1},
                             {"bigscience/bloom-7b1": "/ckpt/bloom"})
    source = nb.cells[1].source
    namespace = {"is_smoke": lambda: False, "tiny_checkpoint": str}
    exec(source, namespace)  # noqa: S102 - the rewritten cell runs without download() existing
    assert (namespace["MODEL_ID"], namespace["STEPS"], namespace["TEXT"]) == ("/ckpt/bloom", 3, "/data/verdict.txt")
    assert namespace["BUDGET_MODEL_ID"] == "bigscience/bloom-7b1"  # not in a full-mode branch: left alone
    assert (namespace["EVAL_FREQ"], namespace["EVAL_ITER"]) == (5, 1)
    assert "# the model" in source and "# comment" in source  # comments and layout kept
    assert nb.cells[0].source == "x = 1" and nb.cells[2].source == "MODEL_ID"
    assert sorted(done) == ["EVAL_ITER", "STEPS", "TEXT", "bigscience/bloom-7b1"]


def test_injection_refuses_unknown_names_and_non_literals():
    with pytest.raises(ValueError, match="assigns no"):
        inject_parameters(notebook(), {"STPES": 3})
    with pytest.raises(ValueError):
        inject_parameters(notebook(), {"STEPS": object()})
    nb = notebook()
    inject_parameters(nb, {"STEPS": Expr("2 * 3")})
    assert "STEPS = 2 * 3" in nb.cells[1].source
    with pytest.raises(ValueError, match="parameters"):
        inject_parameters(nbformat.v4.new_notebook(), {"STEPS": 1})


def _full_mode_constants(path):
    cell = next(c for c in nbformat.read(str(path), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    found = set()
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Name) and node.test.id == "SMOKE":
            found |= {c.value for c in ast.walk(node.orelse) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                      and "/" in c.value and not c.value.startswith(("http", "/"))}
    return found


@pytest.mark.parametrize("path", notebooks(), ids=[p.name for p in notebooks()])
def test_every_notebooks_plan_fits_its_parameters_cell(path, monkeypatch):
    """Each plan's names exist in the notebook's parameters cell, and every Hub id its full mode names has a local
    stand-in: full-check can neither mistype a parameter nor download."""
    monkeypatch.setattr(full_check, "hub_ids", lambda: {k: f"/local/{k}" for k in HUB_IDS})
    nb = nbformat.read(str(path), as_version=4)
    inject_parameters(nb, full_check.parameters_for(path), full_check.hub_ids())
    missing = _full_mode_constants(path) - set(HUB_IDS)
    assert not missing, f"full mode names {missing}: give them a stand-in in tools/full_check.py's hub_ids"
    by_name = _full_mode_names(path) - set(full_check.parameters_for(path))
    assert not by_name, f"full mode reads {by_name} through an imported name: give them a value in the plan"


def _full_mode_names(path) -> set[str]:
    """Parameters whose full-mode value is a name (a Hub id imported from utils, say), which injection cannot map."""
    cell = next(c for c in nbformat.read(str(path), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.IfExp) and getattr(node.value.test, "id", "") == "SMOKE"
            and isinstance(node.value.orelse, ast.Name) for target in node.targets if isinstance(target, ast.Name)}


def test_a_full_mode_value_read_through_a_name_is_found(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('SOURCE = "fixture.jsonl" if SMOKE else DATASET\nN = 3 if SMOKE else 9',
                                          metadata={"tags": ["parameters"]})]
    nbformat.write(nb, str(tmp_path / "x.ipynb"))
    assert _full_mode_names(tmp_path / "x.ipynb") == {"SOURCE"}


HUB_IDS = ["bigscience/bloomz-560m", "bigscience/bloom-7b1", "EleutherAI/gpt-j-6b", "openai-community/gpt2-medium",
           "openai-community/gpt2", "fka/awesome-chatgpt-prompts", "rajpurkar/squad_v2"]


def test_the_real_gpt2_bpe_encodes_as_gpt2():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_width.gpt2_tokenizer())
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok.encode("Hello world") == [15496, 995] and tok.encode(" the") == [262]
    assert tok.encode("<|endoftext|>") == [50256]
    text = "I'm here:  two spaces\n\nand 12345 ünïcode"
    assert tok.decode(tok.encode(text)) == text


def test_blooms_stand_in_tokenizer_has_blooms_special_ids(tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "bloom-tokenizer"
    folder.mkdir()
    real_width._bloom_stand_in(folder)
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    assert tok.encode("Hello world") == [15496 + 4, 995 + 4]  # GPT-2's ids, shifted past the specials
    assert max(tok.get_vocab().values()) < 250_880


def test_a_real_width_checkpoint_is_saved_as_the_hub_stores_it(tmp_path, monkeypatch):
    """GPT-J's float16 branch's layout (one fp16 .bin, no safetensors), at GPT-2's real widths with one block."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("COURSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(real_width.CHECKPOINTS, "gpt2-bin", ("openai-community/gpt2", 1, "bin-fp16"))
    monkeypatch.setattr(real_width, "gpt2_tokenizer", lambda: str(tmp_path / "tok"))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    folder = real_width.real_width_checkpoint("gpt2-bin")
    names = sorted(p.name for p in (tmp_path / "real-width").glob("gpt2-bin-*/*"))
    assert "pytorch_model.bin" in names and not any(n.endswith(".safetensors") for n in names)
    config = json.loads((tmp_path / "real-width" / "gpt2-bin-1block-seed0" / "config.json").read_text())
    assert (config["n_embd"], config["n_head"], config["vocab_size"], config["n_layer"]) == (768, 12, 50257, 1)
    state = torch.load(f"{folder}/pytorch_model.bin", weights_only=True, mmap=True)
    assert {t.dtype for t in state.values()} == {torch.float16}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16)
    assert model.transformer.wte.weight.shape == (50257, 768)
    assert real_width.real_width_checkpoint("gpt2-bin") == folder  # built once


def test_a_partial_run_updates_its_rows_and_keeps_the_whole_runs_date_and_total(tmp_path, monkeypatch):
    """`full_check NOTEBOOK` rewrites that notebook's row and says so; the date and total stay the whole run's."""
    from types import SimpleNamespace

    from tools import times

    monkeypatch.setattr(times, "DATA", tmp_path / "times.json")
    monkeypatch.setattr(times, "TABLE", tmp_path / "TIMES.md")
    times.DATA.write_text(json.dumps({"full_check": {"meta": {"date": "2026-01-01", "total_seconds": 700,
                                                             "source": "all 20 runs in one make full-check"},
                                                    "rows": []}}))
    monkeypatch.setattr(full_check.os, "environ", dict(full_check.os.environ))  # main() closes the network in it
    monkeypatch.setattr(full_check, "hub_ids", dict)
    monkeypatch.setattr(full_check, "memory_notes", lambda notebook: [])
    monkeypatch.setattr(full_check, "execute", lambda path, *a, **k: SimpleNamespace(
        notebook=str(path.relative_to(full_check.ROOT)), status="ok", seconds=1.0))
    path = notebooks()[0]
    assert full_check.main([str(path), "--threads", "1"]) == 0
    data = times.load()["full_check"]
    assert data["meta"]["date"] == "2026-01-01" and data["meta"]["total_seconds"] == 700
    assert data["meta"]["source"] == "all 20 runs in one make full-check"
    assert data["meta"]["rerun"].startswith("1 row(s) rerun on ")
    assert "all 20 runs in one make full-check, 1 row(s) rerun on " in times.TABLE.read_text()
    assert [r["notebook"] for r in data["rows"]] == [str(path.relative_to(full_check.ROOT))]
