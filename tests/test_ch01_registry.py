"""Chapter 01's registry (utils/ch01_methods.py) against what it lists: the method notebooks and their exported recipes,
`make_recipe`'s arguments, the READMEs' generated method lists, and the times table."""

from __future__ import annotations

import ast
import re

import pytest

from tools import nbexport, nbtools, times
from utils.ch01_methods import COMPARISON, METHODS, Method, Paper, make_recipe
from utils.ch01_peft import Recipe
from utils.errors import CourseArgumentError
from utils.paths import ROOT
from utils.smoke import tiny_checkpoint

CHAPTER = ROOT / "01-peft-setup"


def exported_recipes() -> dict[str, set[str]]:
    """{notebook file name: the functions its `#| export peft_recipes` cells define}, for every chapter 01 notebook."""
    found = {}
    for path in sorted(CHAPTER.glob("*.ipynb")):
        parts = [p for p in nbexport.notebook_parts(path) if p.module == "peft_recipes"]
        if parts:
            found[path.name] = {node.name for p in parts for node in ast.parse(p.source).body
                                if isinstance(node, ast.FunctionDef)}
    return found


def test_every_method_notebook_is_registered_and_every_registered_notebook_exports_its_recipe():
    exported = exported_recipes()
    registered = {method.notebook for method in METHODS.values()}
    assert set(exported) == registered, (
        f"notebooks with a `#| export peft_recipes` cell but no METHODS entry: {sorted(set(exported) - registered)}; "
        f"METHODS entries whose notebook exports no recipe: {sorted(registered - set(exported))}")
    for key, method in METHODS.items():
        assert method.recipe.__name__ in exported[method.notebook], (
            f"{key}: {method.recipe.__name__} is not defined in {method.notebook}'s `#| export peft_recipes` cell")
        assert method.recipe.__module__ == "utils.lessons.peft_recipes"  # the exported function, not a copy


def test_registry_entries_are_well_formed():
    assert len(METHODS) >= 6
    assert len({m.name for m in METHODS.values()}) == len(METHODS)
    runs = []  # a notebook may teach several methods (LoRA's knobs), listed in a row
    for notebook in (m.notebook for m in METHODS.values()):
        if not runs or runs[-1] != notebook:
            assert notebook not in runs, f"{notebook}'s methods are not listed in a row"
            runs.append(notebook)
    for key, method in METHODS.items():
        assert isinstance(method, Method) and method.key == key and re.fullmatch(r"[a-z0-9_]+", key)
        assert (CHAPTER / method.notebook).is_file(), method.notebook
        assert method.trains and "\n" not in method.trains
        paper = method.paper
        assert isinstance(paper, Paper) and paper.authors and paper.title and 2015 <= paper.year <= 2100
        assert re.fullmatch(r"\d{4}\.\d{4,5}", paper.arxiv) and paper.url == f"https://arxiv.org/abs/{paper.arxiv}"
    with pytest.raises(Exception, match="frozen|cannot assign"):
        METHODS["lora"].notebook = "other.ipynb"


def test_teaching_order_is_the_notebooks_order():
    notebooks = [m.notebook for m in METHODS.values()]
    assert notebooks == sorted(notebooks)


def test_make_recipe_passes_only_the_arguments_a_recipe_takes(monkeypatch):
    calls = []

    def neither(num_virtual_tokens=20):
        calls.append(("neither", num_virtual_tokens))
        return Recipe(None, 1e-3)

    def both(model_id, total_step=None, rank=4):
        calls.append(("both", model_id, total_step, rank))
        return Recipe(None, 1e-3)

    paper = Paper("A", 2024, "T", "2401.00001")
    monkeypatch.setitem(METHODS, "neither", Method("neither", "N", "n.ipynb", neither, paper, "n"))
    monkeypatch.setitem(METHODS, "both", Method("both", "B", "b.ipynb", both, paper, "b"))
    make_recipe("neither", "some/model", 7)
    make_recipe("both", "some/model", 7)
    assert calls == [("neither", 20), ("both", "some/model", 7, 4)]


def test_make_recipe_builds_each_registered_recipe_and_refuses_unknown_methods():
    tiny = tiny_checkpoint("bloom")
    for key in METHODS:
        assert isinstance(make_recipe(key, tiny, 30), Recipe)
    assert make_recipe("adalora", tiny, 30).config.total_step == 30
    assert make_recipe("prompt_tuning", tiny, 30).config.tokenizer_name_or_path == tiny
    with pytest.raises(CourseArgumentError, match=r"make_recipe\(\): key='vera' is not a chapter 01 method"):
        make_recipe("vera", tiny, 30)


def test_readme_method_lists_are_generated_from_the_registry():
    blocks = nbtools.readme_blocks()
    assert nbtools.stale_readmes(blocks) == [], "run `make sync`"
    chapter_readme = (CHAPTER / "README.md").read_text(encoding="utf-8")
    root_readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for method in METHODS.values():
        assert f"| `{method.notebook}` | {method.name} | {method.trains} |" in chapter_readme
        assert method.paper.url in chapter_readme
        assert method.name in root_readme.split("<!-- methods:start -->")[1].split("<!-- methods:end -->")[0]


