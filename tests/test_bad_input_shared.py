"""Bad input to the shared plumbing and chapter 05, by class (issue 23): numbers of the wrong kind, paths that are files
or missing, loopback addresses, device names torch cannot parse, a missing requirements file. Each answers with the
course's error naming the argument or file and what to do, before any work; the scripts exit with status 2 and one
line, no traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tools.nbexport import load
from utils import colab, machine
from utils.checks import check_folder, check_int, check_number
from utils.errors import CourseArgumentError, CourseError
from utils.lessons import environment
from utils.lessons.gpt import GPTModel, train_model
from utils.paths import ROOT, cache_dir
from utils.resume import check_loop_args, save_checkpoint

CH05 = load("05-lr-schedules/01_warmup_cosine_clipping.ipynb")  # the chapter's code, from its notebook
SCRIPT = ROOT / "01-peft-setup" / "jupyter_server_setup.py"
SCHEDULE = {"total_steps": 10, "warmup_steps": 2, "initial_lr": 1e-4, "peak_lr": 0.01, "min_lr": 1e-5}
TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 1, "drop_rate": 0.0,
        "qkv_bias": False}


def _script():
    spec = importlib.util.spec_from_file_location("jupyter_server_setup_shared", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class UntouchableLoader:
    """Five batches whose iteration fails: proves that a check came before any training."""

    def __len__(self):
        return 5

    def __iter__(self):
        raise AssertionError("training started despite a bad argument")


# --- numbers of the wrong kind: a bool is not 1, a fractional step is not a step, a string is not a number ------------

@pytest.mark.parametrize("value", [True, False, 2.5, 2.0, "3", None, np.float64(3.0), 1 + 0j])
def test_check_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(CourseArgumentError, match=r"count must be an integer, got "):
        check_int("count", value)


@pytest.mark.parametrize("value", [True, False, "1e-3", None, float("nan"), float("inf"), torch.tensor(1.0)])
def test_check_number_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(CourseArgumentError, match=r"rate must be a finite number, got "):
        check_number("rate", value)


@pytest.mark.parametrize(("step", "shown"), [(2.5, "2.5"), (True, "True"), ("3", "'3'"), (np.float32(1.0), "1.0"),
                                             (None, "None")])
def test_the_schedule_refuses_a_step_that_is_not_a_whole_number(step, shown):
    with pytest.raises(CourseArgumentError, match=rf"step must be an integer >= 0 and <= 10, got .*{shown}"):
        CH05.lr_at_step(step, **SCHEDULE)


@pytest.mark.parametrize(("name", "value"), [("peak_lr", True), ("peak_lr", "1e-3"), ("initial_lr", False),
                                             ("min_lr", None), ("total_steps", 10.0), ("warmup_steps", True),
                                             ("total_steps", "10")])
def test_the_schedule_refuses_numbers_of_the_wrong_kind(name, value):
    with pytest.raises(CourseArgumentError, match=rf"{name} must be (an integer|a finite number).*, got {value!r}"):
        CH05.lr_at_step(0, **{**SCHEDULE, name: value})


@pytest.mark.parametrize(("name", "value"), [("peak_lr", True), ("max_norm", True), ("warmup_fraction", True),
                                             ("warmup_fraction", "0.2"), ("num_epochs", 2.0), ("resume", "False")])
def test_the_training_function_refuses_them_before_any_step(name, value):
    torch.manual_seed(0)
    model = GPTModel(TINY)
    optimizer = torch.optim.AdamW(model.parameters())
    args = {"peak_lr": 0.01, "initial_lr": 1e-4, "min_lr": 1e-5, "num_epochs": 2, name: value}
    with pytest.raises(CourseArgumentError, match=rf"{name} must be .*, got {value!r}"):
        CH05.train_with_schedule(model, UntouchableLoader(), UntouchableLoader(), optimizer, "cpu",
                                 args.pop("num_epochs"), 5, 1, **args)
    assert not optimizer.state


@pytest.mark.parametrize(("name", "value"), [("max_length", 2.0), ("stride", True), ("batch_size", "4"),
                                             ("num_workers", -1)])
def test_chapter_05s_loader_refuses_them_before_encoding(name, value):
    class Untouchable:
        def encode(self, text, **kwargs):
            raise AssertionError("encoded despite a bad argument")

    args = {"batch_size": 2, "max_length": 4, "stride": 4, "num_workers": 0, name: value}
    with pytest.raises(CourseArgumentError, match=rf"create_dataloader_v1\(\): {name} must be an integer"):
        CH05.create_dataloader_v1("some text " * 20, tokenizer=Untouchable(), **args)


# --- paths that are files, under a file, or missing ----------------------------------------------------------------

@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(("where", "message"), [("file", "a folder, not an existing file"),
                                                ("file/child", "a folder path, but .* is a file"),
                                                ("file/child/grandchild", "a folder path, but .* is a file")])
def test_check_folder_refuses_a_file_and_a_path_under_one(a_file, where, message):
    path = a_file.parent / where.replace("file", a_file.name, 1)
    with pytest.raises(CourseArgumentError, match=message):
        check_folder("out", path)


@pytest.mark.parametrize("value", ["", "   ", None, 3, ["a"]])
def test_check_folder_refuses_what_is_not_a_path(value):
    with pytest.raises(CourseArgumentError, match="out must be a folder path"):
        check_folder("out", value)


@pytest.mark.parametrize("where", ["file", "file/cache"])
def test_a_cache_folder_that_is_a_file_is_named(a_file, monkeypatch, where):
    monkeypatch.setenv("COURSE_CACHE_DIR", str(a_file.parent / where.replace("file", a_file.name)))
    with pytest.raises(CourseArgumentError, match="COURSE_CACHE_DIR must be a folder"):
        cache_dir()


@pytest.mark.parametrize(("where", "resume", "message"), [
    ("file", False, "checkpoint_dir must be a folder, not an existing file"),
    ("file/run", False, "checkpoint_dir must be a folder path, but .* is a file"),
    ("file", True, "checkpoint_dir must be a folder, not an existing file"),
    ("missing", True, r"no complete checkpoint at .*missing.*; start without resume=True"),
])
def test_a_checkpoint_folder_that_is_a_file_or_missing_is_named_before_training(a_file, where, resume, message):
    folder = a_file.parent / where.replace("file", a_file.name)
    for train in (CH05.train_with_schedule, train_model):  # chapter 05's loop and chapter 04's share the check
        torch.manual_seed(0)
        model = GPTModel(TINY)
        optimizer = torch.optim.AdamW(model.parameters())
        extra = {"peak_lr": 0.01, "initial_lr": 1e-4, "min_lr": 1e-5} if train is CH05.train_with_schedule else {}
        with pytest.raises(CourseError, match=message):
            train(model, UntouchableLoader(), UntouchableLoader(), optimizer, "cpu", 1, 5, 1,
                  checkpoint_dir=folder, resume=resume, **extra)
        assert not optimizer.state
    assert a_file.read_text() == "not a folder"


def test_saving_a_checkpoint_under_a_file_is_named(a_file):
    with pytest.raises(CourseArgumentError, match="the checkpoint's folder must be a folder"):
        save_checkpoint(a_file / "checkpoint.safetensors", {"step": 1})
    with pytest.raises(CourseArgumentError):
        check_loop_args([1], 1, 1, 1, checkpoint_dir=a_file)


def _run_setup(tmp_path, *args):
    env = {**os.environ, "JUPYTER_PASSWORD": "tunnel-vision-42"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize(("args", "reason"), [
    (("--config-dir", "{file}"), "--config-dir must be a folder, not an existing file"),
    (("--config-dir", "{file}/jupyter"), "--config-dir must be a folder path, but"),
    (("--config-dir", "{tmp}/cfg", "--root-dir", "{file}"), "--root-dir must be a folder, not an existing file"),
    (("--config-dir", "{tmp}/cfg", "--root-dir", "{tmp}/no-such-folder"), "--root-dir must be an existing folder"),
    (("--config-dir", "{tmp}/cfg", "--root-dir", "{file}/notebooks"), "--root-dir must be a folder path, but"),
])
def test_the_jupyterlab_setup_refuses_paths_that_are_files_or_missing(tmp_path, a_file, args, reason):
    args = [a.format(file=a_file, tmp=tmp_path) for a in args]
    result = _run_setup(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("refused: ") and reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr  # one line
    assert not (tmp_path / "cfg").exists() and a_file.read_text() == "not a folder"  # nothing written


# --- loopback addresses are local, in every form --------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "local"), [
    ("localhost", True), ("LocalHost", True), ("127.0.0.1", True), ("127.1", True), ("127.0.1", True),
    ("127.255.255.254", True), ("0x7f.1", True), ("2130706433", True), ("::1", True), ("[::1]", True),
    ("::ffff:127.0.0.1", True), (" 127.0.0.1 ", True),
    ("0.0.0.0", False), ("", False), ("0", False), ("::", False), ("10.0.0.1", False), ("128.1", False),
    ("192.168.1.10", False), ("gpu.example.org", False), ("127.1 evil.example", False), ("localhost.example", False),
])
def test_loopback_addresses_are_local_and_others_public(ip, local):
    assert _script().is_local_address(ip) is local


def test_a_short_loopback_address_writes_a_local_config(tmp_path):
    result = _run_setup(tmp_path, "--config-dir", str(tmp_path / "cfg"), "--ip", "127.1")
    assert result.returncode == 0, result.stderr
    server = json.loads((tmp_path / "cfg" / "jupyter_server_config.json").read_text())["ServerApp"]
    assert server["ip"] == "127.1" and server["allow_remote_access"] is False and "certfile" not in server


# --- device names torch cannot parse ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu0", "CUDA", "", "cuda:-1", "cuda 0", 0, True, 1.5])
def test_a_device_name_torch_cannot_parse_is_named_with_the_valid_forms(device):
    for call in (machine.as_device, environment.pick_dtype, machine.check_released):
        with pytest.raises(CourseArgumentError, match=r'is not a device name torch can parse: use "cpu", "cuda"'):
            call(device)
    with pytest.raises(CourseArgumentError, match="is not a device name"), machine.peak_memory(device):
        pass


@pytest.mark.parametrize("device", ["cpu", "cpu:0", " cpu ", "meta", torch.device("cpu"), None])
def test_valid_device_names_pass(device):
    assert machine.as_device(device).type in {"cpu", "meta", "cuda"}
    assert environment.pick_dtype("cpu") == torch.float32


# --- the Colab helper given a requirements file that is not there -----------------------------------------------------

@pytest.mark.parametrize(("kind", "message"), [("missing", "no such file"), ("a folder", "is a folder, not a file"),
                                             ("empty", "is empty")])
def test_the_colab_helper_names_a_bad_requirements_file_before_pip(tmp_path, monkeypatch, kind, message):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran despite a bad requirements file")

    monkeypatch.setattr(subprocess, "run", no_pip)
    requirements = {"missing": tmp_path / "requirements-missing.txt", "a folder": tmp_path,
                    "empty": tmp_path / "empty.txt"}[kind]
    if kind == "empty":
        requirements.write_text("")
    with pytest.raises(CourseError, match=message) as info:
        colab.install_course_stack(requirements)
    assert str(requirements) in str(info.value)
