"""Coalesced batches: one trainer process trains several queued batches back to back, exactly.

One process with ``batch`` + ``nextBatches`` must end bit for bit where one process per batch ends (shown
against the uninterrupted reference, which tests/trainer/test_exactness.py shows equal to one process per
batch), keep every batch's own ledger record, batch-end checkpoint, adapter export and result, and stop at
the first batch that does not complete: a SIGTERM in the middle leaves the batches before it completed, the
one in progress resumable and the ones after it untouched; the retried invocation ends at 0.0 too.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from tests.trainer.helpers import (
    DEMO_BATCHES,
    adapter_weights,
    make_config,
    max_abs_diff,
    run_trainer,
    signal_at_step_end,
)

from continual_trainer.config import BatchSpec, TrainerConfig
from continual_trainer.reference import UninterruptedResult, run_uninterrupted

pytestmark = pytest.mark.slow
TOTAL = 18  # 3 batches x 2 epochs x 3 steps
ENDS = {"b1": 6, "b2": 12, "b3": 18}


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[UninterruptedResult, Path]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    configs = [make_config(run_dir, tiny_model, bid, path) for bid, path in DEMO_BATCHES]
    result = run_uninterrupted(configs, run_dir)
    assert result.final_step == TOTAL
    return result, run_dir / "checkpoints"


def coalesced(run_dir: Path, model: Path, batches: list[tuple[str, Path]] = DEMO_BATCHES) -> TrainerConfig:
    """One invocation for all of ``batches``: the first is ``batch``, the others ``nextBatches``."""
    (first, path), rest = batches[0], batches[1:]
    config = make_config(run_dir, model, first, path, data_root=DEMO_BATCHES[0][1].parent)
    more = [BatchSpec.model_validate({"id": bid, "data": {"path": str(p)}}) for bid, p in rest]
    return config.model_copy(update={"next_batches": more})


def ledger(run_dir: Path) -> dict[str, dict]:
    folder = run_dir / "ledger" / "batches"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_coalesced_batches_equal_uninterrupted_each_with_its_own_record_and_adapter(
    reference, tiny_model, tmp_path
):
    ref, ref_ckpts = reference
    run_dir = tmp_path / "run"
    out = run_trainer(coalesced(run_dir, tiny_model))
    assert out.code == 0, out.stderr[-3000:]
    assert out.result is not None and out.result["kind"] == "batches"
    results = out.result["results"]
    assert [(r["batchId"], r["outcome"], r["startStep"], r["endStep"]) for r in results] == [
        ("b1", "Succeeded", 0, 6),
        ("b2", "Succeeded", 6, 12),
        ("b3", "Succeeded", 12, 18),
    ]
    records = ledger(run_dir)
    for bid, end in ENDS.items():
        assert records[bid]["state"] == "completed" and records[bid]["targetStep"] == end
        assert records[bid]["result"]["adapter"] == f"adapters/step-{end}"
        # each batch's own adapter export is bit for bit the reference's state at that batch end
        exported = adapter_weights(run_dir / "adapters" / f"step-{end}")
        assert max_abs_diff(exported, adapter_weights(ref_ckpts / f"checkpoint-{end}")) == 0.0, bid
    assert {e["batchId"] for e in out.events if e["kind"] == "batch-finished"} == set(ENDS)
    lrs = {e["globalStep"]: e["learningRate"] for e in out.events if e["kind"] == "progress"}
    assert lrs == ref.learning_rates
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trace] == list(range(TOTAL))
    # the model was loaded once: b2 and b3 trained the one b1 left loaded
    assert out.stderr.count("the model stays loaded from the batch before") == 2
    # the start-up timeline is logged once, at the end of the first step
    lines = [line for line in out.stderr.splitlines() if "start-up timeline " in line]
    assert len(lines) == 1
    spans = json.loads(lines[0].split("start-up timeline ", 1)[1])["spans"]
    assert {"imports, config", "load: model", "resume", "train: first step"} <= set(spans)
    assert all(seconds >= 0 for seconds in spans.values())
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpts / f"checkpoint-{TOTAL}")) == 0.0


def test_sigterm_in_the_middle_of_a_coalesced_run_then_retry_equals_uninterrupted(
    reference, tiny_model, tmp_path
):
    _, ref_ckpts = reference
    run_dir = tmp_path / "run"
    config = coalesced(run_dir, tiny_model)
    stopped = signal_at_step_end(config, 9, signal.SIGTERM)  # inside b2 (steps 6..12)
    assert stopped.code == 85, stopped.stderr[-3000:]
    assert stopped.result is not None and stopped.result["exitCode"] == 85
    results = stopped.result["results"]
    assert [(r["batchId"], r["outcome"]) for r in results] == [("b1", "Succeeded"), ("b2", "Preempted")]
    assert results[1]["endStep"] == 9
    records = ledger(run_dir)
    assert records["b1"]["state"] == "completed"
    assert records["b2"]["state"] == "started"  # resumable: the next attempt continues it
    assert "b3" not in records  # untouched
    assert (run_dir / "checkpoints" / "checkpoint-9").is_dir()

    retry = run_trainer(config)
    assert retry.code == 0, retry.stderr[-3000:]
    assert retry.result is not None
    assert [(r["batchId"], r["outcome"], r["startStep"], r["endStep"]) for r in retry.result["results"]] == [
        ("b1", "AlreadyCompleted", 0, 6),
        ("b2", "Succeeded", 6, 12),
        ("b3", "Succeeded", 12, 18),
    ]
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert sorted({t["step"] for t in trace}) == list(range(TOTAL))  # contiguous, nothing skipped
    final = run_dir / "checkpoints" / f"checkpoint-{TOTAL}"
    assert max_abs_diff(adapter_weights(final), adapter_weights(ref_ckpts / f"checkpoint-{TOTAL}")) == 0.0


def test_a_failed_batch_stops_the_coalesced_run_and_leaves_the_rest_untouched(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    (b1, p1), _, (b3, p3) = DEMO_BATCHES
    missing = p1.parent / "no-such-batch.jsonl"
    out = run_trainer(coalesced(run_dir, tiny_model, [(b1, p1), ("b2", missing), (b3, p3)]))
    assert out.code == 64, out.stderr[-3000:]
    assert out.result is not None and out.result["exitCode"] == 64
    results = out.result["results"]
    assert [(r["batchId"], r["outcome"]) for r in results] == [("b1", "Succeeded"), ("b2", "Failed")]
    assert "no-such-batch.jsonl" in results[1]["message"]
    records = ledger(run_dir)
    assert records["b1"]["state"] == "completed"
    assert set(records) == {"b1"}  # b2 trained nothing and recorded nothing; b3 untouched
    assert (run_dir / "adapters" / "step-6").is_dir()
