"""LR continuity across batch boundaries for every policy; LR changes apply from the next batch;
the optimizer state is really carried across batches (a control with a fresh optimizer differs)."""

from __future__ import annotations

import shutil
import signal

import pytest
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff, run_trainer

from continual_trainer.reference import run_uninterrupted

pytestmark = pytest.mark.slow
TWO = DEMO_BATCHES[:2]

POLICIES = {
    "constant": {"type": "constant"},
    "constant_with_warmup": {"type": "constant_with_warmup", "warmupSteps": 8},
    "inverse_sqrt": {"type": "inverse_sqrt", "warmupSteps": 3},
    "rewarm": {"type": "rewarm", "warmupSteps": 2, "minLrRatio": 0.1},
}


def progress_lrs(events):
    return {e["globalStep"]: e["learningRate"] for e in events if e["kind"] == "progress"}


@pytest.mark.parametrize("policy", list(POLICIES), ids=list(POLICIES))
def test_lr_sequence_batch_by_batch_equals_uninterrupted(policy, tiny_model, tmp_path):
    training = {"lrSchedule": POLICIES[policy]}
    ref = run_uninterrupted(
        [make_config(tmp_path / "ref", tiny_model, b, p, training=training) for b, p in TWO], tmp_path / "ref"
    )
    run_dir = tmp_path / "run"
    lrs = {}
    for b, p in TWO:
        out = run_trainer(make_config(run_dir, tiny_model, b, p, training=training))
        assert out.code == 0, out.stderr[-2000:]
        lrs.update(progress_lrs(out.events))
    assert lrs == ref.learning_rates
    assert sorted(lrs) == list(range(1, 13))
    if policy == "rewarm":  # the LR is re-warmed at the boundary, from the floor: by design, both runs
        assert lrs[7] == pytest.approx(0.1 * 0.002)
    elif policy != "constant":
        assert lrs[7] >= lrs[6] * 0.8  # continuous: no collapse at the batch end
    assert (
        max_abs_diff(
            adapter_weights(run_dir / "checkpoints" / "checkpoint-12"),
            adapter_weights(tmp_path / "ref" / "checkpoints" / "checkpoint-12"),
        )
        == 0.0
    )


def test_a_changed_learning_rate_applies_from_the_next_batch_only(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    (b1, p1), (b2, p2) = TWO
    first = run_trainer(make_config(run_dir, tiny_model, b1, p1))
    assert set(progress_lrs(first.events).values()) == {0.002}
    killed = run_trainer(
        make_config(run_dir, tiny_model, b2, p2, training={"learningRate": 0.001}),
        env={"CONTINUAL_TRAINER_FAILPOINTS": "step-end@9"},
    )
    assert killed.code == -signal.SIGKILL
    assert set(progress_lrs(killed.events).values()) == {0.001}
    # a retry keeps the value the batch started with, even if the config changed again meanwhile
    retry = run_trainer(make_config(run_dir, tiny_model, b2, p2, training={"learningRate": 0.005}))
    assert retry.code == 0
    assert set(progress_lrs(retry.events).values()) == {0.001}


def test_optimizer_state_is_carried_across_batches(tiny_model, tmp_path):
    (b1, p1), (b2, p2) = TWO
    run_dir = tmp_path / "run"
    for b, p in TWO:
        assert run_trainer(make_config(run_dir, tiny_model, b, p)).code == 0
    continual = adapter_weights(run_dir / "checkpoints" / "checkpoint-12")

    # the same resume in-process, from a copy of b1's end checkpoint: identical (the control's control)
    ref_run = tmp_path / "ref"
    run_uninterrupted([make_config(ref_run, tiny_model, b, p) for b, p in [(b1, p1)]], ref_run)
    b1_end = ref_run / "checkpoints" / "checkpoint-6"
    same = tmp_path / "same"
    run_uninterrupted([make_config(same, tiny_model, b2, p2)], same, resume_from=b1_end)
    assert max_abs_diff(adapter_weights(same / "checkpoints" / "checkpoint-12"), continual) == 0.0

    # control: same weights, step and RNG, but a fresh optimizer (no optimizer.pt): the result differs
    fresh = tmp_path / "fresh-ckpt" / "checkpoint-6"
    shutil.copytree(b1_end, fresh)
    (fresh / "optimizer.pt").unlink()
    control = tmp_path / "control"
    run_uninterrupted([make_config(control, tiny_model, b2, p2)], control, resume_from=fresh)
    assert max_abs_diff(adapter_weights(control / "checkpoints" / "checkpoint-12"), continual) > 0.0
    # and training moved the weights at all
    assert max_abs_diff(adapter_weights(b1_end), continual) > 0.0
