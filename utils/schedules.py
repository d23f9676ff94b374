"""Chapter 05's training-loop technique (after rasbt/LLMs-from-scratch, appendix D): linear learning-rate warmup,
cosine decay, gradient clipping by global norm, and one training function that combines them, records the learning
rate, loss and gradient norm of every step, stops on a non-finite loss, and checkpoints and resumes exactly.

The chapter's notebook writes these functions out (a test proves the two copies identical); tests import them here.
The model, the loss and the checkpoint plumbing come from `utils.gpt` (chapter 04).

Step convention (the same as transformers' `get_cosine_schedule_with_warmup` and torch's `LambdaLR`): `step` counts
the optimizer updates already taken, so update number `step` (0-based) uses `lr_at_step(step)`. A run of
`total_steps` updates uses steps 0 .. total_steps - 1; the schedule is defined on 0 .. total_steps and reaches
`min_lr` exactly at `step == total_steps`, the point where it ends (the last update, step total_steps - 1, uses a
rate just above min_lr). Warmup reaches `peak_lr` exactly at `step == warmup_steps`, and clipping starts there too.
"""

from __future__ import annotations

import math
import numbers

import torch
from tqdm.auto import tqdm

from utils.errors import CourseError
from utils.gpt import (
    calc_loss_batch,
    check_loop_args,
    epoch_batches,
    evaluate_model,
    save_training_checkpoint,
    start_run,
)


