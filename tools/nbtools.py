"""Notebook tooling: the generated Colab badge and setup cells, exported modules, README blocks, new notebooks,
stripping outputs.

`python -m tools.nbtools sync` first points `utils.paths.REPO_SLUG` (the one place the repository is named) at the
GitHub repository `git remote get-url origin` names, when it names one (a fork's badges are then its own), then
rewrites every notebook's badge and setup cell from it (the setup cell collapsed to its title line, in Colab and in
JupyterLab), every module the notebooks' `#| export` cells make (tools/nbexport.py), and the READMEs' lists of
chapter 01's methods from its registry (utils/ch01_methods.py); `python -m tools.nbtools check` fails on any of them
being stale, and never reads the remote (a fresh clone passes it); `strip` removes outputs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import nbformat

from tools import nbexport
from utils import paths
from utils.paths import ROOT

COLAB_DIR = "/content/peft-course"
BADGE_TAG = "colab-badge"
SETUP_TAG = "setup"
PARAMETERS_TAG = "parameters"
#: The setup cell's first line: what Colab (a form's title) and JupyterLab (a hidden cell's first line) show of it.
SETUP_TITLE = "# @title Setup: on Colab, install the course and its pinned ML stack (open the cell to see the code)"
#: The setup cell's metadata beyond its tag: collapsed to that line in Colab (a form) and in JupyterLab.
SETUP_METADATA = {"cellView": "form", "jupyter": {"source_hidden": True}}
#: A GitHub repository's address, as `git remote get-url origin` prints it (https, or ssh in either spelling).
GITHUB_REMOTE = re.compile(r"^(?:https://(?:[^@/]+@)?|ssh://git@|git@)(?i:github\.com)[/:]"
                           r"(?P<slug>[A-Za-z0-9](?:[A-Za-z0-9-]*)/[A-Za-z0-9._-]+?)(?:\.git)?/?$")
PATHS_FILE = ROOT / "utils" / "paths.py"


def notebooks(root: Path = ROOT) -> list[Path]:
    """Every chapter notebook (`NN-*/*.ipynb`), in chapter and file order: new ones are found automatically."""
    return sorted(p for p in root.glob("[0-9][0-9]-*/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def badge_source(path: Path) -> str:
    """The "Open in Colab" badge for the notebook at `path`."""
    rel = path.resolve().relative_to(ROOT).as_posix()
    url = f"https://colab.research.google.com/github/{paths.REPO_SLUG}/blob/main/{rel}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source() -> str:
    """The setup cell: on Colab, clone the course, install it and its ML stack (utils/colab.py); elsewhere, check
    that `make setup` installed it. No notebook edits sys.path: the course is a package (pyproject.toml). Its first
    line, a comment, is the title Colab and JupyterLab show while it is collapsed (SETUP_METADATA)."""
    return (
        f"{SETUP_TITLE}\n"
        "# On Colab: clone the course, install it editable (`import utils` then works, also after a restart) and its ML\n"
        "# stack, leaving Colab's own packages (torch, the kernel, pandas, ...) alone. Elsewhere `make setup` did it all.\n"
        "import importlib.metadata\n"
        "import importlib.util\n"
        "import site\n"
        "import subprocess\n"
        "import sys\n"
        "from pathlib import Path\n"
        "\n"
        f'REPO_URL = "{paths.REPO_URL}"  # generated from utils/paths.py\n'
        'if "google.colab" in sys.modules:\n'
        f'    ROOT = Path("{COLAB_DIR}")\n'
        '    if not (ROOT / "utils").is_dir():\n'
        '        clone = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], capture_output=True, text=True)\n'
        "        if clone.returncode != 0:\n"
        '            raise RuntimeError(f"could not clone the course from REPO_URL = {REPO_URL}: {clone.stderr.strip()}\\n"\n'
        '                               f"Check the address (set REPO_URL to your fork\'s) and that the runtime is online; "\n'
        '                               f"if {ROOT} is left half-written, delete it first (!rm -rf {ROOT}).")\n'
        '    if importlib.util.find_spec("utils") is None:\n'
        '        pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--editable", str(ROOT)],\n'
        "                             capture_output=True, text=True)\n"
        "        if pip.returncode != 0:\n"
        '            raise RuntimeError(f"could not install the course from {ROOT}: {pip.stderr.strip()[-500:]}")\n'
        "        importlib.invalidate_caches()\n"
        "        # Read the .pth file pip just wrote, as Python does at start-up: this kernel then imports the course too.\n"
        '        site.addsitedir(str(importlib.metadata.distribution("peft-course").locate_file("")))\n'
        "    from utils.colab import install_course_stack\n"
        "\n"
        "    install_course_stack()\n"
        "    # Chapters 01 and 02 load tiny local checkpoints in full mode too (a support matrix, a merge demo).\n"
        '    built = subprocess.run([sys.executable, "-m", "tools.tiny_checkpoints"], cwd=ROOT, capture_output=True, text=True)\n'
        "    if built.returncode != 0:\n"
        '        raise RuntimeError(f"could not build the tiny checkpoints: {built.stderr.strip()[-500:]}")\n'
        "    print(built.stdout.strip())\n"
        'elif importlib.util.find_spec("utils") is None:\n'
        '    raise RuntimeError("this kernel\'s Python does not have the course installed: run `make setup` in the course "\n'
        '                       "folder and choose its .venv as the kernel (or run `pip install -e .` there)")'
    )


def _tagged(cell, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def _collapsed(cell) -> bool:
    """Whether a cell carries SETUP_METADATA (other keys in its metadata may be there too)."""
    metadata = cell.get("metadata", {})
    return all(metadata.get(key) == value if not isinstance(value, dict)
               else all(metadata.get(key, {}).get(k) == v for k, v in value.items())
               for key, value in SETUP_METADATA.items())


def _collapse(cell) -> None:
    cell.metadata["cellView"] = SETUP_METADATA["cellView"]
    cell.metadata.setdefault("jupyter", {}).update(SETUP_METADATA["jupyter"])


def github_slug(url: str) -> str | None:
    """"OWNER/REPO" of a GitHub remote URL (https://github.com/OWNER/REPO(.git), git@github.com:OWNER/REPO(.git),
    ssh://git@github.com/OWNER/REPO(.git)); None for any other address."""
    match = GITHUB_REMOTE.match(url.strip())
    return match["slug"] if match else None


def origin_slug(root: Path = ROOT) -> str | None:
    """The GitHub repository `git remote get-url origin` names in `root`; None without git, a repository, an origin,
    or when origin is not on GitHub."""
    try:
        run = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return github_slug(run.stdout) if run.returncode == 0 else None


def set_repo_slug(slug: str, paths_file: Path = PATHS_FILE) -> bool:
    """Write `slug` into utils/paths.py's one `REPO_SLUG` line (and this process's utils.paths); True if it changed."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+", slug):
        raise ValueError(f"{slug!r} is not a GitHub OWNER/REPO")
    text = paths_file.read_text(encoding="utf-8")
    line = re.compile(r'^REPO_SLUG: str = "([^"]*)"$', re.MULTILINE)
    if len(line.findall(text)) != 1:
        raise ValueError(f"{paths_file}: expected one line `REPO_SLUG: str = \"OWNER/REPO\"`")
    changed = line.search(text)[1] != slug
    if changed:
        paths_file.write_text(line.sub(f'REPO_SLUG: str = "{slug}"', text), encoding="utf-8")
    if paths_file.resolve() == PATHS_FILE.resolve():
        paths.REPO_SLUG, paths.REPO_URL = slug, f"https://github.com/{slug}"
    return changed


def follow_origin(root: Path = ROOT, paths_file: Path = PATHS_FILE) -> str:
    """`sync`'s first step: REPO_SLUG from the origin remote when it is on GitHub, else unchanged. Says which."""
    slug = origin_slug(root)
    if slug is None:
        return f"REPO_URL: kept {paths.REPO_URL} (no GitHub origin remote)"
    changed = set_repo_slug(slug, paths_file)
    return f"REPO_URL: {'set to' if changed else 'in sync with origin,'} https://github.com/{slug}"


def make_notebook(path: Path, cells: Sequence[tuple[str, str] | tuple[str, str, list[str]]]) -> Path:
    """Write a new notebook: `cells` is [(kind, source[, tags])] with kind "md" or "code"; the first must be the
    markdown title. The badge and setup cells are inserted after it. Returns the path."""
    path = Path(path)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    made = []
    for kind, source, *rest in cells:
        tags = rest[0] if rest else []
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = list(tags)
        made.append(cell)
    if not made or made[0].cell_type != "markdown":
        raise ValueError("the first cell must be the markdown title")
    badge = nbformat.v4.new_markdown_cell(badge_source(path), metadata={"tags": [BADGE_TAG]})
    setup = nbformat.v4.new_code_cell(setup_source(), metadata={"tags": [SETUP_TAG]})
    _collapse(setup)
    nb.cells = [made[0], badge, setup, *made[1:]]
    _write(nb, path)
    return path


def _write(nb, path: Path) -> None:
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: clean diffs
    nbformat.write(nb, str(path))


def sync(path: Path) -> bool:
    """Regenerate the badge and setup cells of one notebook (the setup cell collapsed); return True if anything
    changed."""
    nb = nbformat.read(str(path), as_version=4)
    changed = False
    for cell in nb.cells:
        want = badge_source(path) if _tagged(cell, BADGE_TAG) else setup_source() if _tagged(cell, SETUP_TAG) else None
        if want is not None and cell.source != want:
            cell.source, changed = want, True
        if _tagged(cell, SETUP_TAG) and not _collapsed(cell):
            _collapse(cell)
            changed = True
    if changed:
        _write(nb, path)
    return changed


def strip(path: Path) -> bool:
    """Remove outputs, execution counts and widget state from one notebook; return True if anything changed."""
    nb = nbformat.read(str(path), as_version=4)
    changed = "widgets" in nb.metadata
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            changed |= bool(cell.outputs) or cell.execution_count is not None
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "collapsed", "scrolled"):
            changed |= cell.metadata.pop(key, None) is not None
    if changed:
        _write(nb, path)
    return changed