def test_stale_readme_blocks_are_found_and_rewritten(tmp_path):
    table, listed = tmp_path / "table.md", tmp_path / "list.md"
    table.write_text("# x\n\n<!-- methods:start -->\n| old |\n<!-- methods:end -->\n\nafter\n")
    listed.write_text("learn <!-- methods:start -->A and B<!-- methods:end -->, then more\n")
    blocks = {table: {"methods": "| a |\n| b |"}, listed: {"methods": "A, B and C"}}
    assert len(nbtools.stale_readmes(blocks)) == 2
    assert len(nbtools.sync_readmes(blocks)) == 2
    assert table.read_text() == "# x\n\n<!-- methods:start -->\n| a |\n| b |\n<!-- methods:end -->\n\nafter\n"
    assert listed.read_text() == "learn <!-- methods:start -->A, B and C<!-- methods:end -->, then more\n"
    assert nbtools.stale_readmes(blocks) == [] and nbtools.sync_readmes(blocks) == []
    listed.write_text("no block here\n")
    with pytest.raises(ValueError, match="expected one `<!-- methods:start -->`"):
        nbtools.stale_readmes(blocks)


def test_times_table_has_a_t4_estimate_for_every_method_notebook():
    chapter01 = {name for name in times.T4_RECIPES if name.startswith("01-peft-setup/")}
    assert chapter01 == {f"01-peft-setup/{m.notebook}" for m in METHODS.values()} | {f"01-peft-setup/{COMPARISON}"}
    per_method = times.T4_RECIPES[f"01-peft-setup/{METHODS['lora'].notebook}"][1]
    assert times.T4_RECIPES[f"01-peft-setup/{COMPARISON}"][1] == len(METHODS) * per_method * 150 // 250
    for name, steps in times.CH01_STEPS.items():  # each notebook's full-mode optimizer steps, from its cell
        assert times.T4_RECIPES[f"01-peft-setup/{name}"][1] == steps * 8 * 30
        full = full_mode_values(CHAPTER / name)
        trains = sum(m.notebook == name for m in METHODS.values()) or len(METHODS)  # the comparison trains them all
        extra = {"08_dora.ipynb": 2 * (full.get("COST_STEPS", 0) + 1),  # and a warm-up step each
                 "09_lora_variants.ipynb": 2 * len(full.get("SWEEP_RANKS", ())) * full.get("SWEEP_STEPS", 0)}
        assert steps == trains * full["STEPS"] + extra.get(name, 0), name


def full_mode_values(path) -> dict:
    """The full-mode values of a notebook's parameters cell: `X = smoke if SMOKE else full` gives X = full."""
    import nbformat

    cell = next(c for c in nbformat.read(str(path), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value.orelse if isinstance(node.value, ast.IfExp) else node.value
            try:
                values[node.targets[0].id] = ast.literal_eval(value)
            except ValueError:
                pass
    return values


def test_the_comparison_comes_after_every_method_notebook():
    assert max(m.notebook for m in METHODS.values()) < COMPARISON, f"number the new method's notebook before {COMPARISON}"
    assert (CHAPTER / COMPARISON).is_file()
    assert max(p.name for p in CHAPTER.glob("[0-9][0-9]_*.ipynb")) == COMPARISON, "the comparison is the last notebook"


def test_times_json_lists_only_notebooks_the_course_has(tmp_path, monkeypatch):
    """Recording drops rows of renamed or removed notebooks, and the committed table has none."""
    for section in times.load().values():
        for row in section["rows"]:
            assert (times.ROOT / row["notebook"]).is_file(), f"docs/times.json: {row['notebook']} does not exist"
    monkeypatch.setattr(times, "DATA", tmp_path / "times.json")
    monkeypatch.setattr(times, "TABLE", tmp_path / "TIMES.md")
    times.DATA.write_text('{"smoke": {"meta": {}, "rows": [{"notebook": "01-peft-setup/gone.ipynb", "seconds": 1}, '
                          '{"notebook": "01-peft-setup/05_lora.ipynb", "seconds": 2}]}}')
    times.record("smoke", [{"notebook": "01-peft-setup/06_ia3.ipynb", "status": "ok", "seconds": 3}], {})
    assert [r["notebook"] for r in times.load()["smoke"]["rows"]] == ["01-peft-setup/05_lora.ipynb",
                                                                      "01-peft-setup/06_ia3.ipynb"]
    times.DATA.write_text('{"smoke": {"meta": {"source": "a run"}, "rows": [{"notebook": "01-peft-setup/gone.ipynb", '
                          '"seconds": 1}, {"notebook": "01-peft-setup/05_lora.ipynb", "seconds": 2}]}}')
    assert times.main([]) == 0  # `python -m tools.times` after a rename: the table, without the old name's row
    assert times.load()["smoke"] == {"meta": {"source": "a run"},
                                     "rows": [{"notebook": "01-peft-setup/05_lora.ipynb", "seconds": 2}]}
    assert "gone.ipynb" not in times.TABLE.read_text()
