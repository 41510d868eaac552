"""Coalesced batches on the wire: the config shape and the result record (no training here).

A single-batch config and its result stay exactly what they were; a coalesced invocation's results fit the
4096-byte termination message at ``training.maxBatchesPerJob``'s maximum, whatever the ids and messages,
and read back with every field the operator needs.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from continual_trainer.config import MAX_BATCHES_PER_JOB, TrainerConfig, coalesce
from continual_trainer.records import (
    TERMINATION_MESSAGE_LIMIT,
    BatchResult,
    JobResult,
    TruncationSummary,
    parse_results,
)

LONGEST_ID = "b" + "x" * 61 + "9"  # 63 characters: BATCH_ID_PATTERN's longest


def config(batches: int, max_per_job: int | None = None, ids: list[str] | None = None) -> TrainerConfig:
    ids = ids or [f"b{i}" for i in range(batches)]
    specs = [{"id": i, "data": {"path": f"{i}.jsonl"}} for i in ids]
    training = {} if max_per_job is None else {"maxBatchesPerJob": max_per_job}
    data = {"runName": "r", "runDir": "/v/r", "baseModel": {"path": "m"}, "training": training}
    return TrainerConfig.model_validate({**data, "batch": specs[0], "nextBatches": specs[1:]})


def test_a_single_batch_config_is_unchanged_on_the_wire():
    single = config(1)
    wire = single.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert "nextBatches" not in wire
    assert single.batch_configs() == [single]
    assert single.training.max_batches_per_job == 4


def test_batch_configs_are_one_single_batch_config_each_in_order():
    parts = config(3).batch_configs()
    assert [(c.batch.id, c.next_batches) for c in parts] == [("b0", []), ("b1", []), ("b2", [])]


def test_coalesce_joins_single_batch_configs_and_refuses_other_settings():
    parts = config(3).batch_configs()
    assert coalesce(parts) == config(3)
    assert coalesce(parts[:1]) == parts[0]
    other = parts[1].model_copy(update={"run_dir": "/v/elsewhere"})
    with pytest.raises(ValueError, match="differs from that of batch 'b0' in run_dir"):
        coalesce([parts[0], other])
    singles = [config(1, ids=[f"b{i}"]) for i in range(5)]
    with pytest.raises(ValidationError, match=r"training\.maxBatchesPerJob is 4"):
        coalesce(singles)
    with pytest.raises(ValidationError, match="appears more than once"):
        coalesce([singles[0], singles[0]])


def test_more_batches_than_max_batches_per_job_are_refused_naming_the_field():
    with pytest.raises(ValidationError, match=r"5 batches .* training.maxBatchesPerJob is 4"):
        config(5)
    assert len(config(5, max_per_job=5).batch_configs()) == 5
    with pytest.raises(ValidationError, match="maxBatchesPerJob"):
        config(2, max_per_job=MAX_BATCHES_PER_JOB + 1)


def test_a_batch_listed_twice_is_refused():
    with pytest.raises(ValidationError, match="'b1' appears more than once"):
        config(3, ids=["b0", "b1", "b1"])


def succeeded(i: int) -> BatchResult:
    """A completed batch with the widest values a result can plausibly carry."""
    end = 99_999_000 + (i + 1) * 1000
    return BatchResult(
        batch_id=LONGEST_ID[:-2] + f"{i:02d}",
        outcome="Succeeded",
        start_step=end - 1000,
        end_step=end,
        target_step=end,
        samples=9_999_999,
        tokens=9_999_999_999,
        mean_loss=1.2345678901234567e-05,
        truncated=TruncationSummary(
            samples=9_999_999, tokens_dropped=9_999_999_999, first="/data/" + "d" * 200 + ".jsonl:123456"
        ),
        rebuilt="checkpoint-123 was not valid (" + "why " * 100 + ")",
        checkpoint=f"checkpoints/checkpoint-{end}",
        adapter=f"adapters/step-{end}",
        duration_seconds=123456.789,
    )


@pytest.mark.parametrize("last", ["Succeeded", "Preempted", "Failed"])
def test_the_results_of_max_batches_fit_the_termination_message_and_read_back(last):
    results = [succeeded(i) for i in range(MAX_BATCHES_PER_JOB)]
    if last != "Succeeded":
        end = results[-1].end_step
        results[-1] = results[-1].model_copy(
            update={
                "outcome": last,
                "end_step": (end or 0) - 500,
                "adapter": None,
                "checkpoint": "checkpoints/checkpoint-1",
                "exit_code": 85 if last == "Preempted" else 64,
                "reason": last,
                "message": "the fix: " + "x" * 5000,
            }
        )
    job = JobResult(exit_code=results[-1].exit_code, results=results)
    text = job.to_termination_message()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = parse_results(text)
    assert json.loads(text)["exitCode"] == job.exit_code
    essential = (
        "batch_id",
        "outcome",
        "start_step",
        "end_step",
        "samples",
        "tokens",
        "mean_loss",
        "exit_code",
    )
    for got, want in zip(parsed, results, strict=True):
        assert {k: getattr(got, k) for k in essential} == {k: getattr(want, k) for k in essential}
    for got, want in zip(parsed[:-1], results[:-1], strict=True):  # derived again where left out
        assert (got.target_step, got.checkpoint, got.adapter) == (
            want.target_step,
            want.checkpoint,
            want.adapter,
        )
    if last != "Succeeded":
        assert parsed[-1].reason == last
        assert parsed[-1].message is not None and parsed[-1].message.startswith("the fix: ")


def test_a_small_job_result_is_sent_in_full_and_a_single_result_parses_as_before():
    job = JobResult(exit_code=0, results=[succeeded(0), succeeded(1)])
    job = job.model_copy(
        update={"results": [r.model_copy(update={"rebuilt": None, "truncated": None}) for r in job.results]}
    )
    assert parse_results(job.to_termination_message()) == job.results
    single = succeeded(0)
    assert parse_results(single.to_termination_message()) == [single]
