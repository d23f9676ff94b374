"""One source for each piece of teaching code: the notebook cells tagged `#| export` (tools/nbexport.py).

The generated modules in utils/ are what `make sync` writes from those cells, byte for byte; no hand-written module
defines a name a notebook defines (a hand-kept copy); and the exporter refuses what would make a broken module.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from tools import nbexport, nbtools
from utils.paths import ROOT

NOTEBOOKS = nbtools.notebooks()
MAGIC = re.compile(r"^([ \t]*)[!%].*$", re.MULTILINE)


def _defined(source: str) -> set[str]:
    tree = ast.parse(MAGIC.sub(r"\1pass", source))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()}  # constants
    return names


def test_generated_modules_are_what_make_sync_writes() -> None:
    assert nbexport.stale(NOTEBOOKS) == [], "run `make sync`: edit the notebooks' `#| export` cells, not utils/"


def test_every_notebooks_own_exports_make_a_complete_module() -> None:
    """`#| export` cells without a module (loaded by tests) use only what exported cells import or define: `load` runs
    all of a notebook's export cells, so a notebook's own code may use what its `#| export <module>` cells define."""
    for path in NOTEBOOKS:
        parts = nbexport.notebook_parts(path)
        if any(part.module is None for part in parts):
            nbexport.render("notebook", parts)  # raises ExportError naming the undefined names


def test_no_hand_kept_copies_of_notebook_code() -> None:
    """A function, class or constant a notebook defines is nowhere else in utils/ but in its generated module."""
    generated = set(nbexport.generated_files())
    hand_written = {}
    for module in sorted((ROOT / "utils").glob("*.py")):
        if module not in generated:
            for name in _defined(module.read_text(encoding="utf-8")):
                hand_written[name] = module.name
    copies = []
    for path in NOTEBOOKS:
        for cell in nbformat.read(str(path), as_version=4).cells:
            if cell.cell_type == "code" and "setup" not in cell.metadata.get("tags", []):  # generated from utils.paths
                copies += [f"{path.name} and utils/{hand_written[n]} both define {n}"
                           for n in sorted(_defined(cell.source) & set(hand_written))]
    assert copies == []


def test_a_hand_edit_of_a_generated_module_is_caught_and_sync_restores_it(tmp_path: Path) -> None:
    package = tmp_path / "lessons"
    shutil.copytree(nbexport.PACKAGE, package)
    module = next(iter(nbexport.generated_files(package)))
    module.write_text(module.read_text() + "\nEDITED = 1\n")
    (package / "gone.py").write_text(nbexport.GENERATED.format(module="gone") + "\n")
    assert sorted(nbexport.stale(NOTEBOOKS, package)) == sorted([
        f"utils/lessons/{module.name} differs from its notebooks' `#| export {module.stem}` cells",
        "utils/lessons/gone.py is generated but no notebook exports to it any more"])
    changed = nbexport.sync(NOTEBOOKS, package)
    assert f"export: utils/lessons/{module.name}" in changed and "export: removed utils/lessons/gone.py" in changed
    assert nbexport.stale(NOTEBOOKS, package) == []
    assert module.read_text() == (nbexport.PACKAGE / module.name).read_text()


def _notebook(tmp_path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    path = ROOT / "build" / "test-exports" / f"{tmp_path.name}.ipynb"  # under ROOT: parts name it relative to ROOT
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_a_module_gathers_and_prunes_imports_in_notebook_order(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "#| export demo\nimport math\nimport os\n\ndef area(r):\n    return math.pi * r * r",
                     "print(area(1))", "#| export demo\ndef ring(r, s):\n    # why: a ring is a difference of discs\n"
                     "    return area(r) - area(s)")
    text = nbexport.render("demo", nbexport.modules([path])["demo"])
    assert text.startswith(nbexport.GENERATED.format(module="demo"))
    assert "import math\n" in text and "import os" not in text and "print(" not in text
    assert text.index("def area") < text.index("def ring") and "# why: a ring" in text
    namespace: dict = {}
    exec(text, namespace)  # noqa: S102
    assert namespace["ring"](2, 1) == pytest.approx(3 * 3.141592653589793)
    path.unlink()


@pytest.mark.parametrize(("cell", "message"), [
    ("#| export demo\ndef f():\n    return STEPS", r"Undefined name `STEPS`"),
    ("#| export demo\n!pip install x", r"cell 0: an exported cell cannot hold IPython magics"),
    ("#| export Demo-1\nx = 1", r"cell 0: '#\| export Demo-1' is not"),
    ("#| export demo\ndef f(:\n    pass", r"cell 0: not valid Python"),
], ids=["notebook variable", "magic", "bad name", "syntax"])
def test_what_cannot_be_exported_is_refused_naming_the_cell(tmp_path: Path, cell: str, message: str) -> None:
    path = _notebook(tmp_path, cell)
    with pytest.raises(nbexport.ExportError, match=message):
        for module, parts in nbexport.modules([path]).items():
            nbexport.render(module, parts)
    path.unlink()


def test_sync_never_overwrites_a_hand_written_module(tmp_path: Path) -> None:
    package = tmp_path / "utils"
    package.mkdir()
    (package / "paths.py").write_text('"""hand-written"""\n')
    path = _notebook(tmp_path, "#| export paths\nX = 1")
    with pytest.raises(nbexport.ExportError, match="utils/lessons/paths.py is hand-written"):
        nbexport.sync([path], package)
    assert (package / "paths.py").read_text() == '"""hand-written"""\n'
    path.unlink()


def test_tests_load_a_lesson_from_its_notebook() -> None:
    ch05 = nbexport.load("05-lr-schedules/01_warmup_cosine_clipping.ipynb")
    assert ch05.count_steps(9, 15, 0.2) == (135, 27)  # the source's 9 batches x 15 epochs, 20% warmup
    assert nbexport.load(ROOT / "05-lr-schedules/01_warmup_cosine_clipping.ipynb") is ch05


def _utils_imports(source: str) -> set[str]:
    """The utils modules `source` imports, as paths below utils/ ("machine", "lessons.gpt")."""
    found = set()
    for node in ast.walk(ast.parse(MAGIC.sub(r"\1pass", source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "utils":
            inner = node.module.removeprefix("utils").removeprefix(".")
            found.add(inner or "__init__")
            found |= {f"{inner}.{alias.name}".lstrip(".") for alias in node.names}  # `from utils.lessons import gpt`
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("utils.") for a in node.names if a.name.startswith("utils.")}
    return found


def test_utils_holds_only_what_notebooks_and_chapter_scripts_import() -> None:
    """utils/ is what the lessons import at run time (directly or through another utils module), nothing else:
    code only tests or tooling need is loaded from its notebook or lives in tools/."""
    sources = [cell.source for path in NOTEBOOKS for cell in nbformat.read(str(path), as_version=4).cells
               if cell.cell_type == "code"]
    sources += [p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("[0-9][0-9]-*/*.py"))]
    modules = {p.relative_to(ROOT / "utils").with_suffix("").as_posix().replace("/", "."): p.read_text(encoding="utf-8")
               for p in (ROOT / "utils").rglob("*.py") if p.stem != "__init__"}
    used = set().union(*map(_utils_imports, sources))
    todo = list(used)
    while todo:
        for name in _utils_imports(modules.get(todo.pop(), "")) - used:
            used.add(name)
            todo.append(name)
    assert sorted(set(modules) - used) == []


def test_the_reported_figures_agree_with_the_exporter() -> None:
    """tools.code_figures (the figures the notes quote) counts 0 copies and the modules sync generated."""
    from tools.code_figures import figures

    found = figures(ROOT)
    assert found["hand-kept copies"] == 0
    assert found["generated modules"] == sorted(p.stem for p in nbexport.generated_files())
    assert found["utils lines"] == found["hand-written utils lines"] + found["generated utils lines"]
    assert set(found["chapters"]) == {p.parent.name for p in NOTEBOOKS}
