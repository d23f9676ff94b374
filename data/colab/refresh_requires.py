"""Rebuild requires-dist.json: what each package of Colab's list requires (its wheel's metadata, read by pip from
PyPI at Colab's version; packages with no wheel on PyPI are left out and listed). Run with Python 3.13:

    python3.13 data/colab/refresh_requires.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def requires(pin: str, scratch: Path) -> tuple[str, dict | None]:
    """pip's view of one `name==version`: its version and its requirements outside extras, or None without a wheel."""
    report = scratch / f"{pin.split('==')[0]}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
                          "--only-binary", ":all:", "--quiet", "--report", str(report), pin],
                         capture_output=True, env=env)
    if run.returncode != 0:
        return pin, None
    metadata = json.loads(report.read_text())["install"][0]["metadata"]
    return metadata["name"], {"version": metadata["version"],
                              "requires": [r for r in metadata.get("requires_dist") or [] if "extra" not in r]}


def main() -> None:
    pins = [line.strip() for line in (HERE / "pip-freeze.gpu.txt").read_text().splitlines()
            if re.match(r"^[A-Za-z0-9_.\-]+==\S+$", line.strip())]
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(6) as pool:
        found = list(pool.map(lambda pin: requires(pin, Path(scratch)), pins))
    print("no wheel on PyPI:", sorted(name for name, info in found if info is None))
    table = {name: info for name, info in found if info and info["requires"]}
    (HERE / "requires-dist.json").write_text(json.dumps(table, indent=0, sort_keys=True))


if __name__ == "__main__":
    main()
