"""Every notebook's setup cell, executed as on Colab, in a real kernel.

The stand-ins: a `google.colab` module (Colab's kernel has it imported), the course cloned from a local git repository
of this working tree instead of REPO_URL, and a `pip` that records what it is asked for and writes only package
metadata into a scratch folder, so that this environment is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from machine import PYTHON_313, needs

from tools.kernels import CourseNotebookClient
from tools.nbtools import COLAB_DIR, setup_source
from tools.tiny_checkpoints import BUILDS
from utils.colab import MIN_PYTHON, check_runtime, torch_range
from utils.errors import CourseError
from utils.paths import REPO_URL, ROOT

# This kernel's Python has the working tree installed editable (make setup); a fresh Colab runtime has no course.
HIDE_INSTALLED_COURSE = '''import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
'''

STANDIN_PIP = '''import json, os, pathlib, sys
with open(os.environ["STANDIN_PIP_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("STANDIN_PIP_FAIL") and "--editable" not in sys.argv:
    sys.exit("ERROR: No matching distribution found for " + sys.argv[-1])
site = pathlib.Path(__file__).resolve().parent.parent  # first on sys.path: what it "installs" shadows the real one
if "--editable" in sys.argv:  # the course itself: metadata and the .pth that puts the clone on the path, as pip does
    project = sys.argv[sys.argv.index("--editable") + 1]
    info = site / "peft_course-1.0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\\nName: peft-course\\nVersion: 1.0.0\\n")
    (site / "__editable__.peft_course-1.0.0.pth").write_text(project + "\\n")
for spec in sys.argv[1:]:
    if "==" in spec:
        name, version = spec.split("==")
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
'''


def _remote(tmp_path: Path, edits: dict[str, str] | None = None) -> Path:
    """A git repository of the working tree's files (what GitHub would serve), with `edits` applied."""
    remote = tmp_path / "remote"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, remote / name)
    for name, text in (edits or {}).items():
        (remote / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "course"]):
        subprocess.run([*git, *args], cwd=remote, check=True, capture_output=True)
    return remote


def _colab_cell(repo_url: str, content: Path) -> str:
    """The generated setup cell, pointed at `repo_url` and `content` instead of GitHub and /content."""
    source = setup_source()
    assert source.count(f'"{REPO_URL}"') == 1 and source.count(f'"{COLAB_DIR}"') == 1
    return source.replace(f'"{REPO_URL}"', f'"{repo_url}"').replace(f'"{COLAB_DIR}"', f'"{content}"')


def _run_on_colab(tmp_path: Path, monkeypatch, cells: list[str], pip_fails: bool = False) -> tuple[list[str], list]:
    """Execute `cells` in a fresh kernel that looks like Colab's; return each cell's text output and pip's calls."""
    standins = tmp_path / "standins"
    (standins / "google" / "colab").mkdir(parents=True)  # `google` stays a namespace package (protobuf lives there)
    (standins / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab\'s module."""\n')
    (standins / "sitecustomize.py").write_text(HIDE_INSTALLED_COURSE)
    (standins / "pip").mkdir()
    (standins / "pip" / "__init__.py").write_text("")
    (standins / "pip" / "__main__.py").write_text(STANDIN_PIP)
    pip_log = tmp_path / "pip-calls.jsonl"
    pip_log.touch()
    monkeypatch.setenv("PYTHONPATH", str(standins))
    monkeypatch.setenv("STANDIN_PIP_LOG", str(pip_log))
    if pip_fails:
        monkeypatch.setenv("STANDIN_PIP_FAIL", "1")
    work = tmp_path / "work"  # outside the repository: the course can only come from the clone
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import google.colab"), *map(nbformat.v4.new_code_cell, cells)]
    CourseNotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                         resources={"metadata": {"path": str(work)}}).execute()
    def text(output) -> str:  # what the learner reads: printed lines and the error, not libraries' warnings
        if output.output_type == "error":
            return f"{output.ename}: {output.evalue}"
        return output.get("text", "") if output.get("name") == "stdout" else ""

    texts = ["".join(map(text, cell.outputs)) for cell in nb.cells[1:]]
    return texts, [json.loads(line) for line in pip_log.read_text().splitlines()]


def _with_extra_pin(pin: str) -> dict[str, str]:
    return {"requirements-colab.txt": (ROOT / "requirements-colab.txt").read_text() + pin + "\n"}


def test_setup_cell_clones_installs_what_is_missing_and_a_second_run_changes_nothing(tmp_path, monkeypatch):
    remote = _remote(tmp_path, _with_extra_pin("course-standin-package==1.0"))  # a package this runtime lacks
    content = tmp_path / "content" / "peft-course"
    setup = _colab_cell(f"file://{remote}", content)
    imports = "import peft, trl, transformers\nfrom utils.lessons.environment import print_environment\nimport utils\nprint(utils.__file__)"
    (first, again, used), pip_calls = _run_on_colab(tmp_path, monkeypatch, [setup, setup, imports])
    assert "Installing course-standin-package==1.0 (Colab's own torch" in first
    assert "Installed: course-standin-package (new) -> 1.0" in first
    assert "already installed" in again and "nothing changed" in again
    assert f"tiny checkpoints: {len(BUILDS)} built" in first and "(all there already)" in again  # as make setup
    assert used.strip() == str(content / "utils" / "__init__.py")  # the notebook's imports work, from the clone
    assert pip_calls == [["install", "--quiet", "--no-deps", "--editable", str(content)],  # the course, once
                         ["install", "--quiet", "course-standin-package==1.0"]]  # only what was missing, once


