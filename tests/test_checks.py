"""The shared argument checks that values arriving as strings or paths arriving as files meet first."""

from __future__ import annotations

import pytest

from utils.checks import check_flag, check_folder
from utils.errors import CourseArgumentError


@pytest.mark.parametrize("value", ["False", "True", "0", 0, 1, None, 1.0])
def test_a_flag_is_a_bool_never_a_truthy_stand_in(value) -> None:
    with pytest.raises(CourseArgumentError, match=r"flag must be True or False, got"):
        check_flag("flag", value)


def test_a_flag_passes_through() -> None:
    assert check_flag("flag", True) is True and check_flag("flag", False) is False


def test_a_folder_is_never_an_existing_file(tmp_path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("x")
    for value in (file, str(file)):
        with pytest.raises(CourseArgumentError, match="must be a folder, not an existing file"):
            check_folder("checkpoint_dir", value)
    assert check_folder("checkpoint_dir", tmp_path / "new") == tmp_path / "new"  # created later by its writer
    assert check_folder("checkpoint_dir", str(tmp_path)) == tmp_path


@pytest.mark.parametrize("value", ["", "   ", None, 3, ["a"]])
def test_a_folder_path_is_a_path(value) -> None:
    with pytest.raises(CourseArgumentError, match="must be a folder path"):
        check_folder("root", value)


def test_a_folder_that_must_exist(tmp_path) -> None:
    with pytest.raises(CourseArgumentError, match=r"must be an existing folder.*mkdir -p"):
        check_folder("root", tmp_path / "missing", exists=True)
    assert check_folder("root", tmp_path, exists=True) == tmp_path
