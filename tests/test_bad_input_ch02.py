"""Chapter 02's bad input, class by class (issue 23): empty batches, values of the wrong type (a string where a list
or a bool is meant, a float where an integer is), a damaged checkpoint or adapter file met on resume or reload, and
output folders that are existing files. Each case expects the course's error naming the argument, file or field and
what to do, raised before any model is touched (the functions get `object()` where a model would be)."""

from __future__ import annotations

import nbformat
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tools.nbexport import load
from utils.ch02_squad import check_run_paths, check_saved_adapter
from utils.errors import CourseArgumentError, CourseError
from utils.paths import ROOT
from utils.resume import load_checkpoint, save_checkpoint
from utils.smoke import fixture_path, tiny_checkpoint

SQUAD = load("02-lora-gptj/01_lora_gptj_squad.ipynb")  # chapter 02's SQuAD code, from its notebook
NOTEBOOK = ROOT / "02-lora-gptj" / "01_lora_gptj_squad.ipynb"
EXAMPLE = {"id": "q1", "input_ids": [5, 6, 7], "labels": [-100, 6, 7]}


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("gptj"))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def record():
    return SQUAD.load_squad(fixture_path("squad_train"), "train", n=1)[0]


def _train(batches, grad_accum=1, pad_token_id=0, amp_dtype=None):
    """squad_train_epoch with no model: every case must fail in the argument check, before the model is used."""
    return SQUAD.squad_train_epoch(object(), batches, object(), object(), grad_accum, pad_token_id, amp_dtype)


EMPTY = [
    ("collate, empty list", lambda tok, rec: SQUAD.collate_squad_batch([], 0), r"collate_squad_batch\(\): batch must"),
    ("collate, empty tuple", lambda tok, rec: SQUAD.collate_squad_batch((), 0), r"collate_squad_batch\(\): batch must"),
    ("train epoch, no batches", lambda tok, rec: _train([]), r"squad_train_epoch\(\): batches must be a non-empty"),
    ("train epoch, an empty batch", lambda tok, rec: _train([[EXAMPLE], []]), r"squad_train_epoch\(\): batches\[1\]"),
    ("encode_records, no records", lambda tok, rec: SQUAD.encode_records([], tok, 128),
     "encode_records: no records to encode"),
    ("scores, no records", lambda tok, rec: SQUAD.squad_v2_scores({}, []), "squad_v2_scores: no records to score"),
]


@pytest.mark.parametrize(("call", "message"), [case[1:] for case in EMPTY], ids=[case[0] for case in EMPTY])
def test_an_empty_batch_is_named_not_max_of_an_empty_sequence(call, message, tokenizer, record):
    with pytest.raises(CourseError, match=message) as caught:
        call(tokenizer, record)
    assert "max() arg" not in str(caught.value)


