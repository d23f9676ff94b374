"""tools.page_figures counts what issue 22's table reports, on a notebook whose figures are known."""

from __future__ import annotations

import nbformat

from tools.page_figures import figures


def test_the_figures_of_a_known_page(tmp_path) -> None:
    chapter = tmp_path / "09-demo"
    chapter.mkdir()
    v4 = nbformat.v4
    setup = v4.new_code_cell("# @title Setup\nimport sys\nprint(sys.version)",
                             metadata={"tags": ["setup"], "cellView": "form", "jupyter": {"source_hidden": True}})
    cells = [v4.new_markdown_cell("# Title words here"), setup, v4.new_code_cell("import os\n\nx = 1"),
             v4.new_code_cell("SMOKE = True", metadata={"tags": ["parameters"]}),
             v4.new_markdown_cell("Why this cell"), v4.new_code_cell("a = 1\nb = 2"),
             v4.new_code_cell("plot()", metadata={"tags": ["diagram"]}), v4.new_code_cell("c = 3\nd = 4\ne = 5")]
    nbformat.write(v4.new_notebook(cells=cells), str(chapter / "01_demo.ipynb"))
    ran = v4.new_notebook(cells=[v4.new_code_cell("x", outputs=[v4.new_output(
        "stream", name="stderr", text="a.py:1: FutureWarning: old\n  warnings.warn(msg)\nfine\n")])])
    (tmp_path / "build" / "09-demo").mkdir(parents=True)
    nbformat.write(ran, str(tmp_path / "build" / "09-demo" / "01_demo.ipynb"))
    (row,) = figures(tmp_path)
    assert row == {"notebook": "09-demo/01_demo.ipynb", "setup lines visible": 1, "code lines before the lesson": 3,
                   "median code cell": 2, "prose words per code line": round(6 / 9, 1), "diagrams": 1,
                   "warning lines in build/": 2}
