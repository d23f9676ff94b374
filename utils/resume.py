"""Checkpoints that resume a training run exactly (chapters 02, 04 and 05): one dict, saved as one file.

A checkpoint is the dict a loop writes out, as nanoGPT's is ({"model": model.state_dict(), "step": 7, ...}), stored
as one safetensors file: each tensor in it, at any depth, under its path of keys ("optimizer/state/0/exp_avg"), and
the rest as JSON in the file's header, {"__tensor__": name} marking each tensor's place. Loading runs no pickle.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from utils.checks import check_field, check_flag, check_folder, check_int, check_tensors
from utils.errors import CourseArgumentError, CourseError

_MARKS = ("__tensor__", "__tuple__", "__items__")


def _encode(value, path: tuple, tensors: dict):
    """`value` as JSON, each tensor moved into `tensors` under its key path and marked {"__tensor__": name}; tuples
    and dicts whose keys JSON cannot hold (AdamW's state has int keys) are marked too, so they come back as they were."""
    if isinstance(value, torch.Tensor):
        name = "/".join(map(str, path))
        name = name if name not in tensors else f"{name}#{len(tensors)}"  # ("a/b",) and ("a", "b") both exist
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _MARKS for k in value):
            return {k: _encode(v, (*path, k), tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, path, {}), _encode(v, (*path, k), tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_encode(v, (*path, i), tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, bool | int | float | str):
        return value  # (json writes floats exactly, inf and nan as Infinity and NaN, and reads them back)
    raise CourseArgumentError(f"save_checkpoint(): checkpoint{''.join(f'[{k!r}]' for k in path)} is a "
                              f"{type(value).__name__}; it can hold tensors, numbers, text, None, lists, tuples, dicts")


def _unmarker(tensors: dict):
    """json.loads' object_hook, called on every object, innermost first: a marked object back as it was."""
    unmark = {"__tensor__": tensors.__getitem__, "__tuple__": tuple, "__items__": dict}

    def hook(obj: dict):
        mark = next(iter(obj), None)
        return unmark[mark](obj[mark]) if len(obj) == 1 and mark in unmark else obj
    return hook


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> Path:
    """Write `checkpoint` to `path` (.safetensors) atomically: a crash leaves the previous one or the new one, whole."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    header = json.dumps(_encode(checkpoint, (), tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    pending = path.with_name(path.name + ".tmp")  # a crash leaves at most this, which the next save overwrites
    save_file(tensors, str(pending), metadata={"checkpoint": header})
    with open(pending, "rb") as file:
        os.fsync(file.fileno())  # on the disk before it takes the checkpoint's name
    os.replace(pending, path)  # the commit: one atomic rename (a power cut before the folder reaches the disk
    return path  # can only undo it: the previous checkpoint, complete, is back)


def load_checkpoint(path: str | os.PathLike, like: dict | None = None) -> dict:
    """The dict `save_checkpoint` wrote to `path`. `like` maps entries to what they must fit (a state_dict(), an
    optimizer's state_dict()): a missing, damaged or foreign file, or one that does not fit, is a CourseError."""
    from safetensors import SafetensorError, safe_open

    path, fix = Path(path), "start without resume=True, or resume from a checkpoint this loop saved"
    if not path.is_file():
        raise CourseError(f"no complete checkpoint at {path}; {fix}")
    try:  # a save or copy that did not finish, another kind of file (model weights?), a damaged header
        with safe_open(str(path), "pt") as file:
            header = (file.metadata() or {})["checkpoint"]
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (not a dict)
        checkpoint = json.loads(header, object_hook=_unmarker(tensors))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise CourseError(f"{path} is not a checkpoint that save_checkpoint wrote ({type(exc).__name__}: {exc}); "
                          f"{fix}") from None
    for key, expected in (like or {}).items():
        saved = check_field(checkpoint, key, str(path), kind=dict, nonempty=False, fix=fix)
        if "param_groups" in expected:  # an optimizer: the same groups of the same sizes
            sizes = [len(g["params"]) for g in expected["param_groups"]]
            if [len(g["params"]) for g in saved.get("param_groups", [])] != sizes:
                raise CourseError(f"{path}: {key!r} is the state of an optimizer over other parameters than this one's "
                                  f"(groups of {sizes} parameters); build the optimizer as the run that saved it did")
        else:
            check_tensors(saved, expected, f"{path} (entry {key!r})")
    return checkpoint


def rng_state() -> dict[str, torch.Tensor]:
    """torch's random state (CPU, and every CUDA device): dropout masks and the loaders' shuffles come from it."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[f"cuda{i}"] for i in range(sum(k.startswith("cuda") for k in state))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def begin_epoch(train_loader, checkpoint: dict | None = None):
    """(torch's random state as the epoch begins, its batches numbered from 0). Given the checkpoint of a run that
    stopped in this epoch: its shuffle again, from the state it began with, without the checkpoint["batches_done"]
    batches done, then the random state the run stopped with; it continues as if it had never stopped."""
    if checkpoint is None:
        return rng_state(), enumerate(train_loader)
    set_rng_state(checkpoint["epoch_rng"])
    batches = iter(train_loader)  # (a shuffling loader draws from the random state here and at its first batch)
    for _ in range(checkpoint["batches_done"]):
        next(batches)
    if checkpoint["batches_done"]:
        set_rng_state(checkpoint["rng"])
    return checkpoint["epoch_rng"], enumerate(batches, start=checkpoint["batches_done"])


def check_loop_args(train_loader, num_epochs, eval_freq, eval_iter, checkpoint_dir=None, checkpoint_every=None,
                    resume=False, stop_after_steps=None) -> None:
    """A training loop's arguments, checked before its first step (CourseArgumentError naming the argument): a
    frequency of 0 would divide by zero only after an optimizer step had already changed the model."""
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("eval_freq", eval_freq, minimum=1, hint="the loop evaluates every eval_freq optimizer steps")
    check_int("eval_iter", eval_iter, minimum=1, optional=True, hint="batches per evaluation, None for all")
    check_int("checkpoint_every", checkpoint_every, minimum=1, optional=True)
    check_int("stop_after_steps", stop_after_steps, minimum=1, optional=True)
    check_flag("resume", resume)  # the string "False" is refused, not taken as true
    if checkpoint_dir is not None:  # a file there would fail only at the first save, after the steps before it
        check_folder("checkpoint_dir", checkpoint_dir)
    if checkpoint_dir is None and (resume or checkpoint_every):
        raise CourseArgumentError(f"{sys._getframe(1).f_code.co_name}(): resume=True and checkpoint_every need a "
                                  "checkpoint_dir to read and write")
    if len(train_loader) == 0:
        raise CourseError("the training loader has no batches (fewer records than batch_size, with drop_last=True?): "
                          "nothing to train on; lower the batch size or use more data")
