"""What the setup cell does on Colab after cloning the course, as `make setup` does elsewhere: install the ML stack at
its tested pins (requirements-colab.txt), leaving Colab's kernel, front end, torch and data packages as Google installed
them, and build the tiny checkpoints. Run twice, it changes nothing the second time; if pip replaced a package the
kernel had already imported, it asks for a restart (the old version would stay in memory).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

from utils.errors import CourseError
from utils.machine import installed_versions, pinned_versions, version_mismatches
from utils.paths import ROOT

MIN_PYTHON = (3, 10)
COLAB_REQUIREMENTS = ROOT / "requirements-colab.txt"


def torch_range(requirements: Path = ROOT / "requirements.txt") -> str:
    """The torch versions the course supports, as the specifier in requirements.txt (e.g. ">=2.6,<2.16")."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^\s*torch\s*([<>=!~][^#;]*)", line):
            return match.group(1).strip()
    raise CourseError(f"{requirements} has no torch requirement: it should say which torch versions are supported")


def check_runtime(python: tuple[int, int], torch_version: str | None, supported: str) -> None:
    """Raise a CourseError, before anything is installed, if this Python or torch cannot run the course."""
    from packaging.specifiers import SpecifierSet

    if tuple(python) < MIN_PYTHON:
        raise CourseError(f"this runtime has Python {python[0]}.{python[1]}; the course needs Python >= "
                          f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}: choose a newer runtime (Runtime -> Change runtime type)")
    if torch_version is None:
        raise CourseError(f"this runtime has no torch; the course needs torch{supported}, which Colab normally "
                          f"provides: choose a GPU runtime (Runtime -> Change runtime type -> T4 GPU)")
    if not SpecifierSet(supported).contains(torch_version, prereleases=True):
        raise CourseError(f"this runtime has torch {torch_version}; the course is tested with torch{supported} "
                          f"(requirements.txt). Installing another torch over Colab's breaks its CUDA packages, so "
                          f"none of its pinned packages was installed: use a runtime whose torch is in range, or run the course locally")


def stale_modules(changed: Iterable[str], loaded: Iterable[str]) -> list[str]:
    """The top-level modules among `loaded` whose distribution is in `changed`: the kernel holds their old code."""
    changed, loaded = set(changed), {name.partition(".")[0] for name in loaded}
    owners = importlib.metadata.packages_distributions()
    return sorted(module for module in loaded
                  if any(canonicalize_name(dist) in changed for dist in owners.get(module, ())))


def install_course_stack(requirements: Path = COLAB_REQUIREMENTS) -> dict[str, tuple[str | None, str]]:
    """Install what `requirements` pins and this runtime lacks; return {package: (old version or None, new)}."""
    pins = pinned_versions(requirements)  # a missing or empty file: a CourseError naming it, before anything else
    check_runtime(sys.version_info[:2], installed_versions().get("torch"), torch_range())
    todo = [f"{name}=={want}" for name, (_, want) in version_mismatches(pins).items()]
    if not todo:
        print(f"The course's ML stack is already installed ({', '.join(f'{n} {v}' for n, v in pins.items())}): "
              f"nothing changed.")
        return {}
    before = installed_versions()
    print(f"Installing {' '.join(todo)} (Colab's own torch, kernel and data packages stay as they are) ...")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *todo], capture_output=True, text=True)
    if pip.returncode != 0:
        tail = "\n".join((pip.stderr or pip.stdout).strip().splitlines()[-5:])
        raise CourseError(f"pip could not install {' '.join(todo)} (exit status {pip.returncode}):\n{tail}\n"
                          f"Restart with a fresh runtime (Runtime -> Disconnect and delete runtime) and run this cell "
                          f"again; if it fails there too, {requirements.name} no longer resolves on Colab's runtime: "
                          f"please report it")
    after = installed_versions()
    changed = {name: (before.get(name), version) for name, version in after.items() if before.get(name) != version}
    still = {name: got for name, (got, _) in version_mismatches(pins).items()}
    if still:
        raise CourseError(f"pip finished, but these packages still differ from {requirements.name}: {still}; restart "
                          f"the runtime (Runtime -> Restart session) and run this cell again")
    print("Installed: " + ", ".join(f"{n} {old or '(new)'} -> {new}" for n, (old, new) in sorted(changed.items())))
    stale = stale_modules(changed, list(sys.modules))
    if stale:
        raise CourseError(f"the running kernel had already imported {', '.join(stale)} before pip replaced them: "
                          f"restart the runtime (Runtime -> Restart session), then run the notebook again (this cell "
                          f"will find everything installed)")
    return changed