def check(path: Path) -> list[str]:
    """What is wrong with a committed notebook: outputs, execution counts, widget state, stale generated cells."""
    nb = nbformat.read(str(path), as_version=4)
    problems = ["metadata.widgets present"] if "widgets" in nb.metadata else []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            problems.append(f"cell {i} has outputs or an execution count")
    tags = [tag for cell in nb.cells for tag in cell.get("metadata", {}).get("tags", [])]
    for tag in (BADGE_TAG, SETUP_TAG, PARAMETERS_TAG):
        if tags.count(tag) != 1:
            problems.append(f"{tags.count(tag)} cells tagged {tag!r}, expected exactly 1")
    for cell in nb.cells:
        want = badge_source(path) if _tagged(cell, BADGE_TAG) else setup_source() if _tagged(cell, SETUP_TAG) else None
        if want is not None and cell.source != want:
            problems.append(f"the {cell.metadata['tags'][0]!r} cell differs from the generated one")
        if _tagged(cell, SETUP_TAG) and not _collapsed(cell):
            problems.append(f"the 'setup' cell is not collapsed (metadata {SETUP_METADATA})")
    return problems


def readme_blocks() -> dict[Path, dict[str, str]]:
    """The README blocks `sync` writes, {README: {block name: text}}: chapter 01's methods, from its registry."""
    from utils.ch01_methods import METHODS

    methods = list(METHODS.values())
    table = ["| notebook | method | what it trains | paper |", "|---|---|---|---|"] + [
        f"| `{m.notebook}` | {m.name} | {m.trains} | {m.paper.authors}, [{m.paper.title}]({m.paper.url}) ({m.paper.year}) |"
        for m in methods]
    names = [m.name for m in methods]
    return {ROOT / "01-peft-setup" / "README.md": {"methods": "\n".join(table)},
            ROOT / "README.md": {"methods": ", ".join(names[:-1]) + " and " + names[-1]}}


