"""The Colab install resolves on Colab's runtime and leaves Colab's own packages alone.

pip resolves requirements-colab.txt on Python 3.13 in an environment that holds every package of Colab's published
list (data/colab/, as metadata only: pip sees them installed at Colab's versions) with Colab's versions as
constraints for all but the allow-list below. It fails if pip cannot resolve, or if the install would change the
version of any Colab package outside the allow-list. This needs the package index (pip reads the candidates'
metadata there); CI has it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.machine import PYTHON_313, needs
from utils.machine import pinned_versions
from utils.paths import ROOT

COLAB_SNAPSHOT = "2026-08-19"  # data/colab/README.md says where it comes from and how to refresh it
FREEZE = ROOT / "data" / "colab" / "pip-freeze.gpu.txt"
REQUIRES = ROOT / "data" / "colab" / "requires-dist.json"  # what each Colab package requires (refresh_requires.py)
COLAB_MARKERS = {"python_version": "3.13", "python_full_version": "3.13.15", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


# Colab packages the install may move, and why each is safe to move. Everything else Colab ships must stay.
ALLOWED_TO_MOVE = {
    # the course's ML stack itself, at its tested pins (Colab ships older releases; nothing of Colab's kernel,
    # front end or data stack depends on them)
    "transformers": "the tested pin",
    "peft": "the tested pin",
    "accelerate": "the tested pin",
    "datasets": "the tested pin",
    "tokenizers": "the tested pin, which transformers requires",
    "safetensors": "the tested pin",
    # what the pins require, newer than Colab's
    "huggingface-hub": "transformers 5.23 and datasets 5.2 need >= 1.31; pinned below 2.0, which gradio and "
                       "diffusers require",
    "pyarrow": "datasets 5.2 (trl's dependency) needs pyarrow >= 21; Colab ships 18.1",
}


def colab_packages() -> dict[str, str]:
    """Colab's published packages by normalised name (entries installed from a URL have no version: left out)."""
    found = {}
    for line in FREEZE.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip()):
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def broken_by(plan: dict[str, str], requires: dict[str, dict]) -> list[str]:
    """The requirements of Colab's packages that the planned versions would no longer satisfy."""
    from packaging.requirements import Requirement

    broken = []
    for package, info in requires.items():
        if canonicalize_name(package) in plan:
            continue  # the install replaces this package itself
        for line in info["requires"]:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(COLAB_MARKERS):
                continue
            new = plan.get(canonicalize_name(requirement.name))
            if new is not None and not requirement.specifier.contains(new, prereleases=True):
                broken.append(f"{package} {info['version']} requires {line}, the install brings {new}")
    return broken


def test_broken_by_finds_a_dependency_moved_out_of_range():
    requires = {"gradio": {"version": "6.24.0", "requires": ["huggingface-hub<2.0,>=1.16.0", "tqdm; python_version<'3'"]}}
    assert broken_by({"huggingface-hub": "1.33.0"}, requires) == []
    assert broken_by({"huggingface-hub": "2.4.0"}, requires) == [
        "gradio 6.24.0 requires huggingface-hub<2.0,>=1.16.0, the install brings 2.4.0"]
    assert broken_by({"tqdm": "0.1"}, requires) == []  # the marker does not hold on Colab


def _fake_colab_environment(venv: Path, packages: dict[str, str]) -> None:
    """A Python 3.13 venv where pip sees every Colab package as installed (a .dist-info with its name and version)."""
    subprocess.run([PYTHON_313, "-m", "venv", str(venv)], check=True, capture_output=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    for name, version in packages.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("colab-snapshot\n")
        (info / "RECORD").write_text("")


def test_the_snapshot_is_colabs_runtime():
    packages = colab_packages()
    assert len(packages) > 600
    assert packages["torch"].startswith("2.11.0") and packages["ipykernel"] == "6.17.1"
    assert "Python 3.13" in (FREEZE.parent / "os-info-gpu.txt").read_text()
    assert COLAB_SNAPSHOT in (FREEZE.parent / "README.md").read_text()


def test_the_colab_set_is_the_ml_stack_and_nothing_colab_provides():
    colab_set = pinned_versions(ROOT / "requirements-colab.txt")
    assert {"transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"} <= colab_set.keys()
    # every pin is also the local stack's, so the two files cannot drift apart
    assert colab_set.items() <= pinned_versions(ROOT / "requirements.txt").items()
    colab_own = {"torch", "ipykernel", "ipython", "jupyter-server", "jupyter-client", "notebook", "tornado", "traitlets",
                 "pyzmq", "ipywidgets", "pandas", "numpy", "matplotlib", "requests", "psutil", "tqdm"}
    assert not colab_own & colab_set.keys()
    assert not colab_own & ALLOWED_TO_MOVE.keys()


def _index_reachable() -> bool:
    """Whether PyPI answers (in a subprocess: tests/conftest.py refuses this process's connections)."""
    probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=10).close()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@pytest.mark.slow
def test_pip_resolves_the_colab_set_on_colabs_runtime(tmp_path):
    needs(PYTHON_313 is not None, "Python 3.13 (Colab's) is not installed here: `pyenv install 3.13` runs this check")
    needs(_index_reachable(), "PyPI is unreachable from here, and pip needs it to resolve the Colab set")
    packages = colab_packages()
    _fake_colab_environment(tmp_path / "colab", packages)
    constraints = tmp_path / "colab-constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in packages.items()
                                   if name not in ALLOWED_TO_MOVE))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "HTTP_PROXY", "HTTPS_PROXY"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI alone, as on Colab: no local indexes or caps from this machine
    report = tmp_path / "report.json"
    pip = subprocess.run([tmp_path / "colab" / "bin" / "python", "-m", "pip", "install", "--dry-run", "--quiet",
                          "--disable-pip-version-check", "--report", str(report), "-r", str(ROOT / "requirements-colab.txt"),
                          "-c", str(constraints)], capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, f"pip cannot install requirements-colab.txt on Colab's runtime:\n{pip.stderr[-3000:]}"
    plan = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}
    moved = {name: (packages[name], version) for name, version in plan.items() if name in packages}
    print("Colab packages the install moves:", moved)
    print("packages it adds:", {name: v for name, v in plan.items() if name not in packages})
    assert set(moved) <= set(ALLOWED_TO_MOVE), f"would move Colab packages outside the allow-list: " \
                                               f"{ {n: moved[n] for n in set(moved) - set(ALLOWED_TO_MOVE)} }"
    assert {"trl", "bitsandbytes"} <= plan.keys()  # what Colab lacks is installed
    requires = json.loads(REQUIRES.read_text())
    assert len(requires) > 300 and "gradio" in requires  # the fixture is Colab's, not empty
    assert broken_by(plan, requires) == [], "the install would break Colab packages that stay"
    assert "torch" not in plan and not any(name.startswith("nvidia-") for name in plan)  # Colab's torch stays
    pins = pinned_versions(ROOT / "requirements-colab.txt")
    assert all(plan.get(name, packages.get(name)) == version for name, version in pins.items())
