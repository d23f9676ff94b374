"""Chapter 04/05 checkpoints: a save interrupted at any point leaves a complete checkpoint (the previous or the new
one), and a damaged checkpoint is a CourseError naming the file, leaving model and optimizer as they were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from utils.errors import CourseError
from utils.lessons.gpt import GPTModel
from utils.resume import load_checkpoint, save_checkpoint, start_run

TINY = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 1, "drop_rate": 0.0,
        "qkv_bias": True}


def _trained(seed: int, config=TINY):
    """A tiny GPTModel and its AdamW after one step (so the optimizer has state to save), from `seed`."""
    torch.manual_seed(seed)
    model = GPTModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, config["vocab_size"], (2, 8))
    model(x).sum().backward()
    optimizer.step()
    return model, optimizer


def _rng():
    return {"cpu": torch.get_rng_state(), "epoch_cpu": torch.get_rng_state()}


class Crash(BaseException):
    """A crash in the middle of a save (a BaseException, so that no `except Exception` in the code catches it)."""


def _crash_at(monkeypatch, when: int, torn: bool) -> None:
    """Count every disk operation (writes, renames, deletes, fsyncs) and raise Crash at operation number `when`.
    With `torn`, a write at that point first leaves half its file, as a crash in the middle of writing does."""
    count = [0]

    def wrap(owner, name, path_arg=None):
        real = getattr(owner, name)

        def operation(*args, **kwargs):
            count[0] += 1
            if count[0] == when:
                if torn and path_arg is not None:
                    real(*args, **kwargs)
                    path = Path(args[path_arg])
                    data = path.read_bytes()
                    with open(path, "wb") as f:
                        f.write(data[: len(data) // 2])
                raise Crash(f"operation {when}: {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, operation)

    wrap(safetensors.torch, "save_file", path_arg=1)
    wrap(torch, "save", path_arg=1)
    wrap(Path, "write_text", path_arg=0)
    wrap(Path, "write_bytes", path_arg=0)
    for owner, name in ((os, "replace"), (os, "rename"), (os, "remove"), (os, "unlink"), (os, "rmdir"), (os, "fsync"),
                        (Path, "rename"), (Path, "replace"), (Path, "unlink"), (Path, "rmdir"), (shutil, "rmtree")):
        wrap(owner, name)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("torn", [False, True], ids=["crash between operations", "crash in the middle of a write"])
def test_an_interrupted_save_leaves_the_previous_or_the_new_checkpoint(tmp_path, monkeypatch, torn):
    folder, pristine = tmp_path / "checkpoint", tmp_path / "pristine"
    old_model, old_optimizer = _trained(seed=0)
    save_checkpoint(pristine, old_model, old_optimizer, {"global_step": 1}, _rng())
    new_model, new_optimizer = _trained(seed=1)
    expected = {1: _weights(old_model), 2: _weights(new_model)}
    loaded_steps = []
    for when in range(1, 100):  # crash at the 1st disk operation of the save, then the 2nd, ... until it completes
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(pristine, folder)
        with monkeypatch.context() as patch:
            _crash_at(patch, when, torn)
            try:
                save_checkpoint(folder, new_model, new_optimizer, {"global_step": 2}, _rng())
                completed = True
            except Crash:
                completed = False
        model, optimizer = _trained(seed=2)  # a fresh process: other weights everywhere
        state, rng = load_checkpoint(folder, model, optimizer)  # must not raise: one complete checkpoint is there
        step = state["global_step"]
        assert all(torch.equal(v, expected[step][k]) for k, v in model.state_dict().items()), (when, step)
        assert optimizer.state_dict()["state"][0]["step"] == 1 and set(rng) == {"cpu", "epoch_cpu"}
        loaded_steps.append(step)
        save_checkpoint(folder, model, optimizer, {"global_step": 3}, rng)  # the next save cleans up after a crash
        assert sorted(p.name for p in folder.iterdir()) == ["model-step3.safetensors", "optimizer-step3.pt",
                                                            "rng-step3.safetensors", "state.json"]
        if completed:
            break
    assert completed and loaded_steps[-1] == 2
    assert loaded_steps.count(1) >= 5 and 1 in loaded_steps and loaded_steps[0] == 1  # crashes hit each write
    assert loaded_steps == sorted(loaded_steps)  # the previous checkpoint until one moment, the new one after it


def test_saving_the_same_step_twice_never_overwrites_the_live_files(tmp_path):
    model, optimizer = _trained(seed=0)
    save_checkpoint(tmp_path, model, optimizer, {"global_step": 5}, _rng())
    live = json.loads((tmp_path / "state.json").read_text())["files"]
    other, other_optimizer = _trained(seed=1)
    save_checkpoint(tmp_path, other, other_optimizer, {"global_step": 5}, _rng())
    again = json.loads((tmp_path / "state.json").read_text())["files"]
    assert set(again.values()).isdisjoint(live.values())  # new names, so the old files were never rewritten
    model, optimizer = _trained(seed=2)
    load_checkpoint(tmp_path, model, optimizer)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_the_old_layout_still_loads(tmp_path):
    model, optimizer = _trained(seed=0)
    save_checkpoint(tmp_path, model, optimizer, {"global_step": 1}, _rng())
    state = json.loads((tmp_path / "state.json").read_text())
    for key, name in {"model": "model.safetensors", "optimizer": "optimizer.pt", "rng": "rng.safetensors"}.items():
        (tmp_path / state["files"][key]).rename(tmp_path / name)  # the fixed names saves had before
    (tmp_path / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "files"}))
    fresh, fresh_optimizer = _trained(seed=1)
    assert load_checkpoint(tmp_path, fresh, fresh_optimizer)[0] == {"global_step": 1}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


# --- damaged checkpoints -------------------------------------------------------------------------------------

def _files(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())["files"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGE = [  # (id, what to do to a good checkpoint folder, the message; {folder} is the folder)
    ("no folder", lambda f: shutil.rmtree(f), "no complete checkpoint at {folder} (no state.json)"),
    ("model file missing", lambda f: (f / _files(f)["model"]).unlink(),
     "{folder}/model-step1.safetensors: no such file; the checkpoint is incomplete"),
    ("model file truncated", lambda f: _truncate(f / _files(f)["model"]),
     "{folder}/model-step1.safetensors is not a readable safetensors file"),
    ("rng file truncated", lambda f: _truncate(f / _files(f)["rng"]), "{folder}/rng-step1.safetensors is not a readable"),
    ("optimizer file truncated", lambda f: _truncate(f / _files(f)["optimizer"]),
     "{folder}/optimizer-step1.pt cannot be read"),
    ("a model of another size", lambda f: save_checkpoint(f, *_trained(0, {**TINY, "emb_dim": 64}), {"global_step": 1},
                                                          _rng()),
     "{folder}/model-step1-", ),
    ("an optimizer over other parameters", lambda f: save_checkpoint(
        f, _trained(0)[0], torch.optim.SGD(list(_trained(0)[0].parameters())[:2]), {"global_step": 1}, _rng()),
     "holds the state of an optimizer over other parameters"),
    ("state.json names no files", lambda f: (f / "state.json").write_text('{"files": 3}'),
     "{folder}/state.json, field 'files': a int, expected an object"),
]


@pytest.mark.parametrize(("damage", "message"), [(d, m) for _, d, m in DAMAGE], ids=[i for i, *_ in DAMAGE])
def test_a_damaged_checkpoint_is_named_and_changes_nothing(tmp_path, damage, message):
    folder = tmp_path / "checkpoint"
    save_checkpoint(folder, *_trained(seed=0), {"global_step": 1}, _rng())
    damage(folder)
    model, optimizer = _trained(seed=1)
    weights, moments = _weights(model), optimizer.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(CourseError) as info:
        load_checkpoint(folder, model, optimizer)
    assert message.format(folder=folder) in str(info.value)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # nothing loaded halfway
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], moments)


def test_another_models_checkpoint_names_the_mismatch(tmp_path):
    save_checkpoint(tmp_path, *_trained(0, {**TINY, "emb_dim": 64}), {"global_step": 1}, _rng())
    with pytest.raises(CourseError, match=r"does not fit this model: \d+ tensor\(s\) of another shape, first "
                                          r"tok_emb.weight \(64, 64\) where the model has \(64, 32\)"):
        load_checkpoint(tmp_path, *_trained(1))


@pytest.mark.parametrize(("state", "rng", "message"), [
    ({"global_step": 1, "tokens_seen": 0, "epoch": 0, "log": {}}, _rng(), "no field 'step_in_epoch'"),
    ({"global_step": "1", "tokens_seen": 0, "epoch": 0, "step_in_epoch": 0, "log": {}}, _rng(),
     "field 'global_step' is str '1', expected an integer"),
    ({"global_step": 1, "tokens_seen": 0, "epoch": 0, "step_in_epoch": 0}, _rng(), "no field 'log'"),
    ({"global_step": 1, "tokens_seen": 0, "epoch": 0, "step_in_epoch": 0, "log": {}}, {"cpu": torch.get_rng_state()},
     "random state lacks 'cpu' or 'epoch_cpu'"),
], ids=["a counter missing", "a counter of the wrong type", "no loss log", "no epoch random state"])
def test_a_resume_from_a_damaged_state_is_named(tmp_path, state, rng, message):
    save_checkpoint(tmp_path, *_trained(seed=0), state, rng)
    with pytest.raises(CourseError) as info:
        start_run(tmp_path, *_trained(seed=1), resume=True)
    assert f"{tmp_path / 'state.json'}" in str(info.value) and message in str(info.value)
