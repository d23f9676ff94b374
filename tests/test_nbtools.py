"""tools/nbtools.py's generated cells: the setup cell collapsed to one titled line (Colab's form, JupyterLab's hidden
source), and the badges and setup cells following the repository that `git remote get-url origin` names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tools import nbtools
from utils import paths
from utils.paths import ROOT

NOTEBOOKS = nbtools.notebooks()
IDS = [str(p.relative_to(ROOT)) for p in NOTEBOOKS]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_setup_cell_shows_one_titled_line_in_colab_and_jupyterlab(path: Path) -> None:
    cell = next(c for c in nbformat.read(str(path), as_version=4).cells if "setup" in c.metadata.get("tags", []))
    assert cell.metadata["cellView"] == "form"  # Colab: a form, its code hidden behind the title
    assert cell.metadata["jupyter"]["source_hidden"] is True  # JupyterLab: collapsed to the first line
    title = cell.source.splitlines()[0]
    assert title.startswith("# @title Setup: ") and "open the cell" in title and len(title) <= 120


def test_the_title_line_is_a_plain_comment() -> None:
    """What Colab reads as a form title is, to Python, a comment: the cell parses and runs as before."""
    tree = ast.parse(nbtools.setup_source())
    assert ast.get_source_segment(nbtools.setup_source(), tree.body[0]).startswith("import ")
    assert nbtools.setup_source().startswith(nbtools.SETUP_TITLE + "\n")


def _notebook(tmp_path: Path, metadata: dict) -> Path:
    path = tmp_path / "nb.ipynb"
    nbtools.make_notebook(path, [("md", "# T"), ("code", "SMOKE = is_smoke()", ["parameters"])])
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].metadata = metadata
    nbformat.write(nb, str(path))
    return path


@pytest.mark.parametrize("metadata", [
    {"tags": ["setup"]},
    {"tags": ["setup"], "cellView": "form"},
    {"tags": ["setup"], "jupyter": {"source_hidden": False}, "cellView": "form"},
], ids=["neither", "colab only", "shown in jupyterlab"])
def test_check_fails_on_a_setup_cell_that_is_not_collapsed_and_sync_collapses_it(tmp_path, monkeypatch, metadata):
    monkeypatch.setattr(nbtools, "ROOT", tmp_path)
    path = _notebook(tmp_path, metadata)
    assert any("'setup' cell is not collapsed" in p for p in nbtools.check(path))
    assert nbtools.sync(path) is True
    assert nbtools.check(path) == [] and nbtools.sync(path) is False
    cell = nbformat.read(str(path), as_version=4).cells[2]
    assert cell.metadata == {"tags": ["setup"], "cellView": "form", "jupyter": {"source_hidden": True}}


def test_a_new_notebook_is_made_collapsed(tmp_path, monkeypatch):
    monkeypatch.setattr(nbtools, "ROOT", tmp_path)
    path = tmp_path / "new.ipynb"
    nbtools.make_notebook(path, [("md", "# T"), ("code", "SMOKE = is_smoke()", ["parameters"])])
    assert nbtools.check(path) == []


@pytest.mark.parametrize(("url", "slug"), [
    ("https://github.com/someone/peft-fork", "someone/peft-fork"),
    ("https://github.com/someone/peft-fork.git", "someone/peft-fork"),
    ("https://github.com/some-one/peft.course.git/\n", "some-one/peft.course"),
    ("git@github.com:someone/peft-fork.git", "someone/peft-fork"),
    ("git@github.com:someone/peft-fork", "someone/peft-fork"),
    ("ssh://git@github.com/someone/peft-fork.git", "someone/peft-fork"),
    ("https://gitlab.com/someone/peft-fork.git", None),
    ("git@gitlab.com:someone/peft-fork.git", None),
    ("https://github.com.evil.example/someone/peft-fork", None),
    ("/srv/git/peft-course.git", None),
    ("https://github.com/someone", None),
])
def test_github_addresses_are_recognised(url, slug):
    assert nbtools.github_slug(url) == slug


def _repo(tmp_path: Path, origin: str | None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    subprocess.run([*GIT, "init", "-q"], cwd=repo, check=True)
    if origin is not None:
        subprocess.run([*GIT, "remote", "add", "origin", origin], cwd=repo, check=True)
    return repo


def _paths_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "paths.py"
    shutil.copy2(ROOT / "utils" / "paths.py", copy)
    return copy


@pytest.mark.parametrize(("origin", "slug"), [
    ("https://github.com/someone/peft-fork.git", "someone/peft-fork"),
    ("git@github.com:someone/peft-fork.git", "someone/peft-fork"),
    ("https://gitlab.example.org/someone/peft-fork.git", None),
    (None, None),
], ids=["github https", "github ssh", "not github", "no remote"])
def test_sync_takes_repo_slug_from_a_github_origin_and_keeps_it_otherwise(tmp_path, origin, slug):
    repo, paths_file = _repo(tmp_path, origin), _paths_copy(tmp_path)
    before = paths_file.read_text()
    message = nbtools.follow_origin(repo, paths_file)
    if slug is None:
        assert paths_file.read_text() == before and message.startswith("REPO_URL: kept")
    else:
        assert f'REPO_SLUG: str = "{slug}"\n' in paths_file.read_text()
        assert before.replace(f'"{paths.REPO_SLUG}"', f'"{slug}"') == paths_file.read_text()  # that line alone
        assert message == f"REPO_URL: set to https://github.com/{slug}"
        assert "in sync" in nbtools.follow_origin(repo, paths_file)  # a second sync changes nothing
    assert (paths.REPO_SLUG, paths.REPO_URL) == ("peft-course/peft-course", "https://github.com/peft-course/peft-course")


def test_check_never_reads_the_remote(monkeypatch, capsys):
    real_run = subprocess.run

    def no_git(command, *args, **kwargs):
        assert "git" not in Path(str(command[0])).name, f"check ran {command}"
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_git)
    assert nbtools.main(["check"]) == 0
    assert "in sync" in capsys.readouterr().out


@pytest.mark.slow
def test_a_fork_runs_make_sync_once_and_its_badges_are_its_own(tmp_path):
    """A copy of this working tree as a fork's clone (origin on GitHub, ssh): `python -m tools.nbtools sync` writes the
    fork's REPO_SLUG and every badge and setup cell from it, and `check` passes there; with the origin moved to
    another host, sync keeps the fork's value."""
    fork = tmp_path / "fork"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (fork / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, fork / name)
    subprocess.run([*GIT, "init", "-q"], cwd=fork, check=True)
    subprocess.run([*GIT, "remote", "add", "origin", "git@github.com:someone/peft-fork.git"], cwd=fork, check=True)
    # the fork's own tools and utils, not this working tree's editable install
    env = {**os.environ, "PYTHONPATH": str(fork)}

    def nbtools_in_fork(command: str) -> str:
        run = subprocess.run([sys.executable, "-m", "tools.nbtools", command], cwd=fork, env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr[-3000:]
        return run.stdout

    assert "REPO_URL: set to https://github.com/someone/peft-fork" in nbtools_in_fork("sync")
    assert 'REPO_SLUG: str = "someone/peft-fork"' in (fork / "utils" / "paths.py").read_text()
    for path in NOTEBOOKS:
        text = (fork / path.relative_to(ROOT)).read_text()
        assert "colab.research.google.com/github/someone/peft-fork/blob/main/" in text
        assert 'REPO_URL = \\"https://github.com/someone/peft-fork\\"' in text
        assert "peft-course/peft-course" not in text
    assert "in sync" in nbtools_in_fork("check")
    subprocess.run([*GIT, "remote", "set-url", "origin", "https://gitlab.example.org/someone/peft-fork.git"], cwd=fork,
                   check=True)
    assert "REPO_URL: kept https://github.com/someone/peft-fork" in nbtools_in_fork("sync")
