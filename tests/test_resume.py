"""utils/resume.py: a checkpoint dict saved as one safetensors file comes back exactly (tensors, int keys, tuples,
floats) and training continues bit for bit; a save interrupted at any point leaves the previous checkpoint or the new
one; a missing, damaged, foreign or mismatched checkpoint is a CourseError naming it, before anything changes; no pickle."""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, TensorDataset

from utils.errors import CourseArgumentError, CourseError
from utils.lessons.gpt import GPTModel, train_model
from utils.resume import begin_epoch, load_checkpoint, rng_state, save_checkpoint

TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 1, "drop_rate": 0.1,
        "qkv_bias": True}


def _parts(seed: int, config=TINY):
    """A tiny GPTModel, its AdamW and an enabled GradScaler, with state after `seed`-dependent steps."""
    torch.manual_seed(seed)
    model = GPTModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(2):
        _step(model, optimizer, scaler, config)
    return model, optimizer, scaler


def _step(model, optimizer, scaler, config=TINY) -> None:
    x = torch.randint(0, config["vocab_size"], (2, 8))
    optimizer.zero_grad()
    scaler.scale(torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())).backward()
    scaler.step(optimizer)
    scaler.update()


def _checkpoint(model, optimizer, scaler=None, **more) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(), "step": 2,
            **({"scaler": scaler.state_dict()} if scaler else {}), **more}


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    """Equal values of the same Python types, tensors bit for bit with their dtypes, nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def test_a_checkpoint_comes_back_exactly_and_training_continues_bit_for_bit(tmp_path):
    model, optimizer, scaler = _parts(seed=0)
    extras = {"log": {"losses": [2.5, 0.1 + 0.2, float("inf"), float("-inf"), float("nan"), -0.0, 1e-300],
                      "clipped": [True, False], "max_norm": None, "note": "é ✓"},
              "betas": (0.9, (0.999,)), "by_id": {3: "three", (1, 2): "pair"}, "empty": {}, "__tensor__": "a key"}
    saved = _checkpoint(model, optimizer, scaler, **extras)
    save_checkpoint(tmp_path / "checkpoint.safetensors", saved)
    loaded = load_checkpoint(tmp_path / "checkpoint.safetensors")

    assert list(loaded["optimizer"]["state"]) == list(range(len(list(model.parameters()))))  # int keys, as ints
    assert type(loaded["optimizer"]["param_groups"][0]["betas"]) is tuple and loaded["rng"]["cpu"].dtype == torch.uint8
    plain = {k: dict(v) if k == "model" else v for k, v in saved.items()}  # state_dict() is an OrderedDict
    assert _same(loaded, plain)

    # Two runs from here: the original objects, and fresh ones restored from the file. Same steps, same dropout.
    fresh_model, fresh_optimizer, fresh_scaler = _parts(seed=1)
    fresh_model.load_state_dict(loaded["model"])
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    fresh_scaler.load_state_dict(loaded["scaler"])
    for m, o, s in ((model, optimizer, scaler), (fresh_model, fresh_optimizer, fresh_scaler)):
        torch.manual_seed(5)
        for _ in range(3):
            _step(m, o, s)
    assert all(torch.equal(v, fresh_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert _same(fresh_optimizer.state_dict(), optimizer.state_dict()) and fresh_scaler.get_scale() == scaler.get_scale()


def test_the_file_is_safetensors_with_the_rest_as_json_in_its_header_and_no_pickle(tmp_path, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle was used")

    for owner, name in ((torch, "save"), (torch, "load"), (pickle, "dump"), (pickle, "dumps"), (pickle, "load"),
                        (pickle, "loads"), (pickle, "Pickler"), (pickle, "Unpickler")):
        monkeypatch.setattr(owner, name, no_pickle)
    weight = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    path = save_checkpoint(tmp_path / "c.safetensors", {"model": {"w": weight}, "state": {0: {"m": torch.ones(2)}},
                                                        "betas": (0.9, 0.99), "step": 3})
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")  # the safetensors layout: 8 bytes of header size, the JSON header, data
    header = json.loads(data[8:8 + size])
    assert json.loads(header["__metadata__"]["checkpoint"]) == {
        "model": {"w": {"__tensor__": "model/w"}}, "state": {"__items__": [[0, {"m": {"__tensor__": "state/0/m"}}]]},
        "betas": {"__tuple__": [0.9, 0.99]}, "step": 3}
    assert header["model/w"]["dtype"] == "BF16" and header["model/w"]["shape"] == [2, 3]
    assert len(data) == 8 + size + 6 * 2 + 2 * 4  # nothing but the header and the two tensors' bytes
    with safe_open(str(path), "pt") as file:
        assert sorted(file.keys()) == ["model/w", "state/0/m"]
    assert torch.equal(load_checkpoint(path)["model"]["w"], weight)


def test_what_json_cannot_hold_is_refused_before_the_file_changes(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"step": 1})
    with pytest.raises(CourseArgumentError, match=r"save_checkpoint\(\): checkpoint\['log'\]\['seen'\] is a set"):
        save_checkpoint(path, {"step": 2, "log": {"seen": {1, 2}}})
    assert load_checkpoint(path) == {"step": 1} and sorted(os.listdir(tmp_path)) == ["c.safetensors"]


# --- a save interrupted at any moment ----------------------------------------------------------------------------

class Crash(BaseException):
    """A crash in the middle of a save (a BaseException, so that no `except Exception` in the code catches it)."""


def _crash_at(monkeypatch, when: int, torn: bool) -> list[str]:
    """Count the save's disk operations (the write, the fsync, the rename) and raise Crash at operation `when`.
    With `torn`, the write first leaves half its file, as a power cut in the middle of writing does. Only calls made
    by utils.resume count: anything else (a kernel manager's finalizer removing its files) passes through."""
    seen: list[str] = []

    def wrap(owner, name):
        real = getattr(owner, name)

        def operation(*args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__") != "utils.resume":
                return real(*args, **kwargs)
            seen.append(name)
            if len(seen) == when:
                if torn and name == "save_file":
                    real(*args, **kwargs)
                    written = Path(args[1])
                    written.write_bytes(written.read_bytes()[: written.stat().st_size // 2])
                raise Crash(f"operation {when}: {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, operation)

    wrap(safetensors.torch, "save_file")
    for name in ("fsync", "replace", "rename", "remove", "unlink"):
        wrap(os, name)
    return seen


@pytest.mark.parametrize("torn", [False, True], ids=["crash between operations", "crash in the middle of the write"])
def test_an_interrupted_save_leaves_the_previous_or_the_new_checkpoint(tmp_path, monkeypatch, torn):
    path = tmp_path / "run" / "checkpoint.safetensors"
    old, new = _parts(seed=0)[:2], _parts(seed=1)[:2]
    save_checkpoint(path, _checkpoint(*old, step=1))
    pristine = path.read_bytes()
    loaded_steps = []
    for when in range(1, 10):  # crash at the save's 1st disk operation, then its 2nd, ... until it completes
        path.write_bytes(pristine)
        with monkeypatch.context() as patch:
            operations = _crash_at(patch, when, torn)
            try:
                save_checkpoint(path, _checkpoint(*new, step=2))
                completed = True
            except Crash:
                completed = False
        loaded = load_checkpoint(path)  # must not raise: one complete checkpoint is there, whatever the moment
        expected = dict((old, new)[loaded["step"] - 1][0].state_dict())
        assert all(torch.equal(v, expected[k]) for k, v in loaded["model"].items()), (when, loaded["step"])
        loaded_steps.append(loaded["step"])
        save_checkpoint(path, _checkpoint(*old, step=3))  # the next save is not confused by what a crash left
        assert load_checkpoint(path)["step"] == 3 and os.listdir(path.parent) == ["checkpoint.safetensors"]
        if completed:
            break
    assert operations == ["save_file", "fsync", "replace"]
    assert loaded_steps == [1, 1, 1, 2]  # the previous checkpoint until the rename, the new one from it on


def test_a_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"
    model, optimizer, scaler = _parts(seed=0)
    save_checkpoint(path, _checkpoint(model, optimizer, scaler, step=1))

    def replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _checkpoint(*_parts(seed=1), step=2))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.safetensors", "checkpoint.safetensors.tmp"]
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and all(torch.equal(v, loaded["model"][k]) for k, v in model.state_dict().items())
    save_checkpoint(path, _checkpoint(model, optimizer, scaler, step=3))  # writes over the leftover, then renames
    assert os.listdir(tmp_path) == ["checkpoint.safetensors"] and load_checkpoint(path)["step"] == 3


# --- missing, damaged, foreign and mismatched checkpoints ------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size - 100])


DAMAGE = [  # (id, what to do to a good checkpoint file, what the message says)
    ("no file", lambda p: p.unlink(), "no complete checkpoint at {path}; start without resume=True"),
    ("truncated", _truncate, "{path} is not a checkpoint that save_checkpoint wrote (SafetensorError"),
    ("0 bytes", lambda p: p.write_bytes(b""), "{path} is not a checkpoint that save_checkpoint wrote"),
    ("a pickle (torch.save)", lambda p: p.write_bytes(pickle.dumps({"model": 1})), "{path} is not a checkpoint"),
    ("model weights, no checkpoint header", lambda p: safetensors.torch.save_file({"w": torch.ones(1)}, str(p)),
     "{path} is not a checkpoint that save_checkpoint wrote (KeyError: 'checkpoint')"),
    ("a header naming a tensor the file lacks", lambda p: safetensors.torch.save_file(
        {"w": torch.ones(1)}, str(p), metadata={"checkpoint": '{"model": {"__tensor__": "model/x"}}'}),
     "{path} is not a checkpoint that save_checkpoint wrote (KeyError: 'model/x')"),
    ("a header that is not JSON", lambda p: safetensors.torch.save_file(
        {"w": torch.ones(1)}, str(p), metadata={"checkpoint": '{"step": '}), "(JSONDecodeError: Expecting value"),
    ("another loop's checkpoint", lambda p: save_checkpoint(p, {"adapter": {}, "step": 1}),
     "{path}: no field 'model' (its fields: ['adapter', 'step']); start without resume=True"),
    ("a model of another size", lambda p: save_checkpoint(p, _checkpoint(*_parts(0, {**TINY, "emb_dim": 64})[:2])),
     "{path} (entry 'model') does not fit this model: 21 tensor(s) of another shape, first tok_emb.weight (64, 64) "
     "where the model has (64, 32)"),
    ("a model of another depth", lambda p: save_checkpoint(p, _checkpoint(*_parts(0, {**TINY, "n_layers": 2})[:2])),
     "{path} (entry 'model') does not fit this model: 0 tensor(s) missing (first: []), 16 unexpected (first: "
     "['trf_blocks.1.att.W_key.bias'"),
    ("an optimizer over other parameters", lambda p: save_checkpoint(p, _checkpoint(
        _parts(0)[0], torch.optim.SGD(list(_parts(0)[0].parameters())[:2]))),
     "{path}: 'optimizer' is the state of an optimizer over other parameters than this one's"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in DAMAGE], ids=[i for i, *_ in DAMAGE])
def test_a_bad_checkpoint_is_named_and_a_resume_changes_nothing(tmp_path, damage, message):
    """The error names the file and says what is wrong; train_model(resume=True) raises it before its model and
    optimizer change (they keep their weights and moments)."""
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, _checkpoint(*_parts(seed=0)))
    damage(path)
    model, optimizer, _ = _parts(seed=1)
    weights, moments = _weights(model), optimizer.state_dict()["state"][0]["exp_avg"].clone()
    ids = torch.randint(0, TINY["vocab_size"], (4, TINY["context_length"] + 1))
    loader = DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=2)
    with pytest.raises(CourseError) as info:
        train_model(model, loader, loader, optimizer, "cpu", 1, 1, 1, checkpoint_dir=tmp_path, resume=True)
    assert message.format(path=path) in str(info.value)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # nothing loaded halfway
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moments)


# --- the interrupted epoch, again ------------------------------------------------------------------------------

def test_begin_epoch_replays_the_interrupted_epochs_shuffle_then_the_random_state_it_stopped_with():
    """A run stopped after any batch of a shuffling loader's epoch, given its checkpoint, gets the epoch's remaining
    batches in the same order and then the same random numbers as the run that never stopped."""
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=3, shuffle=True)
    for done in range(len(loader) + 1):
        torch.manual_seed(0)
        epoch_rng, batches = begin_epoch(loader)
        seen = [(i, batch[0].tolist()) for i, batch in itertools.islice(batches, done)]  # the interrupted run's
        checkpoint = {"epoch_rng": epoch_rng, "batches_done": done, "rng": rng_state()}
        rest = [(i, batch[0].tolist()) for i, batch in batches]
        after = torch.rand(3)
        torch.manual_seed(99)  # a fresh process
        again, resumed = begin_epoch(loader, checkpoint)
        assert again is checkpoint["epoch_rng"] and [(i, b[0].tolist()) for i, b in resumed] == rest, done
        assert torch.equal(torch.rand(3), after)
        assert sorted(x for _, b in seen + rest for x in b) == list(range(10))


def test_a_checkpoint_without_tensors_and_a_path_given_as_text(tmp_path):
    path = save_checkpoint(str(tmp_path / "deep" / "c.safetensors"), {"step": 7, "log": []})
    assert path == tmp_path / "deep" / "c.safetensors" and load_checkpoint(str(path)) == {"step": 7, "log": []}


def test_a_save_leaves_the_folders_other_files_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    save_checkpoint(tmp_path / "checkpoint.safetensors", {"step": 1})
    save_checkpoint(tmp_path / "checkpoint.safetensors", {"step": 2})
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.safetensors", "notes.txt"]
