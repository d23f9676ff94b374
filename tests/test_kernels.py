"""The kernels `make run`, `make test` and the tests start (tools/kernels.py): over IPC, in temporary folders of their
own, without ipykernel's transport warning, and under the warnings policy of pyproject.toml."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from tools.kernels import CourseNotebookClient, IPCKernelManager, warning_filters, warnings_preamble
from utils.paths import ROOT

TCP_WARNING = "Kernel is running over TCP without encryption"

# What the kernel itself says about its transport and sockets, and whether its sockets exist while it runs.
WHERE = """import json, os
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
print("KERNEL " + json.dumps({"transport": app.transport, "ip": app.ip, "connection_file": app.connection_file,
                              "sockets": sorted(os.listdir(os.path.dirname(app.ip)))}))"""


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _kernel_facts(nb) -> dict:
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    return json.loads(text.split("KERNEL ", 1)[1].splitlines()[0])


def test_a_kernel_runs_over_ipc_in_a_temporary_folder_of_its_own_removed_at_shutdown():
    seen = []
    for _ in range(2):  # one after the other: each gets a fresh folder
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(WHERE)]
        CourseNotebookClient(nb, timeout=60, kernel_name="python3").execute()
        seen.append(_kernel_facts(nb))
    for facts in seen:
        folder = Path(facts["ip"]).parent
        assert facts["transport"] == "ipc"
        assert folder.parent == Path(tempfile.gettempdir()) and not folder.is_relative_to(ROOT)
        assert Path(facts["connection_file"]).parent == folder
        assert facts["sockets"] == ["k-1", "k-2", "k-3", "k-4", "k-5", "kernel.json"]
        assert not folder.exists(), "the kernel's folder is removed when it shuts down"
    assert seen[0]["ip"] != seen[1]["ip"]


def test_ipc_kernel_managers_never_share_a_folder():
    first, second = IPCKernelManager(), IPCKernelManager()
    try:
        assert first.transport == second.transport == "ipc"
        assert Path(first.ip).parent != Path(second.ip).parent
        assert len(first.ip) + len("-5") < 104  # a Unix socket path's limit (macOS; Linux allows 108)
    finally:
        for manager in (first, second):
            manager.cleanup_connection_file()
            assert not manager.socket_dir.exists()


def test_two_make_runs_at_once_use_ipc_and_print_no_transport_warning(tmp_path):
    """`make run`'s runner, twice at the same time (each kernel sleeps so that they overlap), as its terminal shows it.
    The control: a kernel nbclient starts by default (TCP) prints the warning to the same terminal."""
    runs = []
    for name in ("a", "b"):
        path = _notebook(tmp_path / name / "99-demo" / f"{name}.ipynb", WHERE, "import time; time.sleep(3)")
        runs.append((path, subprocess.Popen(
            [sys.executable, "-m", "tools.run_notebooks", "--out", str(tmp_path / name / "build"), str(path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    facts = []
    for path, run in runs:
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output
        assert TCP_WARNING not in output and "1/1 notebooks ran" in output
        facts.append(_kernel_facts(nbformat.read(str(path.parent.parent / "build" / "99-demo" / path.name), 4)))
    assert [f["transport"] for f in facts] == ["ipc", "ipc"] and facts[0]["ip"] != facts[1]["ip"]

    control = ("import nbformat, nbclient; nb = nbformat.v4.new_notebook(); nb.cells = [nbformat.v4.new_code_cell('1')]; "
               "nbclient.NotebookClient(nb, kernel_name='python3').execute()")
    tcp = subprocess.run([sys.executable, "-c", control], capture_output=True, text=True, timeout=120)
    assert TCP_WARNING in tcp.stderr, "the control should show the warning this test looks for"


def test_nbmake_runs_notebooks_over_ipc_and_a_deprecated_call_fails(tmp_path):
    """pytest with the course's configuration (pyproject.toml loads tools.kernels) on two notebooks, with output
    capture off so that the kernels' own stderr reaches this test: no transport warning; a notebook that calls a name
    transformers deprecates fails, as `make test` must."""
    _notebook(tmp_path / "ipc.ipynb", WHERE + "\nassert app.transport == 'ipc'")
    _notebook(tmp_path / "deprecated.ipynb",
              "from transformers import TrainingArguments\n"
              f"TrainingArguments(output_dir={str(tmp_path / 'out')!r}, gradient_checkpointing=True)")
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
                          "-p", "no:cacheprovider", "--nbmake", "-s", "-q", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)  # without the traceback's colours
    assert TCP_WARNING not in output
    assert "1 failed, 1 passed" in output, output[-3000:]
    assert "deprecated.ipynb" in output and "FutureWarning: `gradient_checkpointing` is deprecated" in output


def test_the_kernels_apply_pyprojects_filters_in_order():
    filters = warning_filters()
    assert filters[:2] == [("error", "", "FutureWarning", ""), ("error", "", "DeprecationWarning", "")]
    assert all(action == "error" for action, *_ in filters[:3]), "errors first: a later exemption wins"
    exempt = [f for f in filters if f[0] == "ignore"]
    assert exempt and all(message for _, message, _, _ in exempt), "an exemption names its exact message"
    code = warnings_preamble()
    with warnings.catch_warnings(record=True) as shown:
        warnings.resetwarnings()
        namespace: dict = {}
        exec(code, namespace)  # noqa: S102
        assert set(namespace) == {"__builtins__"}, "the preamble leaves no name in the notebook"
        with pytest.raises(FutureWarning):
            warnings.warn("the course called an old name", FutureWarning, stacklevel=1)
        with pytest.raises(DeprecationWarning):
            warnings.warn("the course called an old name", DeprecationWarning, stacklevel=1)
        with pytest.raises(UserWarning, match="use_reentrant"):
            import torch.utils.checkpoint

            torch.utils.checkpoint.checkpoint(lambda x: x * 2, torch.ones(1, requires_grad=True))
        # a library's own call the course cannot avoid: what a learner's kernel does with it (shown / not shown)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                      "`is_activation_checkpointing` instead.", FutureWarning, stacklevel=1)
        warnings.warn("`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                      DeprecationWarning, stacklevel=1)
    assert [type(w.message) for w in shown] == [FutureWarning]


def test_a_cell_that_calls_a_deprecated_name_fails_in_the_kernel():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import warnings\nwarnings.warn('old name', DeprecationWarning)")]
    with pytest.raises(CellExecutionError) as failed:
        CourseNotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert (failed.value.ename, failed.value.evalue) == ("DeprecationWarning", "old name")
