"""What a learner meets on each notebook's page: issue 22's figures, per notebook, as JSON.

`python -m tools.page_figures [ROOT]` prints, for each chapter notebook under ROOT (default: this checkout): the setup
cell's visible lines (1 when collapsed: its title), code lines before the first lesson cell (up to and including the
parameters cell, the setup cell left out), the median code cell's lines after it, prose words per code line, cells
tagged `diagram`, and the lines of warning text in its executed copy in ROOT/build/ (None when it was not run).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import nbformat

WARNING = re.compile(r"\w*Warning\b|warnings\.warn")


def lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip())


def output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        parts.append(text if isinstance(text, str) else "".join(text))
    return "\n".join(parts)


def page(path: Path, root: Path) -> dict:
    cells = nbformat.read(str(path), as_version=4).cells
    setup = before = words = diagrams = 0
    code, seen_parameters = [], False
    for cell in cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            words += len(re.findall(r"\w+", cell.source))
        elif "setup" in tags:
            collapsed = cell.metadata.get("jupyter", {}).get("source_hidden") and cell.metadata.get("cellView") == "form"
            setup = 1 if collapsed else lines(cell.source)
        elif not seen_parameters:
            before += lines(cell.source)
            seen_parameters = "parameters" in tags
        else:
            code.append(lines(cell.source))
            diagrams += "diagram" in tags
    built = root / "build" / path.relative_to(root)
    warnings = None
    if built.is_file():
        ran = nbformat.read(str(built), as_version=4).cells
        warnings = sum(len(WARNING.findall(output_text(cell))) for cell in ran if cell.cell_type == "code")
    return {"notebook": path.relative_to(root).as_posix(), "setup lines visible": setup,
            "code lines before the lesson": before, "median code cell": statistics.median(code) if code else 0,
            "prose words per code line": round(words / max(1, before + sum(code)), 1), "diagrams": diagrams,
            "warning lines in build/": warnings}


def figures(root: Path) -> list[dict]:
    return [page(path, root) for path in sorted(root.glob("[0-9][0-9]-*/*.ipynb"))]


if __name__ == "__main__":
    print(json.dumps(figures(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent),
                     indent=1))
