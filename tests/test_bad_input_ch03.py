"""Chapter 03's bad input, class by class: 03-qlora-bloom/train_qlora.py's arguments (run as a learner runs it, in a
subprocess: exit status 2, one line, no traceback, before the 4-bit model is loaded) and the prompt-file loader
`load_prompt_dataset` (the .json/.jsonl mix-up, paths that are folders or missing, records of the wrong shape)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from utils.ch03_qlora import load_prompt_dataset
from utils.errors import CourseError
from utils.paths import ROOT
from utils.smoke import fixture_path, tiny_checkpoint

SCRIPT = ROOT / "03-qlora-bloom" / "train_qlora.py"


def _run(tmp_path, *argv: str) -> subprocess.CompletedProcess:
    """The script with the tiny BLOOM and the fixture prompts unless `argv` says otherwise, as a learner runs it."""
    defaults = {"--model": tiny_checkpoint("bloom"), "--data": str(fixture_path("prompts")),
                "--output-dir": str(tmp_path / "out")}
    args = [*argv] + [x for key, value in defaults.items() if key not in argv for x in (key, value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The script's one line on stderr, after checking the exit status, that there is no traceback and nothing else."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("train_qlora.py: error: ")
    assert not (proc.stdout.strip()), proc.stdout  # nothing trained, nothing saved
    return lines[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("not a folder\n")
    return path


# Numbers of the wrong kind: zero, negative, fractional, not a number, not finite.
@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "argument --steps: '0' is not an integer > 0"),
    (["--steps", "-3"], "argument --steps: '-3' is not an integer > 0"),
    (["--limit", "2.5"], "argument --limit: '2.5' is not an integer > 0"),
    (["--batch-size", "1e3"], "argument --batch-size: '1e3' is not an integer > 0"),
    (["--max-length", "True"], "argument --max-length: 'True' is not an integer > 0"),
    (["--lr=-2e-4"], "argument --lr: '-2e-4' is not a number > 0"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a number > 0"),
    (["--seed", "-1"], "argument --seed: '-1' is not an integer from 0 to 2**32 - 1"),
    (["--seed", "0.5"], "argument --seed: '0.5' is not an integer from 0 to 2**32 - 1"),
    (["--seed", str(2**32)], f"argument --seed: '{2**32}' is not an integer from 0 to 2**32 - 1"),
], ids=["zero steps", "negative steps", "fractional limit", "float notation", "a bool word", "negative rate",
        "infinite rate", "negative seed", "fractional seed", "seed too big"])
def test_bad_numbers_exit_2_in_one_line(tmp_path, argv, message):
    assert message in _one_line_error(_run(tmp_path, *argv))


# A list of module names written as one string (from a config file or a copied Python list), and empty names.
@pytest.mark.parametrize("value", ["q_proj,v_proj", "['query_key_value']", "query_key_value dense", "", "lora.A"],
                         ids=["commas", "a Python list", "one quoted string", "empty", "a dotted path"])
def test_a_list_in_one_string_exits_2_in_one_line(tmp_path, value):
    line = _one_line_error(_run(tmp_path, "--target-modules", value))
    assert f"argument --target-modules: {value!r} is not a module name" in line
    assert "separated by spaces" in line


# Module names the model does not have: said from its config on the meta device, before the 4-bit model loads.
@pytest.mark.parametrize("names", [["q_proj"], ["q_proj", "v_proj"], ["query_key_value", "c_attn"], ["Dense"]],
                         ids=["llama's", "two missing", "one of two missing", "wrong case"])
def test_unknown_target_modules_exit_2_naming_them_and_the_real_ones(tmp_path, names):
    line = _one_line_error(_run(tmp_path, "--target-modules", *names))
    missing = [n for n in names if n != "query_key_value"]
    assert f"target_modules {missing} not found in BloomForCausalLM" in line
    assert "its linear layers are: ['dense', 'dense_4h_to_h', 'dense_h_to_4h', 'lm_head', 'query_key_value']" in line


def _script():
    spec = importlib.util.spec_from_file_location("train_qlora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("names", [["q_proj"], ["c_attn", "c_proj"]], ids=["llama's", "gpt2's"])
def test_unknown_target_modules_fail_before_the_model_is_loaded(tmp_path, monkeypatch, names):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def no_load(*args, **kwargs):
        raise AssertionError("the 4-bit model was loaded before --target-modules was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_load)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_load)
    with pytest.raises(CourseError, match=r"target_modules \[.*\] not found in BloomForCausalLM"):
        _script().main(["--model", tiny_checkpoint("bloom"), "--data", str(fixture_path("prompts")),
                        "--target-modules", *names, "--output-dir", str(tmp_path / "out")])


# Paths: an output folder that is a file, a model folder that is missing or holds no config, data that is a folder.
@pytest.mark.parametrize("option", ["--output-dir", "--record"])
def test_an_output_folder_that_is_a_file_exits_2(tmp_path, a_file, option):
    line = _one_line_error(_run(tmp_path, option, str(a_file)))
    assert f"argument {option}: '{a_file}' is an existing file, not a folder" in line


@pytest.mark.parametrize(("model", "message"), [
    ("./no-such-model", "--model ./no-such-model: no such folder"),
    ("{tmp}/gone/bloom", "--model {tmp}/gone/bloom: no such folder"),
    ("{tmp}", "--model {tmp}: no config.json in that folder"),
], ids=["relative", "absolute", "a folder without config.json"])
def test_a_model_folder_that_is_missing_or_empty_exits_2(tmp_path, model, message):
    line = _one_line_error(_run(tmp_path, "--model", model.format(tmp=tmp_path)))
    assert message.format(tmp=tmp_path) in line


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# The prompts file: what the loader says, and the script says it in one line too.
BAD_PROMPT_FILES = {
    "a folder": (lambda t: (t / "prompts").mkdir() or t / "prompts", "is a folder: pass the .csv, .json or .jsonl file"),
    "a missing .csv": (lambda t: t / "nothere.csv", "nothere.csv: no such file"),
    "a missing relative path": (lambda t: "./nothere", "./nothere: no such file"),
    "a JSON list in .jsonl, one line": (lambda t: _write(t, "p.jsonl", '[{"prompt": "a"}, {"prompt": "b"}]'),
                                        "holds one JSON list [...], not JSON Lines (one object per line): rename it "
                                        "to p.json"),
    "a JSON list in .jsonl, pretty": (lambda t: _write(t, "p.jsonl", '[\n  {"prompt": "a"},\n  {"prompt": "b"}\n]\n'),
                                      "rename it to p.json"),
    "an object of lists in .json": (lambda t: _write(t, "p.json", '{"prompt": ["a", "b"]}'),
                                    "expected a JSON list of records [{...}, {...}], got a dict with keys ['prompt']"),
    "a list of strings in .json": (lambda t: _write(t, "p.json", '["a", "b"]'),
                                   "record 0: a JSON str, expected an object"),
    "a number per line in .jsonl": (lambda t: _write(t, "p.jsonl", "1\n2\n"), "line 1: a JSON int, expected an object"),
    "no prompt column": (lambda t: _write(t, "p.csv", "act,text\nPoet,I want you to act as a poet\n"),
                         "line 2: no field 'prompt' (its fields: ['act', 'text']); pass column="),
    "a number for a prompt": (lambda t: _write(t, "p.jsonl", '{"prompt": "a"}\n{"prompt": 7}\n'),
                              "line 2: field 'prompt' is int 7, expected text"),
    "a .txt file": (lambda t: _write(t, "p.txt", "I want you to act as a poet\n"), "reads records from .csv, .json"),
}


@pytest.mark.parametrize("case", list(BAD_PROMPT_FILES))
def test_bad_prompt_files_are_named_with_what_to_do(tmp_path, monkeypatch, case):
    make, message = BAD_PROMPT_FILES[case]
    monkeypatch.chdir(tmp_path)
    source = make(tmp_path)
    with pytest.raises(CourseError) as error:
        load_prompt_dataset(str(source))
    assert message in str(error.value)


@pytest.mark.parametrize("case", ["a folder", "a missing relative path", "a JSON list in .jsonl, pretty",
                                  "no prompt column"])
def test_the_script_says_a_bad_prompt_file_in_one_line(tmp_path, case):
    make, message = BAD_PROMPT_FILES[case]
    line = _one_line_error(_run(tmp_path, "--data", str(make(tmp_path))))
    assert message in line


def test_json_lines_in_a_json_file_are_read_as_records(tmp_path):
    """The other way round is no mistake: read_json takes a .json file of one object per line as a list of them."""
    path = _write(tmp_path, "p.json", '{"prompt": "a"}\n{"prompt": "b"}\n')
    assert load_prompt_dataset(str(path))["text"] == ["a", "b"]
