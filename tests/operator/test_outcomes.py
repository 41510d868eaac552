"""How finished Jobs are classified (the table in continual_operator.workloads.outcomes)."""

from __future__ import annotations

import pytest
from operator_testkit import failed, job, result, succeeded

from continual_operator.workloads.outcomes import backoff_seconds, classify, classify_batch, parse_result
from continual_operator.workloads.views import JobView
from continual_trainer.records import BatchResult, JobResult


@pytest.mark.parametrize(
    ("view", "kind", "reason"),
    [
        pytest.param(succeeded("b", 1, 0, 10), "Succeeded", "Succeeded", id="success"),
        pytest.param(
            succeeded("b", 1, 0, 10, "AlreadyCompleted"), "Succeeded", "AlreadyCompleted", id="rerun"
        ),
        pytest.param(job("b", 1, "Succeeded", exit_code=0), "Retry", "NoResult", id="exit-0-no-message"),
        pytest.param(
            job("b", 1, "Succeeded", exit_code=0, termination_message=result("b", 0, 10, "Preempted")),
            "Retry",
            "NoResult",
            id="exit-0-preempted-record",
        ),
        pytest.param(failed("b", 1, 64), "Permanent", "PermanentFailure", id="permanent"),
        pytest.param(
            failed(
                "b",
                1,
                64,
                termination_message=result("b", 0, 0, "Failed", reason="ConfigDrift", message="lora.r"),
            ),
            "Permanent",
            "ConfigDrift",
            id="permanent-with-reason",
        ),
        pytest.param(failed("b", 1, 85), "Preempted", "Preempted", id="exit-85"),
        pytest.param(failed("b", 1, None, pod_reason="Evicted"), "Preempted", "Preempted", id="evicted"),
        pytest.param(failed("b", 1, 143, disruption_target=True), "Preempted", "Preempted", id="disruption"),
        pytest.param(failed("b", 1, 143), "Retry", "ExitCode143", id="sigterm-alone"),
        pytest.param(failed("b", 1, 75), "Retry", "TransientError", id="transient"),
        pytest.param(
            failed("b", 1, 75, termination_message=result("b", 0, 0, "Failed", reason="IOError")),
            "Retry",
            "IOError",
            id="transient-with-reason",
        ),
        pytest.param(failed("b", 1, 1), "Retry", "UnexpectedError", id="unclassified"),
        pytest.param(failed("b", 1, 137, pod_reason="OOMKilled"), "Retry", "OOMKilled", id="oom"),
        pytest.param(
            failed("b", 1, None, pod_reason="DeadlineExceeded"), "Retry", "DeadlineExceeded", id="deadline"
        ),
        pytest.param(failed("b", 1, None), "Retry", "NoExitCode", id="nothing-known"),
    ],
)
def test_classify(view, kind: str, reason: str) -> None:
    outcome = classify(view)
    assert (outcome.kind, outcome.reason) == (kind, reason)
    assert outcome.message or kind == "Succeeded"


def test_messages_say_what_to_do() -> None:
    assert "spec.resources.memory" in classify(failed("b", 1, 137, pod_reason="OOMKilled")).message
    logs = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    assert "RuntimeError: boom" in classify(failed("b", 1, 1, termination_message=logs)).message


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        (None, False),
        ("", False),
        ("plain log text", False),
        ('{"not": "a record"}', False),
        (result("b", 0, 10), True),
    ],
)
def test_parse_result(message: str | None, parsed: bool) -> None:
    assert (parse_result(message) is not None) is parsed


@pytest.mark.parametrize(
    ("failures", "base", "cap", "expected"),
    [
        (1, 30, 900, 30),
        (2, 30, 900, 60),
        (4, 30, 900, 240),
        (6, 30, 900, 900),
        (100, 30, 900, 900),
        (0, 10, 60, 10),
    ],
)
def test_backoff(failures: int, base: int, cap: int, expected: int) -> None:
    assert backoff_seconds(failures, base=base, cap=cap) == expected


def test_a_coalesced_jobs_result_gives_each_batch_its_own_outcome() -> None:
    results = [
        BatchResult(batch_id="b1", outcome="Succeeded", start_step=0, end_step=6),
        BatchResult(batch_id="b2", outcome="Preempted", start_step=6, end_step=9, exit_code=85),
    ]
    message = JobResult(exit_code=85, results=results).to_termination_message()
    job = JobView(
        name="r-b1-a1",
        batch="b1",
        attempt=1,
        phase="Failed",
        exit_code=85,
        termination_message=message,
        next_batches=("b2", "b3"),
    )
    first, second, third = (classify_batch(job, b) for b in job.batches)
    assert first is not None and (first.kind, first.result.checkpoint) == (
        "Succeeded",
        "checkpoints/checkpoint-6",
    )  # type: ignore[union-attr]
    assert second is not None and (second.kind, second.result.end_step) == ("Preempted", 9)  # type: ignore[union-attr]
    assert third is None  # not reached
    # A result that names none of the Job's batches (a config that does not match): the first batch's
    # outcome is "no result", and nothing crashes.
    other = JobResult(
        exit_code=0, results=[BatchResult(batch_id="zz", outcome="Succeeded", start_step=0, end_step=1)]
    )
    stray = JobView(
        name="r-b1-a1",
        batch="b1",
        attempt=1,
        phase="Succeeded",
        exit_code=0,
        termination_message=other.to_termination_message(),
    )
    assert (classify(stray).kind, classify(stray).reason) == ("Retry", "NoResult")
