"""Every test runs offline in smoke mode, and any attempt to reach the network fails at once.

The Hub libraries read HF_HUB_OFFLINE and friends once, at import, so they are set here, before any test module
imports them (`make test` sets them too, for the notebook kernels it starts). The tiny checkpoints are built at the
start of the session where `make setup` has not built them (a no-op when they are there).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

for _name, _value in {"COURSE_SMOKE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                      "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_name, _value)
os.environ.pop("MPLBACKEND", None)  # ipykernel installs its inline backend only when this is unset

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(sock: socket.socket, address) -> None:
    """Refuse any connection that is not to this machine: tests must not touch the network."""
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(_LOOPBACK):
        raise ConnectionRefusedError(f"tests run offline: refused a connection to {address!r}")
    return _real_connect(sock, address)


socket.socket.connect = _guarded_connect


def pytest_sessionstart(session) -> None:
    from tools.tiny_checkpoints import build_missing

    build_missing()
