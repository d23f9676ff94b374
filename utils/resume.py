"""Checkpoints that resume a training run exactly (chapters 02, 04 and 05).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import torch

from utils.checks import check_field, check_int, check_tensors, load_safetensors, read_json
from utils.errors import CourseArgumentError, CourseError

#: The files of a checkpoint written before saves were atomic (one fixed name each).
_LEGACY_FILES = {"model": "model.safetensors", "optimizer": "optimizer.pt", "rng": "rng.safetensors"}
#: Every file a checkpoint folder may hold besides state.json: what a save may delete once its own are in place.
_CHECKPOINT_FILE = re.compile(r"(model|rng)(-[\w-]+)?\.safetensors|optimizer(-[\w-]+)?\.pt|state\.json\.[\w-]+\.tmp")


def _sync(path: Path) -> None:
    """Flush a file (or a folder's list of names) to the disk: a power cut cannot then leave it half written."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are written through anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder, model, optimizer, state: dict, rng: dict[str, torch.Tensor]) -> Path:
    """Write model weights (safetensors), optimizer state (a tensors-only torch file, read back with
    weights_only=True), RNG states (safetensors) and the loop's counters (JSON) into `folder`, atomically.

    The new files get names of their own (model-step<N>.safetensors, ...) beside the previous checkpoint's. Once
    they are complete on disk, state.json, which names them, is replaced in one step (os.replace); only then are
    the previous checkpoint's files deleted. So at every moment state.json names one complete checkpoint: the
    previous one until the replace, the new one after it. A crash leaves at most some unnamed files behind, which
    the next save deletes."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"step{state.get('global_step', 0)}"
    if any(folder.glob(f"*-{tag}.*")):  # in use (by the live checkpoint, or left by a crash): never overwrite it
        tag += f"-{uuid.uuid4().hex[:6]}"
    files = {"model": f"model-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt", "rng": f"rng-{tag}.safetensors"}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / files["model"]))
    torch.save(optimizer.state_dict(), folder / files["optimizer"])
    save_file({k: v.clone() for k, v in rng.items()}, str(folder / files["rng"]))
    pending = folder / f"state.json.{tag}.tmp"
    pending.write_text(json.dumps({**state, "files": files}, indent=1), encoding="utf-8")
    for name in (*files.values(), pending.name):
        _sync(folder / name)
    os.replace(pending, folder / "state.json")  # the commit: one atomic rename names the new checkpoint
    _sync(folder)
    for path in folder.iterdir():  # the previous checkpoint's files, and any an interrupted save left behind
        if path.name not in files.values() and _CHECKPOINT_FILE.fullmatch(path.name):
            path.unlink(missing_ok=True)
    return folder


def load_checkpoint(folder, model, optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model and optimizer in place from `save_checkpoint`'s folder; return (state, rng).

    Every file is read and checked against the model and the optimizer before either changes: a missing,
    truncated or mismatched file is a CourseError naming it, and leaves both as they were."""
    folder = Path(folder)
    manifest = folder / "state.json"
    if not manifest.is_file():
        raise CourseError(f"no complete checkpoint at {folder} (no state.json); start without resume=True or pick "
                          "another folder")
    state = read_json(manifest)
    if not isinstance(state, dict):
        raise CourseError(f"{manifest}: expected a JSON object of the run's counters, got a {type(state).__name__}; "
                          "the checkpoint is damaged: start without resume=True")
    files = state.pop("files", _LEGACY_FILES)
    for key in _LEGACY_FILES:
        check_field(files, key, f"{manifest}, field 'files'", fix="the checkpoint is damaged: start without resume=True")
    weights = load_safetensors(folder / files["model"])
    rng = load_safetensors(folder / files["rng"])
    check_tensors(weights, model.state_dict(), str(folder / files["model"]))
    optimizer_file = folder / files["optimizer"]
    try:
        optimizer_state = torch.load(optimizer_file, weights_only=True)
    except Exception as exc:  # missing, truncated, or not a tensors-only torch file
        raise CourseError(f"{optimizer_file} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the checkpoint "
                          "is damaged: start without resume=True") from None
    groups = optimizer_state.get("param_groups") if isinstance(optimizer_state, dict) else None
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in optimizer.param_groups]:
        raise CourseError(f"{optimizer_file} holds the state of an optimizer over other parameters than this one's; "
                          "resume with the optimizer built as in the run that saved it (same parameters and groups)")
    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    return state, rng


