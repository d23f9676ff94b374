"""03-qlora-bloom/04_merge_adapter.ipynb's parameter checks: a bad value stops the notebook with the course's error,
naming the parameter, before anything loads (the cell that checks runs right after the parameters cell)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from utils.errors import CourseArgumentError
from utils.paths import ROOT

NOTEBOOK = ROOT / "03-qlora-bloom" / "04_merge_adapter.ipynb"
GOOD = {"NUM_PROMPTS": 40, "STEPS": 20, "LEARNING_RATE": 1e-2, "PUSH_TO_HUB": False}


def check_cell() -> str:
    cells = nbformat.read(str(NOTEBOOK), as_version=4).cells
    position = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    cell = cells[position + 2]  # the sentence saying why, then the checks
    assert 'check_flag("PUSH_TO_HUB"' in cell.source, "the checks follow the parameters cell"
    return cell.source


def run_checks(tmp_path: Path, **changes) -> dict:
    namespace = {**GOOD, "OUTPUT_DIR": tmp_path / "merge", **changes}
    exec(check_cell(), namespace)
    return namespace


def test_good_parameters_pass(tmp_path: Path) -> None:
    namespace = run_checks(tmp_path)
    assert namespace["OUTPUT_DIR"] == tmp_path / "merge"
    assert namespace["PUSH_TO_HUB"] is False


@pytest.mark.parametrize("value", ["False", "True", 0, 1, None, "no"])
def test_push_to_hub_must_be_a_bool(tmp_path: Path, value) -> None:
    with pytest.raises(CourseArgumentError, match="PUSH_TO_HUB"):
        run_checks(tmp_path, PUSH_TO_HUB=value)


@pytest.mark.parametrize(("name", "value"), [("STEPS", 0), ("STEPS", "20"), ("STEPS", 2.5), ("NUM_PROMPTS", -1),
                                             ("NUM_PROMPTS", "40"), ("LEARNING_RATE", -1e-3), ("LEARNING_RATE", "2e-4")])
def test_counts_and_rates_are_checked(tmp_path: Path, name: str, value) -> None:
    with pytest.raises(CourseArgumentError, match=name):
        run_checks(tmp_path, **{name: value})


@pytest.mark.parametrize("kind", ["file", "empty", "number"])
def test_output_dir_must_be_a_folder(tmp_path: Path, kind: str) -> None:
    a_file = tmp_path / "merge.txt"
    a_file.write_text("not a folder")
    value = {"file": a_file, "empty": "  ", "number": 3}[kind]
    with pytest.raises(CourseArgumentError, match="OUTPUT_DIR"):
        run_checks(tmp_path, OUTPUT_DIR=value)
