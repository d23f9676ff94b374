"""`make run`: execute every chapter notebook headless, in order, into build/, and print a one-screen summary.

Smoke mode (tiny local models, fixture data) is the default on a machine without a GPU or without the Hugging
Face Hub; `--full` (`make run FULL=1`) runs the real models. Each executed copy keeps its outputs and plots
(build/<chapter>/<notebook>.ipynb, and an .html beside it to read in a browser). The kernels run over IPC, under
the course's warnings policy (tools/kernels.py), and the summary counts the warning lines each executed notebook
shows, and lists them: the course's goal is none.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.nbtools import notebooks
from tools.tiny_checkpoints import build_missing
from utils.paths import BUILD_DIR, ROOT

KEY_FIGURE = re.compile(r"^Key figure: (.+)$", re.MULTILINE)
#: How Python prints a warning (warnings.formatwarning): `file:line: Category: message`, then the source line, indented.
PYTHON_WARNING = re.compile(r"^.+?:\d+: (?P<category>\w*Warning): (?P<message>.*)$")


@dataclass
class Result:
    notebook: str
    status: str
    seconds: float
    key_figure: str
    warnings: list[tuple[int, str]] = field(default_factory=list)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether huggingface.co answers (full mode needs it, unless every checkpoint is cached)."""
    import requests

    try:
        return requests.head("https://huggingface.co", timeout=timeout_s).status_code < 500
    except requests.RequestException:
        return False


def choose_smoke(full: bool) -> bool:
    """Smoke unless asked for full mode, or COURSE_SMOKE says otherwise, or a GPU and the Hub are both here."""
    if full:
        return False
    if "COURSE_SMOKE" in os.environ:
        return os.environ["COURSE_SMOKE"] == "1"
    import torch

    return not (torch.cuda.is_available() and hub_reachable())


@dataclass(frozen=True)
class Expr:
    """A parameter value given as Python source (evaluated in the notebook), not as a literal."""

    source: str


def _value_source(value: object) -> str:
    if isinstance(value, Expr):
        return value.source
    if isinstance(value, Path):
        return repr(str(value))
    try:  # only literals (str, numbers, lists, dicts, ...): fail here, not in the kernel
        ast.literal_eval(repr(value))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"parameter value {value!r} is not a Python literal: pass Expr('<source>')") from exc
    return repr(value)


def inject_parameters(nb, values: dict[str, object], full_mode_constants: dict[str, object] | None = None) -> list[str]:
    """Change the values of the notebook's `parameters` cell, papermill's `-p NAME VALUE` done in place.

    `values`: NAME -> new value for a name the cell assigns (alone or in a tuple assignment); the whole right-hand
    side is replaced, so a full-mode expression that would download (`download(URL, ...)`) is never evaluated.
    `full_mode_constants`: a string constant -> its replacement wherever it stands in a full-mode branch
    (`... if SMOKE else "<constant>"`), e.g. a Hub model id -> a local checkpoint of the same widths.
    Nothing outside the parameters cell changes. Returns what was replaced; a NAME the cell does not assign is
    an error (a misspelt parameter must not pass silently).
    """
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    lines = cell.source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def position(lineno: int, col: int) -> int:
        return offsets[lineno - 1] + len(lines[lineno - 1].encode("utf-8")[:col].decode("utf-8"))

    edits: list[tuple[int, int, str]] = []
    done: list[str] = []
    tree = ast.parse(cell.source)
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = [(target, value)]
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            pairs = list(zip(target.elts, value.elts, strict=True))
        for name_node, value_node in pairs:
            if isinstance(name_node, ast.Name) and name_node.id in values:
                edits.append((position(value_node.lineno, value_node.col_offset),
                              position(value_node.end_lineno, value_node.end_col_offset),
                              _value_source(values[name_node.id])))
                done.append(name_node.id)
    missing = sorted(set(values) - set(done))
    if missing:
        raise ValueError(f"the parameters cell assigns no {missing}")
    covered = [(a, b) for a, b, _ in edits]
    for node in ast.walk(tree):
        if (full_mode_constants and isinstance(node, ast.IfExp) and isinstance(node.test, ast.Name)
                and node.test.id == "SMOKE"):
            for const in ast.walk(node.orelse):
                if isinstance(const, ast.Constant) and const.value in full_mode_constants:
                    start = position(const.lineno, const.col_offset)
                    end = position(const.end_lineno, const.end_col_offset)
                    if not any(a <= start and end <= b for a, b in covered):
                        edits.append((start, end, _value_source(full_mode_constants[const.value])))
                        done.append(str(const.value))
    source = cell.source
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    cell.source = source
    return done


