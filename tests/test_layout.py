"""utils/'s layout, from its import graph (tools.code_figures.import_graph, lazy imports included): no cycle; the
runtime package never imports the repository's tooling or benchmarks; a chapter's plumbing (utils/chNN_*.py) never
imports another chapter's plumbing or lessons; and the modules `make sync` generates live in utils/lessons/ alone.
"""

from __future__ import annotations

import re

from tools import nbexport, nbtools
from tools.code_figures import import_graph
from utils.paths import ROOT

GRAPH = import_graph(ROOT)
CHAPTER_PLUMBING = re.compile(r"^utils\.ch(\d\d)_\w+$")


def _chapters_of_lessons() -> dict[str, set[str]]:
    """{utils.lessons.<module>: the chapters ("01", ...) whose notebooks export to it}."""
    return {f"utils.lessons.{module}": {part.notebook.parent.name[:2] for part in parts}
            for module, parts in nbexport.modules(nbtools.notebooks()).items()}


def test_the_graph_sees_the_imports() -> None:
    """The graph itself, on edges known to exist: a module-level import, a `from utils import` and a lazy import."""
    assert "utils.errors" in GRAPH["utils.smoke"] and "utils.checks" in GRAPH["utils.lessons.gpt"]
    assert "utils.lessons.quantization" in GRAPH["utils.lessons.memory_budget"]
    assert GRAPH.keys() >= {"utils", "utils.lessons", "utils.paths", "utils.lessons.peft_recipes"}


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module not in done and module in GRAPH:
            for imported in GRAPH[module]:
                visit(imported, [*path, module])
            done.add(module)

    for module in GRAPH:
        visit(module, [])


def test_utils_never_imports_the_tooling_or_the_benchmarks() -> None:
    edges = [f"{m} -> {i}" for m, imported in GRAPH.items() for i in imported if i.split(".")[0] in {"tools", "bench"}]
    assert not edges, f"utils/ is what notebooks import at run time; tools/ and bench/ import it, not the reverse: {edges}"


def test_a_chapters_plumbing_imports_no_other_chapters_code() -> None:
    lessons = _chapters_of_lessons()
    assert lessons.keys() <= GRAPH.keys(), "every exported module is in utils/lessons/"
    wrong = []
    for module, imported in GRAPH.items():
        if (match := CHAPTER_PLUMBING.match(module)) is None:
            continue
        for other in imported:
            theirs = CHAPTER_PLUMBING.match(other)
            chapters = {theirs[1]} if theirs else lessons.get(other, {match[1]})  # shared plumbing: no chapter
            if match[1] not in chapters:
                wrong.append(f"{module} -> {other} (chapter {', '.join(sorted(chapters))})")
    assert not wrong, f"a chapter's plumbing stands on shared plumbing (checks, hub, machine, ...) only: {wrong}"


def test_generated_modules_live_in_utils_lessons_alone() -> None:
    header = nbexport.GENERATED.split("{")[0]
    generated = {p for p in (ROOT / "utils").rglob("*.py") if p.read_text(encoding="utf-8").startswith(header)}
    lessons = {p for p in (ROOT / "utils" / "lessons").glob("*.py") if p.name != "__init__.py"}
    assert generated == lessons, (f"generated outside utils/lessons/: {sorted(map(str, generated - lessons))}; "
                                  f"hand-written inside it: {sorted(map(str, lessons - generated))}")


def test_the_layout_names_every_module() -> None:
    """CONTRIBUTING.md's layout, the one map of the package, names each hand-written module of utils/ and each module
    of utils/lessons/ (the ones `make sync` writes)."""
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    plumbing = contributing[contributing.index("## Where code lives"):contributing.index("utils/lessons/   generated")]
    lessons = contributing[contributing.index("utils/lessons/   generated"):contributing.index("tools/           the")]
    listed = set(re.findall(r"^  ([a-z]\w*) ", plumbing, re.MULTILINE)) | set(re.findall(r"\bch\d\d_[a-z]\w*", plumbing))
    modules = {p.stem for p in (ROOT / "utils").glob("*.py")} - {"__init__"}
    assert listed == modules, f"CONTRIBUTING.md's utils/: add {sorted(modules - listed)}, drop {sorted(listed - modules)}"
    generated = {p.stem for p in nbexport.generated_files()}
    assert [m for m in sorted(generated) if not re.search(rf"\b{m}\b", lessons)] == [], "CONTRIBUTING.md's lessons"