def rng_state() -> dict[str, torch.Tensor]:
    """torch's random state (CPU, and every CUDA device): dropout masks and the loaders' shuffles come from it."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def start_run(checkpoint_dir, model, optimizer, resume: bool) -> tuple[dict, dict]:
    """A fresh run's counters and loss log, or those of the checkpoint in `checkpoint_dir` (model and optimizer
    restored in place) when `resume` is true."""
    log = {"train_losses": [], "val_losses": [], "tokens_seen": [], "steps": []}
    run = {"global_step": 0, "tokens_seen": 0, "epoch": 0, "step_in_epoch": 0}
    if resume:
        saved, rng = load_checkpoint(checkpoint_dir, model, optimizer)
        where = f"{Path(checkpoint_dir) / 'state.json'}"
        for key in run:
            if check_field(saved, key, where, kind=int, fix="the checkpoint is damaged: start without resume=True") < 0:
                raise CourseError(f"{where}: field {key!r} is {saved[key]}; the checkpoint is damaged")
        check_field(saved, "log", where, kind=dict, nonempty=False, fix="the checkpoint is damaged: start without resume=True")
        if not {"cpu", "epoch_cpu"} <= rng.keys():
            raise CourseError(f"{where}: the checkpoint's random state lacks 'cpu' or 'epoch_cpu'; it is damaged: start "
                              "without resume=True")
        log = saved.pop("log")
        run.update(saved)
        run["epoch_rng"] = {k.removeprefix("epoch_"): v for k, v in rng.items() if k.startswith("epoch_")}
        run["resume_rng"] = {k: v for k, v in rng.items() if not k.startswith("epoch_")}
    return log, run


def epoch_batches(train_loader, run: dict, epoch: int):
    """The epoch's batch iterator and the index of its first batch. After a resume, the interrupted epoch's shuffle
    is replayed from its saved random state, the batches it had done are skipped, and the random state the run
    stopped with is restored: the run continues exactly as if it had never stopped."""
    resume_rng = run.pop("resume_rng", None) if epoch == run["epoch"] else None
    if resume_rng is not None:
        set_rng_state(run["epoch_rng"])
    run["epoch_rng"] = rng_state()  # what a checkpoint in this epoch needs to replay its shuffle
    batches = iter(train_loader)
    first = run["step_in_epoch"] if resume_rng is not None else 0
    for _ in range(first):
        next(batches)
    if first > 0:  # (at an epoch's start the two states are the same, and iter() has drawn from it since)
        set_rng_state(resume_rng)
    return batches, first


def save_training_checkpoint(folder, model, optimizer, run: dict, log: dict, epoch: int, step_in_epoch: int,
                             batches_per_epoch: int) -> Path:
    """Checkpoint the run after batch `step_in_epoch` of `epoch` (see `save_checkpoint` for the files)."""
    done = step_in_epoch + 1 == batches_per_epoch  # an epoch's last batch: resume starts the next epoch
    state = {"global_step": run["global_step"], "tokens_seen": run["tokens_seen"], "log": log,
             "epoch": epoch + 1 if done else epoch, "step_in_epoch": 0 if done else step_in_epoch + 1}
    now = rng_state()
    epoch_rng = now if done else run["epoch_rng"]
    rng = {**now, **{f"epoch_{k}": v for k, v in epoch_rng.items()}}
    return save_checkpoint(folder, model, optimizer, state, rng)


def check_loop_args(train_loader, num_epochs, eval_freq, eval_iter, checkpoint_dir=None, checkpoint_every=None,
                    resume=False, stop_after_steps=None) -> None:
    """A training loop's arguments, checked before its first step (CourseArgumentError naming the argument): a
    frequency of 0 would divide by zero only after an optimizer step had already changed the model."""
    check_int("num_epochs", num_epochs, minimum=1)
    check_int("eval_freq", eval_freq, minimum=1, hint="the loop evaluates every eval_freq optimizer steps")
    check_int("eval_iter", eval_iter, minimum=1, optional=True, hint="batches per evaluation, None for all")
    check_int("checkpoint_every", checkpoint_every, minimum=1, optional=True)
    check_int("stop_after_steps", stop_after_steps, minimum=1, optional=True)
    if checkpoint_dir is None and (resume or checkpoint_every):
        raise CourseArgumentError(f"{sys._getframe(1).f_code.co_name}(): resume=True and checkpoint_every need a "
                                  "checkpoint_dir to read and write")
    if len(train_loader) == 0:
        raise CourseError("the training loader has no batches (fewer records than batch_size, with drop_last=True?): "
                          "nothing to train on; lower the batch size or use more data")


def save_training_state(folder: str | os.PathLike, model, optimizer, scaler, state: dict, best_adapter: dict) -> Path:
    """Save what resuming needs into `folder` (replacing it only once everything is written); return the folder."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = get_peft_model_state_dict(model)
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in best_adapter.items()}, str(tmp / "best_adapter.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    old = _previous(folder)
    if folder.exists():  # complete (it only ever appears by a rename): the save before it is not needed any more
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)  # from here until the next rename, saved_state() finds this epoch under .old
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _previous(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def saved_state(folder: str | os.PathLike) -> Path | None:
    """The folder holding the last complete save at `folder` (or the epoch before it, if a crash interrupted the
    swap of the two), or None when nothing was saved there."""
    folder = Path(folder)
    return next((f for f in (folder, _previous(folder)) if (f / "state.json").is_file()), None)


def load_training_state(folder: str | os.PathLike, model, optimizer, scaler) -> tuple[dict, dict]:
    """Restore the adapter, optimizer and GradScaler saved by `save_training_state`; return (state, best adapter)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = saved_state(folder)
    if found is None:
        raise CourseError(f"{folder} holds no saved epoch (no state.json): nothing to resume from")
    folder = found
    set_peft_model_state_dict(model, load_file(str(folder / "adapter.safetensors"), device=str(model.device)))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location=model.device))
    scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    best = load_file(str(folder / "best_adapter.safetensors"))
    return json.loads((folder / "state.json").read_text(encoding="utf-8")), best
