"""Chapter 05: the pure learning-rate schedule, the step counts, gradient clipping, and the sliding-window data."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from tools.nbexport import load
from utils.smoke import fixture_path, tiny_checkpoint

CH05 = load("05-lr-schedules/01_warmup_cosine_clipping.ipynb")  # the chapter's code, from its notebook
GPTDatasetV1 = CH05.GPTDatasetV1
clips_at = CH05.clips_at
count_steps = CH05.count_steps
create_dataloader_v1 = CH05.create_dataloader_v1
grad_global_norm = CH05.grad_global_norm
lr_at_step = CH05.lr_at_step
check_schedule = CH05.check_schedule

SOURCE = {"initial_lr": 1e-4, "peak_lr": 0.01, "min_lr": 1e-5}  # the source's warmup demo (min = 0.1 * initial)


def curve(total_steps, warmup_steps, **lrs):
    return [lr_at_step(s, total_steps=total_steps, warmup_steps=warmup_steps, **lrs) for s in range(total_steps + 1)]


@pytest.mark.parametrize(("total_steps", "warmup_steps"), [(135, 27), (10, 3), (7, 1), (2, 1)])
def test_endpoints(total_steps, warmup_steps):
    lrs = curve(total_steps, warmup_steps, **SOURCE)
    assert lrs[0] == SOURCE["initial_lr"]
    assert lrs[warmup_steps] == SOURCE["peak_lr"]
    assert lrs[total_steps] == pytest.approx(SOURCE["min_lr"], rel=1e-12)
    assert max(lrs) == SOURCE["peak_lr"] and min(lrs) == pytest.approx(SOURCE["min_lr"], rel=1e-12)


def test_warmup_is_linear_and_increasing_then_decay_decreasing():
    total, warmup = 135, 27
    lrs = curve(total, warmup, **SOURCE)
    up, down = lrs[:warmup + 1], lrs[warmup:]
    assert all(b > a for a, b in zip(up, up[1:], strict=False))
    assert all(b < a for a, b in zip(down, down[1:], strict=False))
    increments = [b - a for a, b in zip(up, up[1:], strict=False)]
    assert max(increments) - min(increments) < 1e-15  # equal steps: linear
    assert increments[0] == pytest.approx((SOURCE["peak_lr"] - SOURCE["initial_lr"]) / warmup)
    # the cosine's midpoint: halfway through the decay the rate is halfway between peak and min
    mid = warmup + (total - warmup) // 2
    assert (total - warmup) % 2 == 0 and lrs[mid] == pytest.approx((SOURCE["peak_lr"] + SOURCE["min_lr"]) / 2)


def test_no_warmup_starts_at_the_peak():
    lrs = curve(20, 0, **SOURCE)
    assert lrs[0] == SOURCE["peak_lr"]
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(SOURCE["min_lr"], rel=1e-12)


def test_warmup_over_all_steps_never_decays():
    lrs = curve(20, 20, **SOURCE)
    assert lrs[0] == SOURCE["initial_lr"] and lrs[-1] == SOURCE["peak_lr"]
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))


def test_constant_schedule_when_all_rates_are_equal():
    assert set(curve(12, 0, initial_lr=3e-4, peak_lr=3e-4, min_lr=3e-4)) == {3e-4}


@pytest.mark.parametrize(("total_steps", "warmup_steps"), [(135, 27), (100, 0), (50, 50), (9, 4), (1, 0), (1, 1)])
def test_equals_transformers_cosine_schedule(total_steps, warmup_steps):
    """With initial_lr = min_lr = 0, the same curve as transformers' LambdaLR, step for step (0 .. total_steps)."""
    peak = 3e-3
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    theirs = []
    for _ in range(total_steps + 1):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = curve(total_steps, warmup_steps, initial_lr=0.0, peak_lr=peak, min_lr=0.0)
    assert len(ours) == len(theirs) == total_steps + 1
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert abs(a - b) <= 1e-9, f"step {step}: ours {a}, transformers {b}"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"initial_lr": 0.02}, "below initial_lr"),
    ({"min_lr": 0.02}, "below min_lr"),
    ({"warmup_steps": 11}, r"warmup_steps must be an integer >= 0 and <= 10, got 11"),
    ({"warmup_steps": -1}, r"warmup_steps must be an integer >= 0 and <= 10, got -1"),
    ({"total_steps": 0, "warmup_steps": 0}, r"total_steps must be an integer >= 1, got 0"),
    ({"total_steps": -5, "warmup_steps": 0}, r"total_steps must be an integer >= 1, got -5"),
    ({"initial_lr": -1e-4}, "initial_lr must be a finite number >= 0"),
    ({"min_lr": -1e-5}, "min_lr must be a finite number >= 0"),
    ({"peak_lr": -0.01, "initial_lr": 0.0, "min_lr": 0.0}, "peak_lr must be a finite number > 0, got -0.01"),
    ({"peak_lr": 0.0, "initial_lr": 0.0, "min_lr": 0.0}, "peak_lr must be a finite number > 0, got 0.0"),
    ({"peak_lr": math.nan}, "peak_lr must be a finite number"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an integer"),
])
def test_bad_parameters_raise_value_error(kwargs, message):
    args = {"total_steps": 10, "warmup_steps": 2, **SOURCE, **kwargs}
    with pytest.raises(ValueError, match=message):
        check_schedule(**args)
    with pytest.raises(ValueError, match=message):
        lr_at_step(0, **args)


@pytest.mark.parametrize("step", [-1, 11])
def test_step_outside_the_schedule_raises(step):
    with pytest.raises(ValueError, match=rf"step must be an integer >= 0 and <= 10, got {step}"):
        lr_at_step(step, total_steps=10, warmup_steps=2, **SOURCE)