WRONG_TYPES = [
    # collate_squad_batch: a string or one example where a list of examples is meant; a pad id of the wrong kind
    ("collate, batch a string", lambda t, r: SQUAD.collate_squad_batch("input_ids", 0), r"batch must be a non-empty list"),
    ("collate, batch one example", lambda t, r: SQUAD.collate_squad_batch(EXAMPLE, 0), r"batch must be a non-empty list"),
    ("collate, lists of ids", lambda t, r: SQUAD.collate_squad_batch([[5, 6]], 0), r"batch\[0\] must be an encoded"),
    ("collate, pad id a string", lambda t, r: SQUAD.collate_squad_batch([EXAMPLE], "0"), r"pad_token_id must be an int"),
    ("collate, pad id a float", lambda t, r: SQUAD.collate_squad_batch([EXAMPLE], 0.0), r"pad_token_id must be an int"),
    ("collate, pad id a bool", lambda t, r: SQUAD.collate_squad_batch([EXAMPLE], True), r"pad_token_id must be an int"),
    # encode_example and encode_records: max_length a float or a string, with_answer a string, records a string
    ("encode, max_length a float", lambda t, r: SQUAD.encode_example(r, t, 128.0), r"encode_example\(\): max_length"),
    ("encode, max_length a string", lambda t, r: SQUAD.encode_example(r, t, "128"), r"encode_example\(\): max_length"),
    ("encode, with_answer 'False'", lambda t, r: SQUAD.encode_example(r, t, 128, with_answer="False"),
     r"encode_example\(\): with_answer must be True or False, got 'False'; write the bool itself"),
    ("encode, with_answer 0", lambda t, r: SQUAD.encode_example(r, t, 128, with_answer=0), r"with_answer must be True"),
    ("records a string", lambda t, r: SQUAD.encode_records("train.json", t, 128),
     r"encode_records\(\): records must be a list of SQuAD records"),
    ("records one record", lambda t, r: SQUAD.encode_records(r, t, 128),
     r"encode_records\(\): records must be a list of SQuAD records"),
    ("records, with_answer 'True'", lambda t, r: SQUAD.encode_records([r], t, 128, with_answer="True"),
     r"encode_records\(\): with_answer must be True or False"),
    ("records, max_length a float", lambda t, r: SQUAD.encode_records([r], t, 64.5), r"encode_records\(\): max_length"),
    # load_squad: the slice's numbers, the source and the split
    ("load, n a string", lambda t, r: SQUAD.load_squad(fixture_path("squad_train"), "train", n="10"), r"n must be an"),
    ("load, n a float", lambda t, r: SQUAD.load_squad(fixture_path("squad_train"), "train", n=2.5), r"n must be an"),
    ("load, n a bool", lambda t, r: SQUAD.load_squad(fixture_path("squad_train"), "train", n=True), r"n must be an"),
    ("load, seed a string", lambda t, r: SQUAD.load_squad(fixture_path("squad_train"), "train", seed="0"), r"seed must"),
    ("load, source None", lambda t, r: SQUAD.load_squad(None, "train"), r"load_squad\(\): source must be"),
    ("load, source a number", lambda t, r: SQUAD.load_squad(42, "train"), r"load_squad\(\): source must be"),
    ("load, split a list", lambda t, r: SQUAD.load_squad(fixture_path("squad_train"), ["train"]), r"split must be"),
    # squad_train_epoch: the accumulation, the pad id, the precision
    ("train, grad_accum a float", lambda t, r: _train([[EXAMPLE]], grad_accum=2.0), r"grad_accum must be an integer"),
    ("train, grad_accum a string", lambda t, r: _train([[EXAMPLE]], grad_accum="2"), r"grad_accum must be an integer"),
    ("train, grad_accum 0", lambda t, r: _train([[EXAMPLE]], grad_accum=0), r"grad_accum must be an integer >= 1"),
    ("train, batches a string", lambda t, r: _train("batches"), r"squad_train_epoch\(\): batches must be"),
    ("train, pad id a string", lambda t, r: _train([[EXAMPLE]], pad_token_id="50256"), r"pad_token_id must be an int"),
    ("train, amp_dtype a string", lambda t, r: _train([[EXAMPLE]], amp_dtype="fp16"), r"amp_dtype must be torch.float16"),
    ("train, amp_dtype fp32", lambda t, r: _train([[EXAMPLE]], amp_dtype=torch.float32), r"amp_dtype must be"),
]


@pytest.mark.parametrize(("call", "message"), [case[1:] for case in WRONG_TYPES], ids=[case[0] for case in WRONG_TYPES])
def test_a_value_of_the_wrong_type_is_refused_by_name(call, message, tokenizer, record):
    with pytest.raises(CourseArgumentError, match=message):
        call(tokenizer, record)


def _checkpoint(path):
    save_checkpoint(path, {"adapter": {"w": torch.ones(4, 4)}, "epoch": 1, "step": 2, "history": {"val": [1.0]}})
    return path