def test_a_failed_clone_names_repo_url_and_what_to_do(tmp_path, monkeypatch):
    missing = f"file://{tmp_path}/no-such-repository"
    (output,), pip_calls = _run_on_colab(tmp_path, monkeypatch, [_colab_cell(missing, tmp_path / "c")])
    assert f"RuntimeError: could not clone the course from REPO_URL = {missing}" in output
    assert "set REPO_URL to your fork" in output and pip_calls == []


def test_a_failed_install_names_the_package_and_what_to_do(tmp_path, monkeypatch):
    remote = _remote(tmp_path, _with_extra_pin("course-standin-package==1.0"))
    (output,), pip_calls = _run_on_colab(tmp_path, monkeypatch, [_colab_cell(f"file://{remote}", tmp_path / "c")],
                                         pip_fails=True)
    assert "CourseError: pip could not install course-standin-package==1.0" in output
    assert "No matching distribution found for course-standin-package==1.0" in output
    assert "fresh runtime" in output and len(pip_calls) == 2


def test_torch_out_of_range_stops_before_anything_is_installed(tmp_path, monkeypatch):
    requirements = (ROOT / "requirements.txt").read_text().replace(f"torch{torch_range()}", "torch>=99")
    remote = _remote(tmp_path, {**_with_extra_pin("course-standin-package==1.0"), "requirements.txt": requirements})
    (output,), pip_calls = _run_on_colab(tmp_path, monkeypatch, [_colab_cell(f"file://{remote}", tmp_path / "c")])
    assert "CourseError: this runtime has torch" in output and "tested with torch>=99" in output
    assert "none of its pinned packages was installed" in output
    assert [call for call in pip_calls if "--editable" not in call] == []


def test_replacing_an_imported_package_asks_for_a_restart(tmp_path, monkeypatch):
    remote = _remote(tmp_path, _with_extra_pin("tqdm==0.0.1"))  # the kernel imports tqdm first, then pip replaces it
    (_, output), _ = _run_on_colab(tmp_path, monkeypatch,
                                   ["import tqdm", _colab_cell(f"file://{remote}", tmp_path / "c")])
    assert "Installed: tqdm" in output
    assert "CourseError: the running kernel had already imported tqdm" in output and "Restart session" in output


@pytest.mark.parametrize(("python", "torch", "message"), [
    ((3, 9), "2.11.0+cu128", r"Python 3\.9; the course needs Python >= 3\.10"),
    ((3, 13), None, "no torch"),
    ((3, 13), "2.5.1+cu121", r"torch 2\.5\.1\+cu121; the course is tested with torch>=2\.6,<2\.16.*none of its pinned packages was installed"),
    ((3, 13), "2.16.0", r"torch 2\.16\.0"),
], ids=["old python", "no torch", "old torch", "new torch"])
def test_bad_runtimes_get_one_clear_message(python, torch, message):
    with pytest.raises(CourseError, match=message):
        check_runtime(python, torch, torch_range())


def test_colabs_runtime_passes_the_runtime_check():
    assert MIN_PYTHON == (3, 10)
    check_runtime((3, 13), "2.11.0+cu128", torch_range())  # Colab's, from data/colab/


def _index_reachable() -> bool:
    """Whether PyPI answers (in a subprocess: tests/conftest.py refuses this process's connections)."""
    probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=10).close()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.slow
def test_on_colabs_python_the_cell_installs_the_clone_with_pips_real_editable_install(tmp_path):
    """The stand-in pip above writes a plain .pth; real pip writes setuptools' import-hook .pth. Here the cell runs
    with the real pip on Python 3.13 (Colab's) in a venv without the course: it must install the clone editable and
    import utils.colab from it in the same process (it then stops, rightly, because this venv has no torch)."""
    needs(PYTHON_313 is not None, "Python 3.13 (Colab's) is not installed here: `pyenv install 3.13` runs this check")
    needs(_index_reachable(), "PyPI is unreachable from here, and pip needs it to build the editable install")
    venv = tmp_path / "colab"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("HTTP_PROXY", "HTTPS_PROXY", "PYTHON"))}
    subprocess.run([PYTHON_313, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "packaging"], check=True, env=env)  # Colab's
    standins = tmp_path / "standins" / "google" / "colab"
    standins.mkdir(parents=True)
    (standins / "__init__.py").write_text('"""Stand-in for Colab\'s module."""\n')
    content = tmp_path / "content" / "peft-course"
    cell = _colab_cell(f"file://{_remote(tmp_path)}", content)
    script = ("import google.colab\ntry:\n" + "".join(f"    {line}\n" for line in cell.splitlines())
              + "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
              + "import utils\nprint('utils from', utils.__file__)\n")
    env["PYTHONPATH"] = str(tmp_path / "standins")
    run = subprocess.run([venv / "bin" / "python", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "CourseError: this runtime has no torch" in run.stdout, run.stdout + run.stderr[-3000:]
    assert f"utils from {content / 'utils' / '__init__.py'}" in run.stdout