def test_count_steps_from_real_batches():
    assert count_steps(9, 15, 0.2) == (135, 27)  # the source: 9 batches of The Verdict, 15 epochs, 20% warmup
    assert count_steps(5, 3, 0.2) == (15, 3)
    assert count_steps(100, 1, 0.29) == (100, 29)  # 0.29 * 100 is 28.999... in floating point
    assert count_steps(4, 2, 0.0) == (8, 0) and count_steps(4, 2, 1.0) == (8, 8)
    with pytest.raises(ValueError, match="no batches"):
        count_steps(0, 3, 0.2)
    with pytest.raises(ValueError, match="num_epochs"):
        count_steps(5, 0, 0.2)
    with pytest.raises(ValueError, match=r"warmup_fraction must be a finite number >= 0 and <= 1, got 1.5"):
        count_steps(5, 3, 1.5)
    with pytest.raises(ValueError, match="warmup_fraction"):
        count_steps(5, 3, -0.1)


def test_clipping_starts_at_the_step_equal_to_warmup_steps():
    assert [clips_at(s, 3, 1.0) for s in range(6)] == [False, False, False, True, True, True]
    assert clips_at(0, 0, 1.0)  # no warmup: clip from the first update
    assert not any(clips_at(s, 3, None) for s in range(6))  # max_norm None: never


def _model_with_gradients(scale):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    loss = scale * model(torch.randn(32, 8)).pow(2).sum()
    loss.backward()
    return model


def test_global_norm_is_the_norm_of_all_gradients_concatenated():
    model = _model_with_gradients(1.0)
    flat = torch.cat([p.grad.flatten() for p in model.parameters()])
    norm = grad_global_norm(model.parameters())
    assert norm.item() == pytest.approx(flat.norm().item(), rel=1e-6)
    assert norm.item() == pytest.approx(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item(),
                                        rel=1e-6)


def test_clipping_to_max_norm_one():
    model = _model_with_gradients(100.0)
    before = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    assert grad_global_norm(model.parameters()).item() > 10
    returned = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert returned.item() == pytest.approx(before.norm().item(), rel=1e-6)  # it returns the norm before clipping
    assert grad_global_norm(model.parameters()).item() == pytest.approx(1.0, rel=1e-5)
    assert torch.nn.functional.cosine_similarity(before, after, dim=0).item() == pytest.approx(1.0, abs=1e-6)
    # gradients already inside the ball are left alone
    small = _model_with_gradients(1e-4)
    grads = [p.grad.clone() for p in small.parameters()]
    assert grad_global_norm(small.parameters()).item() < 1.0
    torch.nn.utils.clip_grad_norm_(small.parameters(), max_norm=1.0)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, small.parameters(), strict=True))


class CharTokenizer:
    """One token per character (its code point): windows are easy to check by eye."""

    def encode(self, text):
        return [ord(c) for c in text]


def test_sliding_windows_and_shifted_targets():
    text = "abcdefghijklmnopqrstuvwxyz"  # 26 tokens
    ds = GPTDatasetV1(text, CharTokenizer(), max_length=4, stride=3)
    assert len(ds) == len(range(0, 26 - 4, 3)) == 8
    x, y = ds[1]
    assert x.tolist() == [ord(c) for c in "defg"] and y.tolist() == [ord(c) for c in "efgh"]
    for x, y in (ds[i] for i in range(len(ds))):
        assert torch.equal(x[1:], y[:-1])


def test_loader_batches_shuffle_and_drop_last():
    text = "".join(chr(65 + i % 50) for i in range(101))  # 101 tokens, 25 windows of 4 with stride 4
    loader = create_dataloader_v1(text, batch_size=4, max_length=4, stride=4, shuffle=False, drop_last=True,
                                  num_workers=0, tokenizer=CharTokenizer())
    assert len(loader.dataset) == 25 and len(loader) == 6  # 25 // 4: the last, short batch is dropped
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 4)
    keep = create_dataloader_v1(text, batch_size=4, max_length=4, stride=4, shuffle=False, drop_last=False,
                                tokenizer=CharTokenizer())
    assert len(keep) == 7


def test_too_short_text_raises_a_clear_error():
    with pytest.raises(ValueError, match="needs at least 9"):
        GPTDatasetV1("abcdefgh", CharTokenizer(), max_length=8, stride=8)
    with pytest.raises(ValueError, match="loader would be empty"):
        create_dataloader_v1("abcdefghijkl", batch_size=4, max_length=4, stride=4, tokenizer=CharTokenizer())
    with pytest.raises(ValueError, match=r"GPTDatasetV1.__init__\(\): stride must be an integer >= 1, got 0"):
        GPTDatasetV1("abcdefghijkl", CharTokenizer(), max_length=4, stride=0)


def test_story_fixture_splits_into_train_and_validation_windows():
    """The smoke run's data: the fixture story, 90/10 by characters, windows of 64 tiny-tokenizer tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint("gpt2"))
    text = fixture_path("story").read_text(encoding="utf-8")
    split = int(0.9 * len(text))
    train = create_dataloader_v1(text[:split], batch_size=2, max_length=64, stride=64, shuffle=True,
                                 drop_last=True, num_workers=0, tokenizer=tokenizer)
    val = create_dataloader_v1(text[split:], batch_size=2, max_length=64, stride=64, shuffle=False,
                               drop_last=False, num_workers=0, tokenizer=tokenizer)
    assert len(train) >= 10 and len(val) >= 1
    x, y = next(iter(val))
    assert x.shape[1] == 64 and int(x.max()) < len(tokenizer)
    assert tokenizer.decode(x[0].tolist()) in text[split:]
