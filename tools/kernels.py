"""The kernels `make run` and `make test` start: local, over IPC transport, under the course's warnings policy.

IPC transport: the kernel's five channels are Unix sockets in a fresh temporary folder of their own (mode 0700), not
TCP ports on localhost. Other users of a shared machine cannot connect to them, ipykernel has no reason to print its
"Kernel is running over TCP without encryption" warning, and two runs at once (or one after another) never share a
port or a socket. The folder, with the connection file, is removed when the kernel shuts down.

The warnings policy: pytest's `filterwarnings` in pyproject.toml (FutureWarning and DeprecationWarning are errors;
a library's own warning that the course cannot avoid is exempt by its exact message, with the reason beside it)
is applied in each kernel before the first cell, so a notebook that calls a deprecated name fails as a test does.
In the kernel an exempt warning does what Python does by default, not what pytest's "ignore" says: a FutureWarning
is shown (once per place), a library's DeprecationWarning is not. The executed notebooks in build/ show what a
learner would see, and `make run` counts it.

`CourseNotebookClient` is nbclient's `NotebookClient` with both; tools/run_notebooks.py, the tests that execute
notebooks, and nbmake (this module is a pytest plugin: pyproject.toml's `addopts` loads it with `-p tools.kernels`)
use it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing as t
from pathlib import Path

from jupyter_client import AsyncKernelManager
from nbclient import NotebookClient
from traitlets import CaselessStrEnum, default

from utils.paths import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

#: Unix socket paths are limited to 108 bytes (Linux; 104 on macOS), the socket names included.
MAX_SOCKET_DIR = 90


class IPCKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, with IPC transport in a temporary folder of the kernel's own."""

    # Windows has no Unix sockets for ZeroMQ's IPC: TCP there.
    transport = CaselessStrEnum(["tcp", "ipc"], default_value="tcp" if os.name == "nt" else "ipc", config=True)

    @property
    def socket_dir(self) -> Path:
        """The kernel's own folder: its connection file and its sockets (`k-1` ... `k-5`)."""
        if getattr(self, "_socket_dir", None) is None:
            folder = tempfile.mkdtemp(prefix="course-kernel-")  # 0700, a fresh name: no collision, no other user
            if len(folder) > MAX_SOCKET_DIR:
                shutil.rmtree(folder, ignore_errors=True)
                folder = tempfile.mkdtemp(prefix="course-kernel-", dir="/tmp")
            self._socket_dir = Path(folder)
        return self._socket_dir

    @default("ip")
    def _default_ip(self) -> str:
        return str(self.socket_dir / "k") if self.transport == "ipc" else super()._ip_default()

    @default("connection_file")
    def _default_connection_file(self) -> str:
        return str(self.socket_dir / "kernel.json")

    def cleanup_connection_file(self) -> None:
        """Called at shutdown (not at a restart, which keeps the sockets' folder): remove the folder too."""
        super().cleanup_connection_file()
        self.cleanup_ipc_files()
        if getattr(self, "_socket_dir", None) is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def warning_filters(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[str, str, str, str]]:
    """pytest's `filterwarnings` from pyproject.toml as (action, message, category, module) tuples, in file order."""
    entries = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["filterwarnings"]
    filters = []
    for entry in entries:
        parts = [*entry.split(":"), "", "", "", ""][:4]
        if len(entry.split(":")) > 5:
            raise ValueError(f"{pyproject}: filterwarnings entry {entry!r} has more than 5 ':'-separated fields")
        filters.append((parts[0].strip(), parts[1].strip(), parts[2].strip() or "Warning", parts[3].strip()))
    return filters


def warnings_preamble(filters: t.Sequence[tuple[str, str, str, str]] | None = None) -> str:
    """The code a kernel runs, silently, before the first cell: the same filters, in the same order (the last one
    that matches wins), except that an exemption ("ignore") does what Python's default filters do with its category,
    as a learner's kernel would: hide a DeprecationWarning (and the other categories Python hides), show the rest.
    It binds no name in the notebook's namespace."""
    filters = warning_filters() if filters is None else filters
    return ("def __course_warnings_policy(filters):\n"
            "    import builtins, importlib, warnings\n"
            "    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)\n"
            "    for action, message, category, module in filters:\n"
            "        owner, _, name = category.rpartition('.')\n"
            "        kind = getattr(importlib.import_module(owner) if owner else builtins, name)\n"
            "        if action == 'ignore':\n"
            "            action = 'ignore' if issubclass(kind, hidden) else 'default'\n"
            "        warnings.filterwarnings(action, message, kind, module)\n"
            f"__course_warnings_policy({json.dumps(filters)})\n"
            "del __course_warnings_policy\n")


class CourseNotebookClient(NotebookClient):
    """nbclient's NotebookClient: kernels over IPC (`IPCKernelManager`), under the course's warnings policy."""

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> type[AsyncKernelManager]:
        return IPCKernelManager

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        msg_id = kc.execute(warnings_preamble(), silent=True, store_history=False)
        reply = await self.async_wait_for_reply(msg_id)
        if reply is None or reply["content"]["status"] != "ok":
            content = (reply or {}).get("content", {})
            raise RuntimeError(f"the kernel could not apply the warnings policy: {content.get('ename')}: "
                               f"{content.get('evalue')}")
        return kc


def pytest_configure(config) -> None:
    """nbmake executes each notebook with the NotebookClient its module imported: make it this one."""
    try:
        from nbmake import nb_run
    except ImportError:  # nbmake is not installed: nothing executes notebooks through it
        return
    if not issubclass(nb_run.NotebookClient, NotebookClient):
        raise RuntimeError("nbmake no longer runs notebooks with nbclient's NotebookClient: update tools/kernels.py")
    nb_run.NotebookClient = CourseNotebookClient