def key_figures(nb) -> str:
    """The `Key figure: ...` lines a notebook printed, joined."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            found.extend(KEY_FIGURE.findall(text))
    return "; ".join(found)


def warning_lines(nb) -> list[tuple[int, str]]:
    """(cell index, line) for each warning an executed notebook shows: each of Python's warnings (`Category:
    message`; the source line Python prints under it is not counted again) and every other line written to stderr
    (libraries' logged warnings), progress bars aside."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "stream" or output.get("name") != "stderr":
                continue
            echo = False  # the line after a Python warning repeats the source line that warned
            for line in output.get("text", "").splitlines():
                if echo and line.startswith("  "):
                    echo = False
                    continue
                echo = False
                if not line.strip() or "\r" in line or "%|" in line:  # blank, or a progress bar
                    continue
                if match := PYTHON_WARNING.match(line):
                    found.append((index, f"{match['category']}: {match['message']}"))
                    echo = True
                else:
                    found.append((index, line.strip()))
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def execute(path: Path, out_dir: Path, cell_timeout_s: int, parameters: dict[str, object] | None = None,
            full_mode_constants: dict[str, object] | None = None) -> Result:
    """Run one notebook in a fresh kernel, in its own folder, and save the executed copy (and HTML).

    `parameters` and `full_mode_constants` change the parameters cell's values first (`inject_parameters`)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    from nbconvert import HTMLExporter

    build_missing()  # the tiny checkpoints the notebooks load, where `make setup` has not built them
    nb = nbformat.read(str(path), as_version=4)
    if parameters or full_mode_constants:
        inject_parameters(nb, parameters or {}, full_mode_constants)
    from tools.kernels import CourseNotebookClient  # IPC transport, the warnings policy

    client = CourseNotebookClient(nb, timeout=cell_timeout_s, kernel_name="python3",
                                  resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    status = "ok"
    try:
        client.execute()
    except CellTimeoutError:
        status = "TIMEOUT"
    except CellExecutionError as exc:
        status = "FAILED: " + (str(exc).strip().splitlines() or ["error"])[-1][:60]
    except Exception as exc:  # a kernel that died is a failed notebook, not a crashed runner
        status = f"FAILED: {type(exc).__name__}: {exc}"[:70]
    seconds = time.perf_counter() - start
    target = out_dir / path.parent.name / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))
    html, _ = HTMLExporter().from_notebook_node(nb)
    target.with_suffix(".html").write_text(html, encoding="utf-8")
    return Result(_shown(path), status, seconds, key_figures(nb), warning_lines(nb))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="run the real models (needs a GPU and the Hub)")
    parser.add_argument("--out", type=Path, default=BUILD_DIR)
    parser.add_argument("--cell-timeout", type=int, default=None, help="seconds per cell")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: all, in order)")
    args = parser.parse_args(argv)
    smoke = choose_smoke(args.full)
    os.environ["COURSE_SMOKE"] = "1" if smoke else "0"  # the kernels inherit this environment
    if smoke:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: more threads only wait on each other
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.pop("MPLBACKEND", None)  # ipykernel's inline backend keeps the plots in the executed copies
    if not smoke and os.environ.get("HF_HUB_OFFLINE") != "1" and not hub_reachable():
        print("full mode downloads the real models and datasets, but https://huggingface.co cannot be reached.\n"
              "Run `make run` (smoke mode: tiny local models, no network), or connect and try again.", file=sys.stderr)
        return 2
    paths = [p.resolve() for p in args.paths] or notebooks()
    if not paths:
        print("no notebooks found under NN-*/", file=sys.stderr)
        return 1
    timeout = args.cell_timeout or (900 if smoke else 4 * 3600)
    print(f"running {len(paths)} notebooks in {'smoke' if smoke else 'FULL'} mode into {args.out}/", flush=True)
    results = []
    for path in paths:
        print(f"  {_shown(path)} ...", end=" ", flush=True)
        result = execute(path, args.out, timeout)
        print(f"{result.status} ({result.seconds:.0f} s)", flush=True)
        results.append(result)
    width = max(len(r.notebook) for r in results)
    print(f"\n{'notebook':<{width}}  {'status':<8} {'time':>7} {'warnings':>8}  key figure")
    for r in results:
        print(f"{r.notebook:<{width}}  {r.status[:8]:<8} {r.seconds:>6.0f}s {len(r.warnings):>8}  {r.key_figure or '-'}")
    shown = [(r.notebook, cell, line) for r in results for cell, line in r.warnings]
    print(f"\n{len(shown)} warning lines in the executed notebooks" + (":" if shown else ""))
    for notebook, cell, line in shown:
        print(f"  {notebook} cell {cell}: {line[:150]}")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"\n{r.notebook}: {r.status}\n  open {args.out / Path(r.notebook)} to see the traceback", file=sys.stderr)
    print(f"\n{len(results) - len(failed)}/{len(results)} notebooks ran; executed copies are in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
