"""The headline guarantee: batch by batch in separate processes == one uninterrupted run, bit for bit.

CPU, fp32, LoRA dropout on. The reference trains the three demo batches in one process and one
``Trainer.train()``; every variant below trains them one process per batch (as the Jobs do), some killed
mid-batch or mid-save and retried, and must end with exactly the same adapter weights (max abs diff 0.0),
the same learning rate at every step, and contiguous step ranges.
"""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from pathlib import Path

import pytest
from tests.trainer.helpers import (
    DEMO_BATCHES,
    adapter_weights,
    make_config,
    max_abs_diff,
    run_and_signal,
    run_trainer,
)

from continual_trainer.reference import UninterruptedResult, run_uninterrupted

pytestmark = pytest.mark.slow
EPOCHS = 2
TOTAL = 18  # 3 batches x 2 epochs x 3 steps


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[UninterruptedResult, Path]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    configs = [make_config(run_dir, tiny_model, bid, path) for bid, path in DEMO_BATCHES]
    result = run_uninterrupted(configs, run_dir)
    assert result.final_step == TOTAL
    return result, run_dir / "checkpoints" / f"checkpoint-{TOTAL}"


def lrs_from_events(events: list[dict]) -> dict[int, float]:
    return {e["globalStep"]: e["learningRate"] for e in events if e["kind"] == "progress"}


def test_three_batches_in_separate_processes_equal_uninterrupted(reference, tiny_model, tmp_path):
    ref, ref_ckpt = reference
    run_dir = tmp_path / "run"
    results, lrs = [], {}
    for bid, path in DEMO_BATCHES:
        out = run_trainer(make_config(run_dir, tiny_model, bid, path))
        assert out.code == 0, out.stderr[-3000:]
        results.append(out.result)
        lrs.update(lrs_from_events(out.events))

    # global_step is contiguous across batches and never resets
    assert [(r["startStep"], r["endStep"]) for r in results] == [(0, 6), (6, 12), (12, 18)]
    # every sample of every batch was trained exactly EPOCHS times
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trace] == list(range(TOTAL))
    for (bid, _), result in zip(DEMO_BATCHES, results, strict=True):
        steps = [t for t in trace if result["startStep"] <= t["step"] < result["endStep"]]
        seen = Counter(i for t in steps for i in t["samples"])
        assert set(seen.values()) == {EPOCHS}, bid
        assert len(seen) == result["samples"]
    # bit-exact weights and the same LR at every step
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpt)) == 0.0
    assert lrs == ref.learning_rates
    assert (run_dir / "adapters" / "latest").resolve().name == f"step-{TOTAL}"


def test_sigkill_at_a_random_step_mid_batch_then_retry_is_exact(reference, tiny_model, tmp_path):
    _, ref_ckpt = reference
    run_dir = tmp_path / "run"
    kill_at = random.Random().randint(7, 11)  # strictly inside batch 2 (steps 6..12)
    (b1, p1), (b2, p2), (b3, p3) = DEMO_BATCHES
    assert run_trainer(make_config(run_dir, tiny_model, b1, p1)).code == 0
    killed = run_and_signal(make_config(run_dir, tiny_model, b2, p2), kill_at, signal.SIGKILL)
    assert killed.code == -signal.SIGKILL
    retry = run_trainer(make_config(run_dir, tiny_model, b2, p2))
    assert retry.code == 0, retry.stderr[-3000:]
    assert (retry.result["startStep"], retry.result["endStep"]) == (6, 12)
    assert run_trainer(make_config(run_dir, tiny_model, b3, p3)).code == 0
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpt)) == 0.0, f"killed at {kill_at}"


def test_sigkill_during_a_checkpoint_save_then_retry_is_exact(reference, tiny_model, tmp_path):
    _, ref_ckpt = reference
    run_dir = tmp_path / "run"
    (b1, p1), (b2, p2), (b3, p3) = DEMO_BATCHES
    assert run_trainer(make_config(run_dir, tiny_model, b1, p1)).code == 0
    # killed after the adapter was written and before the optimizer: a torn save in staging
    killed = run_trainer(
        make_config(run_dir, tiny_model, b2, p2), env={"CONTINUAL_TRAINER_FAILPOINTS": "save-mid@10"}
    )
    assert killed.code == -signal.SIGKILL
    torn = run_dir / "checkpoints" / ".staging" / "checkpoint-10"
    assert (torn / "adapter_model.safetensors").exists() and not (torn / "optimizer.pt").exists()
    assert not (run_dir / "checkpoints" / "checkpoint-10").exists()
    retry = run_trainer(make_config(run_dir, tiny_model, b2, p2))
    assert retry.code == 0, retry.stderr[-3000:]
    assert not torn.exists()
    assert run_trainer(make_config(run_dir, tiny_model, b3, p3)).code == 0
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpt)) == 0.0


def test_sigterm_checkpoints_exits_preempted_and_resumes_exactly(reference, tiny_model, tmp_path):
    _, ref_ckpt = reference
    run_dir = tmp_path / "run"
    (b1, p1), (b2, p2), (b3, p3) = DEMO_BATCHES
    out = run_and_signal(make_config(run_dir, tiny_model, b1, p1), 3, signal.SIGTERM)
    assert out.code == 85, out.stderr[-3000:]
    assert out.result["outcome"] == "Preempted"
    stopped = out.result["endStep"]
    assert 3 <= stopped < 6
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped}" / "continual-manifest.json").exists()
    for bid, path in [(b1, p1), (b2, p2), (b3, p3)]:
        assert run_trainer(make_config(run_dir, tiny_model, bid, path)).code == 0
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpt)) == 0.0
