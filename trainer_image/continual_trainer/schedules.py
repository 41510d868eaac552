"""Learning-rate policies as pure functions of (global step, batch start, batch end).

``transformers`` builds its schedulers from ``max_steps``; resumed once per data batch, every schedule that
depends on a total step count restarts or collapses at each batch boundary. Here the LR at an optimizer
step depends only on the step and on the current batch's range, both of which are recorded in the batch
ledger before the batch's first attempt, so a run resumed in any number of processes follows exactly the
same curve as an uninterrupted one.

Convention (the same as ``transformers``' ``LambdaLR`` schedules): the optimizer step that moves
``global_step`` from ``s`` to ``s + 1`` uses ``lr_at(s)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from continual_trainer.config import LRSchedule


@dataclass(frozen=True)
class BatchWindow:
    """The step range a batch trains: ``start <= step < target``."""

    start: int
    target: int


def lr_at(schedule: LRSchedule, peak_lr: float, step: int, window: BatchWindow) -> float:
    """The learning rate for the optimizer step taken at ``step`` (0-based global step before it)."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    kind = schedule.type
    if kind == "constant":
        return peak_lr
    if kind == "constant_with_warmup":
        warmup = schedule.warmup_steps
        return peak_lr * (step / warmup if step < warmup else 1.0)
    if kind == "inverse_sqrt":
        warmup = schedule.warmup_steps
        if step < warmup:
            return peak_lr * step / warmup
        timescale = schedule.timescale or max(warmup, 1)
        return peak_lr * math.sqrt(timescale / max(step, timescale))
    if kind == "rewarm":
        return peak_lr * _rewarm_factor(schedule, step, window)
    raise ValueError(f"unknown schedule {kind!r}")  # the config model rejects these before we get here


def rewarm_warmup_steps(schedule: LRSchedule, window: BatchWindow) -> int:
    """Warm-up length inside one batch (a ratio is resolved against the batch's own step count)."""
    span = window.target - window.start
    if schedule.warmup_ratio is not None:
        return math.ceil(schedule.warmup_ratio * span)
    return min(schedule.warmup_steps, span)


def _rewarm_factor(schedule: LRSchedule, step: int, window: BatchWindow) -> float:
    """Re-warming (Gupta et al., 2023; Ibrahim et al., 2024): warm up then decay inside every batch."""
    floor = schedule.min_lr_ratio
    span = window.target - window.start
    if span <= 0:
        return floor
    local = min(max(step - window.start, 0), span)
    warmup = rewarm_warmup_steps(schedule, window)
    if local < warmup:
        return floor + (1.0 - floor) * local / warmup
    decay_span = span - warmup
    progress = (local - warmup) / decay_span if decay_span > 0 else 1.0
    shape = 1.0 - progress if schedule.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * shape