def fill_blocks(text: str, blocks: dict[str, str], where: str = "README") -> str:
    """`text` with each `<!-- NAME:start -->...<!-- NAME:end -->` block holding blocks[NAME] (between lines of its
    own when it spans lines). A ValueError names a block that is missing or not written once."""
    for name, body in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
            raise ValueError(f"{where}: expected one `{start}` ... `{end}` block")
        head, rest = text.split(start)
        tail = rest.split(end)[1]
        text = head + start + (f"\n{body}\n" if "\n" in body else body) + end + tail
    return text


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def stale_readmes(blocks: dict[Path, dict[str, str]] | None = None) -> list[str]:
    """The READMEs whose generated blocks `sync` would change."""
    if blocks is None:
        try:
            blocks = readme_blocks()
        except (ImportError, AttributeError) as exc:  # a registry entry whose recipe is not exported yet
            return [f"utils/ch01_methods.py does not import ({type(exc).__name__}: {exc}): run `make sync`"]
    return [f"{_name(path)}: a generated block differs from utils/ch01_methods.py's METHODS" for path, named
            in blocks.items() if fill_blocks(text := path.read_text(encoding="utf-8"), named, _name(path)) != text]


def sync_readmes(blocks: dict[Path, dict[str, str]] | None = None) -> list[str]:
    """Rewrite the READMEs' generated blocks; returns what changed."""
    blocks = readme_blocks() if blocks is None else blocks
    changed = []
    for path, named in blocks.items():
        text = path.read_text(encoding="utf-8")
        if (filled := fill_blocks(text, named, _name(path))) != text:
            path.write_text(filled, encoding="utf-8")
            changed.append(f"sync: {_name(path)}")
    return changed


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["sync", "strip", "check", "list"])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(list(argv) if argv is not None else None)
    paths = args.paths or notebooks()
    if args.command == "check":
        problems = [f"{p.relative_to(ROOT)}: {problem}" for p in paths for problem in check(p)]
        problems += nbexport.stale(notebooks()) + stale_readmes() if not args.paths else []
        print("\n".join(problems) or f"{len(paths)} notebooks clean and in sync, and so are their exported modules"
                                     + ("" if args.paths else " and the README blocks"))
        if problems:
            print("fix with `make strip` (outputs) and `make sync` (badge and setup cells, exported modules, README blocks)")
        return 1 if problems else 0
    if args.command == "sync" and not args.paths:
        print(follow_origin())
        print("\n".join(nbexport.sync(notebooks())) or "exported modules: in sync")
        print("\n".join(sync_readmes()) or "README blocks: in sync")
    for path in paths:
        if args.command == "list":
            print(path.relative_to(ROOT))
        elif (sync if args.command == "sync" else strip)(path):
            print(f"{args.command}: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
