"""Pure parts: the step plan counts like Trainer; LR policies are continuous and unsafe ones are refused."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from pydantic import ValidationError

from continual_trainer.config import LRSchedule, TrainingSpec
from continual_trainer.plan import build_plan, epoch_order, steps_per_epoch, total_steps
from continual_trainer.schedules import BatchWindow, lr_at


@pytest.mark.parametrize(
    ("n", "b", "g", "e", "expected"),
    [
        (24, 4, 2, 2, 6),
        (20, 4, 2, 2, 6),
        (18, 4, 2, 2, 6),
        (1, 8, 4, 1, 1),
        (100, 3, 5, 3, 21),
        (7, 7, 1, 4, 4),
    ],
)
def test_step_counts_match_trainer(n, b, g, e, expected):
    # Trainer: len(dataloader) = ceil(n / b); updates per epoch = ceil(len / g); total = epochs * that
    assert total_steps(n, b, g, e) == expected == e * math.ceil(math.ceil(n / b) / g)
    plan = build_plan(n, batch_size=b, accumulation=g, epochs=e, seed=1, batch_id="x")
    assert len(plan) == expected
    assert all(1 <= len(s.micro_batches) <= g for s in plan)
    assert all(1 <= len(mb) <= b for s in plan for mb in s.micro_batches)
    assert set(Counter(i for s in plan for i in s.sample_indices).values()) == {e}


def test_order_is_deterministic_and_differs_by_batch_and_epoch():
    assert epoch_order(50, 7, "b1", 0) == epoch_order(50, 7, "b1", 0)
    assert epoch_order(50, 7, "b1", 0) != epoch_order(50, 7, "b1", 1)
    assert epoch_order(50, 7, "b1", 0) != epoch_order(50, 7, "b2", 0)
    assert sorted(epoch_order(50, 7, "b1", 0)) == list(range(50))
    assert steps_per_epoch(0, 4, 2) == 0


POLICIES = [
    LRSchedule(type="constant"),
    LRSchedule(type="constant_with_warmup", warmup_steps=5),
    LRSchedule(type="inverse_sqrt", warmup_steps=4),
    LRSchedule(type="rewarm", warmup_steps=2, min_lr_ratio=0.1),
    LRSchedule(type="rewarm", warmup_ratio=0.25, decay="linear"),
]


@pytest.mark.parametrize("schedule", POLICIES, ids=lambda s: s.type)
def test_policies_are_pure_functions_of_step_and_window(schedule):
    windows = [BatchWindow(0, 8), BatchWindow(8, 20), BatchWindow(20, 24)]
    values = [lr_at(schedule, 1e-3, s, w) for w in windows for s in range(w.start, w.target)]
    assert values == [lr_at(schedule, 1e-3, s, w) for w in windows for s in range(w.start, w.target)]
    assert all(0.0 <= v <= 1e-3 + 1e-12 for v in values)
    if schedule.type in {"constant", "constant_with_warmup", "inverse_sqrt"}:
        # run-level policies ignore batch boundaries entirely
        assert values == [lr_at(schedule, 1e-3, s, BatchWindow(0, 1)) for s in range(24)]


def test_run_level_warmup_happens_once_and_inverse_sqrt_decays():
    w = LRSchedule(type="constant_with_warmup", warmup_steps=4)
    assert [lr_at(w, 1.0, s, BatchWindow(0, 2)) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    inv = LRSchedule(type="inverse_sqrt", warmup_steps=4)
    assert lr_at(inv, 1.0, 16, BatchWindow(0, 1)) == pytest.approx(0.5)


def test_rewarm_restarts_inside_each_batch_and_ends_at_the_floor():
    r = LRSchedule(type="rewarm", warmup_steps=2, min_lr_ratio=0.1, decay="linear")
    first = [lr_at(r, 1.0, s, BatchWindow(0, 6)) for s in range(6)]
    second = [lr_at(r, 1.0, s, BatchWindow(6, 12)) for s in range(6, 12)]
    assert first == second
    assert first[0] == pytest.approx(0.1)
    assert first[2] == pytest.approx(1.0)
    assert lr_at(r, 1.0, 6, BatchWindow(0, 6)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "name", ["linear", "cosine", "polynomial", "cosine_with_restarts", "warmup_stable_decay"]
)
def test_schedules_that_need_a_total_step_count_are_rejected(name):
    with pytest.raises(ValidationError) as err:
        TrainingSpec.model_validate({"lrSchedule": {"type": name}})
    text = str(err.value)
    assert f"lrSchedule.type={name!r} is not allowed" in text
    assert "rewarm" in text


def test_warmup_ratio_needs_rewarm_and_unknown_types_are_named():
    with pytest.raises(ValidationError, match="warmupRatio is only valid with type 'rewarm'"):
        LRSchedule(type="constant_with_warmup", warmup_ratio=0.1)
    with pytest.raises(ValidationError, match="'bogus' is unknown"):
        LRSchedule(type="bogus")
