"""Chapter 05: the training function with warmup, cosine decay and clipping, and the errata of circulating versions
as tests: the rate the optimizer really applies, the warmup count, where clipping starts; a non-finite loss,
exact resume from a mid-run checkpoint, and bad parameters rejected before any training."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tools.nbexport import load
from utils.errors import CourseError
from utils.lessons.gpt import GPTModel

CH05 = load("05-lr-schedules/01_warmup_cosine_clipping.ipynb")  # the chapter's code, from its notebook
lr_at_step = CH05.lr_at_step
train_with_schedule = CH05.train_with_schedule


CFG = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1,
       "qkv_bias": False}
LRS = {"peak_lr": 0.01, "initial_lr": 1e-4, "min_lr": 1e-5}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def loaders(n_windows=11, batch_size=2, seed=0):
    """Random token windows: `n_windows` // `batch_size` training batches (drop_last), shuffled."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG["vocab_size"], (n_windows, CFG["context_length"] + 1), generator=g)
    ds = TensorDataset(ids[:, :-1], ids[:, 1:])
    return (DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False))


def model_and_optimizer(seed=123, **optimizer_kwargs):
    torch.manual_seed(seed)
    model = GPTModel(CFG)
    return model, torch.optim.AdamW(model.parameters(), weight_decay=0.1, **optimizer_kwargs)


def schedule_of(log):
    s = log["schedule"]
    return [lr_at_step(step, total_steps=s["total_steps"], warmup_steps=s["warmup_steps"], initial_lr=s["initial_lr"],
                       peak_lr=s["peak_lr"], min_lr=s["min_lr"]) for step in range(s["total_steps"])]


def test_the_optimizer_applies_the_schedules_rate_at_every_step():
    """Erratum: a version read the peak from an optimizer built without lr=, so AdamW's default 1e-3 leaked in.
    Here the optimizer is built with the default, and with two parameter groups; what its step() sees is recorded
    by a hook, independently of the training function's own log."""
    train, val = loaders()
    torch.manual_seed(123)
    model = GPTModel(CFG)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}])
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the library default, which must not leak into training
    applied = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: applied.append([g["lr"] for g in opt.param_groups]))
    log = train_with_schedule(model, train, val, optimizer, "cpu", 4, 100, 1, **LRS)
    expected = schedule_of(log)
    assert len(applied) == len(expected) == log["schedule"]["total_steps"] == 20
    for step, (groups, want) in enumerate(zip(applied, expected, strict=True)):
        assert groups == [want, want], f"step {step}"
    assert log["lrs"] == expected
    assert max(log["lrs"]) == LRS["peak_lr"] and 1e-3 not in log["lrs"]


def test_warmup_count_comes_from_the_real_number_of_batches_and_epochs():
    """11 windows in batches of 2 with drop_last are 5 batches, not 5.5: 3 epochs are 15 steps, 3 of them warmup."""
    train, val = loaders(n_windows=11, batch_size=2)
    assert len(train) == 5
    model, optimizer = model_and_optimizer()
    log = train_with_schedule(model, train, val, optimizer, "cpu", 3, 100, 1, warmup_fraction=0.2, **LRS)
    assert log["schedule"]["total_steps"] == 15 and log["schedule"]["warmup_steps"] == 3
    assert len(log["lrs"]) == len(log["step_losses"]) == len(log["grad_norms"]) == 15
    assert log["lrs"][0] == LRS["initial_lr"] and log["lrs"][3] == LRS["peak_lr"]
    assert log["lrs"].index(max(log["lrs"])) == 3
    assert log["lrs"][:4] == sorted(log["lrs"][:4]) and log["lrs"][3:] == sorted(log["lrs"][3:], reverse=True)
    assert log["steps"][-1] == 15  # a final evaluation after the last step


def test_clipping_starts_at_the_step_equal_to_warmup_steps():
    """Erratum: `global_step > warmup_steps` skipped clipping on the first step at the peak rate. The gradient norm
    the optimizer steps with (seen by a hook) is above max_norm before warmup_steps and at most max_norm from it on."""
    train, val = loaders(n_windows=11, batch_size=2)
    model, optimizer = model_and_optimizer()
    max_norm = 1e-3  # far below these gradients' norms, so clipping always binds when it is on
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        torch.nn.utils.get_total_norm([p.grad for g in opt.param_groups for p in g["params"]]).item()))
    log = train_with_schedule(model, train, val, optimizer, "cpu", 3, 100, 1, warmup_fraction=0.2,
                              max_norm=max_norm, **LRS)
    warmup = log["schedule"]["warmup_steps"]
    assert warmup == 3
    assert log["clipped"] == [step >= warmup for step in range(15)]
    assert not log["clipped"][warmup - 1] and log["clipped"][warmup]
    for step in range(warmup):  # not clipped: the optimizer sees the full gradient
        assert seen[step] == pytest.approx(log["grad_norms"][step], rel=1e-5) and seen[step] > 10 * max_norm
    for step in range(warmup, 15):  # clipped, the step equal to warmup_steps included
        assert seen[step] <= max_norm * (1 + 1e-4) and log["grad_norms"][step] > 10 * max_norm


def test_no_clipping_when_max_norm_is_none():
    train, val = loaders()
    model, optimizer = model_and_optimizer()
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        torch.nn.utils.get_total_norm([p.grad for g in opt.param_groups for p in g["params"]]).item()))
    log = train_with_schedule(model, train, val, optimizer, "cpu", 2, 100, 1, max_norm=None, **LRS)
    assert not any(log["clipped"])
    assert seen == pytest.approx(log["grad_norms"], rel=1e-5)


