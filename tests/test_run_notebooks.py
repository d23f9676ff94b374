"""`make run`'s runner: mode choice, key figures, and a clear refusal of full mode without the Hub."""

from __future__ import annotations

import nbformat

from tools import run_notebooks


def test_smoke_is_chosen_without_gpu_or_hub(monkeypatch) -> None:
    monkeypatch.delenv("COURSE_SMOKE", raising=False)
    monkeypatch.setattr(run_notebooks, "hub_reachable", lambda: False)
    assert run_notebooks.choose_smoke(full=False) is True
    assert run_notebooks.choose_smoke(full=True) is False
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert run_notebooks.choose_smoke(full=False) is False


def test_key_figures_are_collected_from_stream_outputs() -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="loss 3.2\nKey figure: F1 = 0.41\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="Key figure: EM = 0.30\n")]
    nb.cells = [cell]
    assert run_notebooks.key_figures(nb) == "F1 = 0.41; EM = 0.30"


def test_full_mode_without_hub_fails_with_a_clear_message(monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("COURSE_SMOKE", "1")  # main() sets it for its kernels: monkeypatch restores it afterwards
    monkeypatch.setattr(run_notebooks, "hub_reachable", lambda: False)
    assert run_notebooks.main(["--full"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_a_failing_notebook_is_reported_not_raised(tmp_path, monkeypatch) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("print('Key figure: x = 1')"), nbformat.v4.new_code_cell("1 / 0")]
    path = tmp_path / "99-demo" / "broken.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    monkeypatch.setattr(run_notebooks, "ROOT", tmp_path)
    result = run_notebooks.execute(path, tmp_path / "build", cell_timeout_s=60)
    assert result.status.startswith("FAILED") and "ZeroDivisionError" in result.status
    assert result.key_figure == "x = 1"
    assert (tmp_path / "build" / "99-demo" / "broken.ipynb").is_file()
    assert (tmp_path / "build" / "99-demo" / "broken.html").is_file()


def test_warning_lines_are_counted_once_each_with_their_cell() -> None:
    """Python's warning and its echoed source line count once; a library's logged line counts; progress bars and
    what the notebook prints on stdout do not."""
    nb = nbformat.v4.new_notebook()
    quiet, noisy = nbformat.v4.new_code_cell(""), nbformat.v4.new_code_cell("")
    quiet.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a UserWarning in a sentence\n")]
    noisy.outputs = [nbformat.v4.new_output("stream", name="stderr", text=(
        "/x/peft/mapping_func.py:154: UserWarning: renamed to 'None'\n  warnings.warn(\n"
        "Loading weights: 100%|##########| 29/29 [00:00<00:00]\n\n"
        "[transformers] `use_cache=True` is incompatible with gradient checkpointing.\n"))]
    nb.cells = [quiet, noisy]
    assert run_notebooks.warning_lines(nb) == [
        (1, "UserWarning: renamed to 'None'"),
        (1, "[transformers] `use_cache=True` is incompatible with gradient checkpointing.")]
