"""`make run`: execute every chapter notebook headless, in order, into build/, and print a one-screen summary.

Smoke mode (tiny local models, fixture data) is the default on a machine without a GPU or without the Hugging
Face Hub; `--full` (`make run FULL=1`) runs the real models. Each executed copy keeps its outputs and plots
(build/<chapter>/<notebook>.ipynb, and an .html beside it to read in a browser).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.nbtools import notebooks
from utils.paths import BUILD_DIR, ROOT

KEY_FIGURE = re.compile(r"^Key figure: (.+)$", re.MULTILINE)


@dataclass
class Result:
    notebook: str
    status: str
    seconds: float
    key_figure: str


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


def key_figures(nb) -> str:
    """The `Key figure: ...` lines a notebook printed, joined."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text", "") if output.get("output_type") == "stream" else ""
            found.extend(KEY_FIGURE.findall(text))
    return "; ".join(found)


def execute(path: Path, out_dir: Path, cell_timeout_s: int) -> Result:
    """Run one notebook in a fresh kernel, in its own folder, and save the executed copy (and HTML)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout_s, kernel_name="python3",
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
    return Result(str(path.relative_to(ROOT)), status, seconds, key_figures(nb))


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
        print(f"  {path.relative_to(ROOT)} ...", end=" ", flush=True)
        result = execute(path, args.out, timeout)
        print(f"{result.status} ({result.seconds:.0f} s)", flush=True)
        results.append(result)
    width = max(len(r.notebook) for r in results)
    print(f"\n{'notebook':<{width}}  {'status':<8} {'time':>7}  key figure")
    for r in results:
        print(f"{r.notebook:<{width}}  {r.status[:8]:<8} {r.seconds:>6.0f}s  {r.key_figure or '-'}")
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        print(f"\n{r.notebook}: {r.status}\n  open {args.out / Path(r.notebook)} to see the traceback", file=sys.stderr)
    print(f"\n{len(results) - len(failed)}/{len(results)} notebooks ran; executed copies are in {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