DAMAGES = {
    "truncated to half": lambda data: data[: len(data) // 2],
    "truncated to the header's length": lambda data: data[:8],
    "empty": lambda data: b"",
    "not safetensors at all": lambda data: b"PK\x03\x04 a zip file, or a pickle " * 8,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resuming_from_a_damaged_checkpoint_names_the_file_and_says_start_fresh(damage, tmp_path):
    path = _checkpoint(tmp_path / "checkpoint.safetensors")
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(CourseError, match="start without resume=True") as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_a_weights_file_where_the_checkpoint_should_be_is_not_taken_for_one(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    save_file({"w": torch.ones(2)}, str(path))  # a safetensors file, but no checkpoint in its header
    with pytest.raises(CourseError, match=f"{path} is not a checkpoint that save_checkpoint wrote"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint("gptj"), dtype=torch.float32)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_reloading_a_damaged_adapter_names_the_file_before_a_base_is_loaded(damage, adapter_dir, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((adapter_dir / name).read_bytes())
    check_saved_adapter(folder)  # whole: accepted
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(DAMAGES[damage](weights.read_bytes()))
    with pytest.raises(CourseError, match="delete it and save or download it again") as caught:
        check_saved_adapter(folder)
    assert str(weights) in str(caught.value)


@pytest.mark.parametrize("broken", ["no weights file", "no config", "config not JSON", "no folder"])
def test_an_incomplete_adapter_folder_is_named(broken, adapter_dir, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_bytes((adapter_dir / name).read_bytes())
    if broken == "no weights file":
        (folder / "adapter_model.safetensors").unlink()
    elif broken == "no config":
        (folder / "adapter_config.json").unlink()
    elif broken == "config not JSON":
        (folder / "adapter_config.json").write_text('{"r": 4,')
    else:
        folder = tmp_path / "elsewhere"
    with pytest.raises(CourseError, match=str(folder)):
        check_saved_adapter(folder)


def test_the_notebook_checks_its_paths_before_training_and_the_adapter_before_reloading():
    """Where the checks run: check_run_paths before the first epoch, check_saved_adapter before the base for the
    saved adapter is loaded."""
    sources = [c.source for c in nbformat.read(str(NOTEBOOK), as_version=4).cells if c.cell_type == "code"]
    first = {needle: next(i for i, s in enumerate(sources) if needle in s)
             for needle in ("check_run_paths(RESUME", "losses = squad_train_epoch(", "check_saved_adapter(ADAPTER_DIR)")}
    assert first["check_run_paths(RESUME"] < first["losses = squad_train_epoch("]
    reload = sources[first["check_saved_adapter(ADAPTER_DIR)"]]
    assert reload.index("check_saved_adapter(ADAPTER_DIR)") < reload.index("PeftModel.from_pretrained(")


@pytest.mark.parametrize("resume", ["False", "True", 1, 0, None])
def test_resume_from_a_string_or_number_is_refused_not_taken_by_truthiness(resume, tmp_path):
    with pytest.raises(CourseArgumentError, match=f"RESUME must be True or False, got {resume!r}"):
        check_run_paths(resume, tmp_path / "run" / "checkpoint.safetensors", tmp_path / "run" / "adapter")


@pytest.mark.parametrize("which", ["the checkpoint's folder", "the adapter folder", "the run folder"])
def test_an_output_folder_that_is_an_existing_file_is_refused_before_training(which, tmp_path):
    run = tmp_path / "run"
    checkpoint, adapter = run / "checkpoint.safetensors", run / "squad-lora-adapter"
    if which == "the run folder":
        run.write_text("a file where the run's folder goes")
        culprit = run
    else:
        run.mkdir()
        culprit = run if which == "the checkpoint's folder" else adapter
        if which == "the checkpoint's folder":
            checkpoint = tmp_path / "run.txt" / "checkpoint.safetensors"
            culprit = tmp_path / "run.txt"
        culprit.write_text("a file")
    with pytest.raises(CourseError, match="is an existing file, not a folder: move it away or delete it") as caught:
        check_run_paths(False, checkpoint, adapter)
    assert str(culprit) in str(caught.value)


def test_a_checkpoint_path_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "checkpoint.safetensors").mkdir()
    with pytest.raises(CourseError, match="is a folder; the checkpoint is one file"):
        check_run_paths(True, tmp_path / "checkpoint.safetensors", tmp_path / "adapter")
    check_run_paths(True, tmp_path / "new" / "checkpoint.safetensors", tmp_path / "adapter")  # fresh paths pass
