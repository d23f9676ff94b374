"""Every committed notebook: clean, shaped by the course's conventions, and written out code identical to utils'."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

from tools import nbtools
from utils.ch01_methods import METHODS
from utils.paths import ROOT

NOTEBOOKS = nbtools.notebooks()
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]
MAGIC = re.compile(r"^([ \t]*)[!%].*$", re.MULTILINE)


def code_cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code"]


def parse(source: str) -> ast.Module:
    """Parse a cell, with IPython magics (`%pip`, `!git`) blanked out."""
    return ast.parse(MAGIC.sub(r"\1pass", source))


def top_level_defs(tree: ast.Module) -> dict[str, ast.AST]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)}


def test_notebooks_are_found() -> None:
    assert len(NOTEBOOKS) >= 1
    assert NOTEBOOKS[0].parent.name == "01-peft-setup"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_clean_and_generated_cells_in_sync(path: Path) -> None:
    assert nbtools.check(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_opens_with_title_badge_setup_environment_then_parameters(path: Path) -> None:
    cells = nbformat.read(str(path), as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert "colab-badge" in cells[1].metadata.get("tags", []) and "colab.research.google.com" in cells[1].source
    assert "setup" in cells[2].metadata.get("tags", [])
    position = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert position <= 8, "the parameters cell belongs near the top"
    before = "\n".join(c.source for c in cells[:position] if c.cell_type == "code")
    assert "print_environment()" in before, "an environment summary comes before the parameters"
    assert "SMOKE = is_smoke()" in cells[position].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_only_the_parameters_cell_branches_on_smoke_mode(path: Path) -> None:
    cells = nbformat.read(str(path), as_version=4).cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            nodes = list(ast.walk(parse(cell.source)))
            names = {n.id for n in nodes if isinstance(n, ast.Name)}
            assert not names & {"SMOKE", "is_smoke"}, f"cell {i} branches on smoke mode: only the parameters cell may"
            # the variable's name as a key (os.environ["COURSE_SMOKE"], getenv) or in a magic (%env, !...); advice
            # that tells the learner to set it ("run with COURSE_SMOKE=1") is prose, not a read
            keys = [n for n in nodes if isinstance(n, ast.Constant) and n.value == "COURSE_SMOKE"]
            magics = [line for line in cell.source.splitlines() if line.lstrip()[:1] in "%!" and "COURSE_SMOKE" in line]
            assert not keys and not magics, f"cell {i} reads COURSE_SMOKE: only the parameters cell may"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_notebook_edits_sys_path(path: Path) -> None:
    """The course is a package installed editable (make setup, or the Colab setup cell): nothing edits sys.path."""
    for i, cell in enumerate(code_cells(path)):
        assert not re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*(\+=|=)", cell), f"cell {i} edits sys.path"


DEPRECATED_NAMES = {"gradient_checkpointing_enable": "activation_checkpointing_enable",
                    "gradient_checkpointing_disable": "activation_checkpointing_disable",
                    "is_gradient_checkpointing": "is_activation_checkpointing"}
OLD_KEYWORDS = {"torch_dtype": "dtype", "evaluation_strategy": "eval_strategy", "max_seq_length": "max_length",
                "trust_remote_code": "(nothing: the course never runs a repository's code)"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_reports_a_key_figure_and_uses_todays_safe_apis(path: Path) -> None:
    source = "\n".join(code_cells(path))
    assert "key_figure(" in source
    assert not re.search(r"\bimport pickle\b|pickle\.load", source)
    for cell in code_cells(path):
        for node in ast.walk(parse(cell)):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name != "prepare_model_for_int8_training", "use prepare_model_for_kbit_training"
                assert name not in DEPRECATED_NAMES, f"{name} is deprecated: use {DEPRECATED_NAMES.get(name)}"
            if not isinstance(node, ast.Call):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            keywords = {k.arg for k in node.keywords}
            for old, new in OLD_KEYWORDS.items():
                assert old not in keywords, f"{func}({old}=...) is the old API: use {new}"
            if func == "prepare_model_for_kbit_training":  # it would call transformers' deprecated name
                assert any(k.arg == "use_gradient_checkpointing" and getattr(k.value, "value", None) is False
                           for k in node.keywords), ("pass use_gradient_checkpointing=False and turn checkpointing on "
                                                     "with activation_checkpointing_enable (or the Trainer's "
                                                     "activation_checkpointing=True)")
            if func.endswith(("Config", "Arguments")):
                assert not keywords & {"gradient_checkpointing", "gradient_checkpointing_kwargs"}, (
                    "use activation_checkpointing=, activation_checkpointing_kwargs=")
            if func == "from_pretrained":
                assert not keywords & {"load_in_8bit", "load_in_4bit"}, "use quantization_config=BitsAndBytesConfig(...)"
            if func == "load" and "weights_only" in keywords:
                continue
            if func == "load" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch":
                pytest.fail("torch.load without weights_only=True can run pickled code")


def test_no_two_notebooks_define_the_same_name() -> None:
    owners: dict[str, str] = {}
    for path in NOTEBOOKS:
        for source in code_cells(path):
            for name in top_level_defs(parse(source)):
                assert owners.setdefault(name, path.name) == path.name, (
                    f"{name} is defined in {owners[name]} and {path.name}: define it once (utils/ if shared)")


def test_every_chapter_has_a_readme() -> None:
    chapters = ["01-peft-setup", "02-lora-gptj", "03-qlora-bloom", "04-instruction-gpt2", "05-lr-schedules"]
    for chapter in chapters:
        assert (ROOT / chapter / "README.md").is_file(), chapter


# The technique notebooks (issue 22): chapter 01's from its registry, the others named. Each draws its mechanism.
TECHNIQUE_NOTEBOOKS = sorted({f"01-peft-setup/{m.notebook}" for m in METHODS.values()} | {
    "02-lora-gptj/01_lora_gptj_squad.ipynb",  # LoRA on GPT-J's attention
    "03-qlora-bloom/01_quantization_basics.ipynb",  # NF4
    "03-qlora-bloom/03_qlora_bloom_sfttrainer.ipynb",  # QLoRA
    "03-qlora-bloom/04_merge_adapter.ipynb",  # merging
    "04-instruction-gpt2/01_instruction_finetuning.ipynb",  # the padded and masked batch
    "04-instruction-gpt2/02_lora_from_scratch.ipynb",  # LoRA from scratch
})


@pytest.mark.parametrize("name", TECHNIQUE_NOTEBOOKS)
def test_each_technique_notebook_draws_its_mechanism(name: str) -> None:
    """A cell tagged `diagram` that plots (matplotlib, or a drawing function the notebook defines), after a markdown
    cell saying what it shows."""
    cells = nbformat.read(str(ROOT / name), as_version=4).cells
    draws = re.compile(r"\bplt\.|\bax\.|\baxes\b|matplotlib")
    drawing = {d for c in cells if c.cell_type == "code" and draws.search(c.source)
               for d in re.findall(r"^def (\w+)", c.source, re.MULTILINE)}
    drawn = [i for i, c in enumerate(cells) if c.cell_type == "code" and "diagram" in c.metadata.get("tags", [])]
    assert drawn, f"{name}: no code cell tagged 'diagram'"
    for i in drawn:
        calls = set(re.findall(r"\b(\w+)\(", cells[i].source))
        assert draws.search(cells[i].source) or calls & drawing, f"{name} cell {i}: draws nothing"
        assert cells[i - 1].cell_type == "markdown", f"{name} cell {i}: a sentence before the diagram says what it shows"
