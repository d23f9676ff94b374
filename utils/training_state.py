"""Chapter 02's checkpoint files: what resuming a LoRA run needs, saved after every epoch and read back.

The notebook's training cell shows the resume itself (load, restore the random state, continue after the saved
epoch); this module only writes and reads the files: the adapter and the best adapter so far (safetensors), the
optimizer and GradScaler state (tensors-only torch files, read back with weights_only=True) and the loop's counters
and history (JSON), written into a temporary folder and renamed, so a crash never leaves a half-written epoch
and never loses the last complete one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from utils.errors import CourseError


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