def validate_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr):
    """Raise ValueError, naming the argument, for a schedule that cannot be right."""
    for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer number of optimizer steps, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be between 0 and total_steps ({total_steps}), got {warmup_steps}")
    for name, value in (("initial_lr", initial_lr), ("peak_lr", peak_lr), ("min_lr", min_lr)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be positive, got {peak_lr}")
    if peak_lr < initial_lr:
        raise ValueError(f"peak_lr ({peak_lr}) is below initial_lr ({initial_lr}): warmup must go up")
    if peak_lr < min_lr:
        raise ValueError(f"peak_lr ({peak_lr}) is below min_lr ({min_lr}): the decay must go down")


def lr_at_step(step, *, total_steps, warmup_steps, initial_lr, peak_lr, min_lr):
    """The learning rate of update number `step`: linear warmup from initial_lr (step 0) to peak_lr (step
    warmup_steps), then a half cosine from peak_lr down to min_lr (step total_steps)."""
    validate_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must be between 0 and total_steps ({total_steps}), got {step}")
    if step < warmup_steps:
        return initial_lr + (peak_lr - initial_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 at the peak, 1 at the end
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def count_steps(num_batches, num_epochs, warmup_fraction):
    """(total_steps, warmup_steps) from the loader's real number of batches (after drop_last) and the epochs."""
    if num_batches < 1:
        raise ValueError("the training loader has no batches: the text is too short for max_length and batch_size")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be at least 1, got {num_epochs}")
    if not 0 <= warmup_fraction <= 1:
        raise ValueError(f"warmup_fraction must be between 0 and 1, got {warmup_fraction}")
    total_steps = num_batches * num_epochs
    warmup_steps = math.floor(round(warmup_fraction * total_steps, 6))  # round first: 0.29 * 100 is 28.999...
    return total_steps, warmup_steps


def grad_global_norm(parameters):
    """The global L2 norm of all gradients: the norm of every gradient entry concatenated into one vector."""
    squares = [p.grad.detach().pow(2).sum() for p in parameters if p.grad is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.tensor(0.0)


def clips_at(step, warmup_steps, max_norm):
    """Whether update `step` clips: from the first update at the peak rate (step == warmup_steps) on.
    The book's `global_step > warmup_steps` skipped that one step; its repository now uses `>=`."""
    return max_norm is not None and step >= warmup_steps


def stop_if_not_finite(value, what, step, log):
    """Stop the run with a clear error when the loss or the gradient norm is NaN or infinite."""
    if not math.isfinite(value):
        last = f"{log['lrs'][-1]:.4g} (update {step - 1})" if log["lrs"] else "none yet (this is the first update)"
        raise CourseError(f"the {what} is {value} at step {step}: training stopped before this update. The last "
                          f"learning rate applied was {last}; lower peak_lr, keep clipping on, or check the data")


def scheduled_update(model, optimizer, input_batch, target_batch, device, step, schedule, max_norm, log):
    """One update at the schedule's rate for `step`, clipped from warmup's end on; records lr, loss, grad norm."""
    for group in optimizer.param_groups:  # every group, overwriting whatever lr the optimizer was built with
        group["lr"] = lr_at_step(step, **schedule)
    optimizer.zero_grad()
    loss = calc_loss_batch(input_batch, target_batch, model, device)
    stop_if_not_finite(loss.item(), "training loss", step, log)
    loss.backward()
    clip = clips_at(step, schedule["warmup_steps"], max_norm)
    if clip:  # clip_grad_norm_ returns the norm before clipping
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    else:
        norm = grad_global_norm(model.parameters())
    stop_if_not_finite(norm.item(), "gradient norm", step, log)
    optimizer.step()
    log["lrs"].append(optimizer.param_groups[0]["lr"])  # the rate the optimizer really applied
    log["step_losses"].append(loss.item())
    log["grad_norms"].append(norm.item())
    log["clipped"].append(clip)
    return loss.item()


def train_with_schedule(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter, *,
                        peak_lr, initial_lr, min_lr, warmup_fraction=0.2, max_norm=1.0,
                        checkpoint_dir=None, checkpoint_every=None, resume=False, stop_after_steps=None):
    check_loop_args(train_loader, num_epochs, eval_freq, eval_iter, checkpoint_dir, checkpoint_every, resume,
                    stop_after_steps)
    total_steps, warmup_steps = count_steps(len(train_loader), num_epochs, warmup_fraction)
    validate_schedule(total_steps, warmup_steps, initial_lr, peak_lr, min_lr)  # before any training
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be positive (or None: no clipping), got {max_norm}")
    schedule = {"total_steps": total_steps, "warmup_steps": warmup_steps, "initial_lr": initial_lr,
                "peak_lr": peak_lr, "min_lr": min_lr}
    log, run = start_run(checkpoint_dir, model, optimizer, resume)  # a resume restores model, optimizer, RNG, step
    if resume and log.get("schedule") != {**schedule, "max_norm": max_norm}:
        raise ValueError(f"the checkpoint's schedule {log.get('schedule')} differs from this call's {schedule}")
    log["schedule"] = {**schedule, "max_norm": max_norm}
    for key in ("lrs", "step_losses", "grad_norms", "clipped"):
        log.setdefault(key, [])
    model.train()
    bar = tqdm(total=total_steps, initial=run["global_step"], desc="training")
    for epoch in range(run["epoch"], num_epochs):
        batches, first = epoch_batches(train_loader, run, epoch)  # replays the shuffle after a resume
        for step_in_epoch, (input_batch, target_batch) in enumerate(batches, start=first):
            loss = scheduled_update(model, optimizer, input_batch, target_batch, device, run["global_step"],
                                    schedule, max_norm, log)
            run["tokens_seen"] += input_batch.numel()
            run["global_step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{log['lrs'][-1]:.2e}")
            if run["global_step"] % eval_freq == 0 or run["global_step"] == total_steps:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                log["train_losses"].append(train_loss)
                log["val_losses"].append(val_loss)
                log["tokens_seen"].append(run["tokens_seen"])
                log["steps"].append(run["global_step"])
            stop = stop_after_steps is not None and run["global_step"] >= stop_after_steps
            every = checkpoint_every and run["global_step"] % checkpoint_every == 0
            if checkpoint_dir is not None and (stop or every or run["global_step"] == total_steps):
                save_training_checkpoint(checkpoint_dir, model, optimizer, run, log, epoch, step_in_epoch,
                                         len(train_loader))
            if stop:  # an interruption, simulated: resume=True continues from the checkpoint
                bar.close()
                return log
    bar.close()
    return log