def test_loss_falls():
    train, val = loaders(n_windows=8, batch_size=2)
    model, optimizer = model_and_optimizer()
    log = train_with_schedule(model, train, val, optimizer, "cpu", 15, 5, 4, **LRS)
    assert log["train_losses"][-1] < log["train_losses"][0] - 0.5


def test_non_finite_loss_stops_with_the_step_and_the_last_rate():
    train, val = loaders()
    model, optimizer = model_and_optimizer()
    with pytest.raises(CourseError, match="training loss is nan at step") as info:
        train_with_schedule(model, train, val, optimizer, "cpu", 4, 100, 1, peak_lr=1e10, initial_lr=1e6,
                            min_lr=1e6, warmup_fraction=0.5)
    message = str(info.value)
    step = int(re.search(r"at step (\d+)", message).group(1))
    assert step >= 1
    last = lr_at_step(step - 1, total_steps=20, warmup_steps=10, initial_lr=1e6, peak_lr=1e10, min_lr=1e6)
    assert f"The last learning rate applied was {last:.4g} (update {step - 1})" in message
    assert "lower peak_lr" in message


def test_non_finite_loss_at_the_first_step_says_no_rate_was_applied():
    train, val = loaders()
    model, optimizer = model_and_optimizer()
    with torch.no_grad():
        model.out_head.weight.fill_(float("inf"))
    with pytest.raises(CourseError, match=r"at step 0: .*none yet"):
        train_with_schedule(model, train, val, optimizer, "cpu", 2, 100, 1, **LRS)


@pytest.mark.parametrize("stop_at", [7, 10])  # mid-epoch (5 batches per epoch) and at an epoch's end
def test_resume_from_a_mid_run_checkpoint_gives_the_same_weights(tmp_path, stop_at):
    """Model, optimizer, schedule position and RNG (dropout masks, the shuffle of the interrupted epoch) all come
    back: the resumed run ends with bit-identical weights and the same per-step log as an uninterrupted one."""
    train, val = loaders(n_windows=11, batch_size=2)
    kwargs = {"warmup_fraction": 0.2, "max_norm": 0.5, **LRS}
    model, optimizer = model_and_optimizer()
    full = train_with_schedule(model, train, val, optimizer, "cpu", 4, 3, 1, **kwargs)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer = model_and_optimizer()
    part = train_with_schedule(model, train, val, optimizer, "cpu", 4, 3, 1, checkpoint_dir=tmp_path / "ckpt",
                               stop_after_steps=stop_at, **kwargs)
    assert len(part["lrs"]) == stop_at
    torch.rand(100)  # the interrupted process's random state moves on; the checkpoint's must win

    model, optimizer = model_and_optimizer(seed=999)  # other weights: everything must come from the checkpoint
    resumed = train_with_schedule(model, train, val, optimizer, "cpu", 4, 3, 1, checkpoint_dir=tmp_path / "ckpt",
                                  resume=True, **kwargs)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    for key in ("lrs", "step_losses", "grad_norms", "clipped", "train_losses", "val_losses", "steps"):
        assert resumed[key] == full[key], key


def test_resume_with_another_schedule_is_refused(tmp_path):
    train, val = loaders()
    model, optimizer = model_and_optimizer()
    train_with_schedule(model, train, val, optimizer, "cpu", 4, 100, 1, checkpoint_dir=tmp_path / "c",
                        stop_after_steps=6, **LRS)
    with pytest.raises(ValueError, match="differs from this call's"):
        train_with_schedule(model, train, val, optimizer, "cpu", 4, 100, 1, checkpoint_dir=tmp_path / "c",
                            resume=True, **{**LRS, "peak_lr": 0.02})


class UntouchableLoader:
    """A loader with 5 batches whose iteration fails: proves that validation happens before any training."""

    def __len__(self):
        return 5

    def __iter__(self):
        raise AssertionError("training started despite bad parameters")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"peak_lr": 1e-4, "initial_lr": 1e-3}, "below initial_lr"),
    ({"peak_lr": 1e-4, "min_lr": 1e-3}, "below min_lr"),
    ({"warmup_fraction": 1.5}, r"warmup_fraction must be a finite number >= 0 and <= 1, got 1.5"),
    ({"warmup_fraction": -0.2}, r"warmup_fraction must be a finite number >= 0 and <= 1, got -0.2"),
    ({"initial_lr": -1e-4}, "initial_lr must be a finite number >= 0"),
    ({"min_lr": -1.0}, "min_lr must be a finite number >= 0"),
    ({"peak_lr": -0.01, "initial_lr": 0.0, "min_lr": 0.0}, "peak_lr must be a finite number > 0, got -0.01"),
    ({"max_norm": 0.0}, r"max_norm must be a finite number > 0 \(or None\), got 0.0; None: no clipping"),
    ({"max_norm": -1.0}, r"max_norm must be a finite number > 0 \(or None\), got -1.0"),
    ({"num_epochs": 0}, r"train_with_schedule\(\): num_epochs must be an integer >= 1, got 0"),
])
def test_bad_parameters_raise_before_training(kwargs, message):
    model, optimizer = model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"num_epochs": 3, **LRS, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_with_schedule(model, UntouchableLoader(), UntouchableLoader(), optimizer, "cpu",
                            args.pop("num_epochs"), 5, 1, **args)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not optimizer.state  # no step was taken
