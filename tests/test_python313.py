"""The course's own code compiles under Python 3.13, Colab's Python: utils, bench, the chapter scripts, the tests and
every notebook's code cells (IPython's `!` and `%` lines turned into Python as IPython itself does)."""

from __future__ import annotations

import subprocess

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from tests.machine import PYTHON_313, needs
from tools.nbtools import notebooks
from utils.paths import ROOT

COMPILE_ALL = """import sys
failed = []
for path in sys.argv[1:]:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except SyntaxError as exc:
        failed.append(f"{path}:{exc.lineno}: {exc.msg}")
print(sys.version.split()[0], len(sys.argv) - 1)
sys.exit("\\n".join(failed) or None)
"""


def _python_sources() -> list:
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    return [ROOT / name for name in tracked if (ROOT / name).is_file()]


@pytest.mark.slow
def test_the_course_compiles_under_python_313(tmp_path):
    needs(PYTHON_313 is not None, "Python 3.13 (Colab's) is not installed here: `pyenv install 3.13` runs this check")
    transform = TransformerManager().transform_cell
    cells = []
    for path in notebooks():
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                out = tmp_path / f"{path.parent.name}__{path.stem}__cell{i:02d}.py"
                out.write_text(transform(cell.source))
                cells.append(out)
    sources = _python_sources()
    assert len(cells) > 100 and len(sources) > 40  # the notebooks' cells and the repository's modules were found
    result = subprocess.run([PYTHON_313, "-c", COMPILE_ALL, *map(str, sources + cells)], capture_output=True,
                            text=True)
    assert result.returncode == 0, f"does not compile under Python 3.13:\n{result.stderr}"
    version, count = result.stdout.split()
    assert version.startswith("3.13") and int(count) == len(sources) + len(cells)
