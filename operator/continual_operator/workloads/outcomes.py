"""How a finished trainer Job ended, in the terms the failure policy needs.

The trainer says why it stopped through its exit code (:class:`continual_trainer.exitcodes.ExitCode`) and
its result record (:class:`continual_trainer.records.BatchResult`, JSON in the termination message); the
cluster adds what the trainer cannot know (the pod was evicted, Kueue took its quota back). The rules:

=========================================================  =========  =====================================
what happened                                              outcome    what the planner does
=========================================================  =========  =====================================
exit 0 with a Succeeded/AlreadyCompleted result            Succeeded  record it, check step contiguity
exit 0 without a readable result                           Retry      a re-run answers AlreadyCompleted
exit 64 (PERMANENT)                                        Permanent  onPermanentFailure: Halt or SkipBatch
exit 85 (PREEMPTED), an eviction or preemption of the pod  Preempted  retry now; not counted as a failure
(Evicted, Preempted, a DisruptionTarget condition), Kueue
exit 75 (TRANSIENT), 1 (UNCLASSIFIED), anything else       Retry      back-off, up to maxRetriesPerBatch
=========================================================  =========  =====================================

A permanent exit wins over preemption signals: the trainer decided before it was disrupted, and retrying a
bad config or bad data cannot help.

A coalesced Job (several batches in one process) writes a ``JobResult``, one ``BatchResult`` per batch it
reached (:func:`classify_batch`): a completed batch is Succeeded whatever the Job's exit code; the batch that
did not complete is classified by the table above with its own result; batches without a result were not
reached. A Job without a readable result record (a crash, an eviction before the trainer could write it) is
its first batch's outcome: the batches after it were not reached as far as anyone can tell (their trainer
answers AlreadyCompleted for any that did complete).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from continual_operator.naming import batch_id
from continual_operator.workloads.views import JobView
from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult, JobResult, parse_results

OutcomeKind = Literal["Succeeded", "Preempted", "Retry", "Permanent"]

#: Pod reasons that mean "the cluster took the pod away", not "the trainer failed".
PREEMPTION_REASONS = frozenset({"Evicted", "Preempted", "PreemptionByScheduler", "EvictionByEvictionAPI"})
_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Outcome:
    """The classification of one finished Job."""

    kind: OutcomeKind
    reason: str
    message: str
    result: BatchResult | None = None
    #: An artifact job's result record (its JSON, see :mod:`continual_operator.workloads.artifact`).
    artifact: dict[str, Any] | None = None


def parse_result(message: str | None) -> BatchResult | None:
    """The trainer's result record from a termination message (None when it is absent or not a record)."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        return BatchResult.model_validate_json(message)
    except ValidationError:
        return None


def parse_record(message: str | None) -> BatchResult | JobResult | None:
    """The trainer's record in a termination message: one batch's result, a coalesced Job's, or None."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        job = JobResult.model_validate_json(message)
    except ValidationError:
        return parse_result(message)
    # A compacted JobResult leaves out what can be derived (a completed batch's checkpoint, adapter, target).
    return job.model_copy(update={"results": parse_results(message)})


#: torchrun's exit code whenever one of its workers failed (ChildFailedError) or it was signalled
#: (SignalException), whatever the workers' own codes were: measured with torch 2.13.
TORCHRUN_FAILED = 1


def trainer_exit_code(container_exit_code: int | None, result: BatchResult | JobResult | None) -> int | None:
    """The trainer's exit code behind a container that runs it under torchrun: the coordinator's ``exitCode``.

    torchrun exits 1 whenever a worker failed or it was signalled, so 64 (permanent), 75 (transient) and
    85 (preempted) all read as 1 at the container; the coordinator's result record keeps the real code.
    Any other container code (0, 137 for a killed container) is the container's own truth.
    """
    if container_exit_code == TORCHRUN_FAILED and result is not None:
        return result.exit_code
    return container_exit_code


def _text(job: JobView, result: BatchResult | None) -> str:
    """The best human explanation available: the trainer's message, else the raw termination message."""
    raw = job.termination_message if not isinstance(parse_record(job.termination_message), JobResult) else ""
    text = (result.message if result is not None else None) or raw or ""
    return " ".join(text.split())[:_MESSAGE_LIMIT]


def classify(job: JobView) -> Outcome:
    """The outcome of a finished Job for its first batch (see the module docstring for the table)."""
    outcome = classify_batch(job, job.batch)
    assert outcome is not None  # classify_batch always has one for the first batch
    return outcome


def classify_batch(job: JobView, batch: str) -> Outcome | None:
    """The outcome of one of the batches a finished Job trains (None: the Job did not reach it)."""
    record = parse_record(job.termination_message)
    if not isinstance(record, JobResult):  # one batch's result (or none): it is about the first batch
        return _classify(job, record) if batch == job.batch else None
    mine = next((r for r in record.results if r.batch_id == batch_id(batch)), None)
    if mine is None:  # not reached; for the first batch (a config that does not match): no result
        return _classify(job, None) if batch == job.batch else None
    if _completed(mine):
        return Outcome("Succeeded", mine.outcome, _text(job, mine), mine)
    # The batch the Job stopped at: classified by the Job's end, with its own result.
    return _classify(job, mine)


def _completed(result: BatchResult) -> bool:
    return (
        result.outcome in {"Succeeded", "AlreadyCompleted"}
        and result.start_step is not None
        and result.end_step is not None
    )


def _classify(job: JobView, result: BatchResult | None) -> Outcome:
    text = _text(job, result)
    if job.phase == "Succeeded":
        if result is not None and _completed(result):
            return Outcome("Succeeded", result.outcome, text, result)
        return Outcome(
            "Retry",
            "NoResult",
            "the trainer exited 0 without a readable result record in its termination message; retrying "
            "(a batch that did complete answers AlreadyCompleted)",
            result,
        )
    if job.exit_code == ExitCode.PERMANENT:
        reason = (result.reason if result is not None else None) or "PermanentFailure"
        return Outcome("Permanent", reason, text or "the trainer reported a permanent failure", result)
    preempted_by = _preempted_by(job, result)
    if preempted_by is not None:
        return Outcome("Preempted", "Preempted", preempted_by, result)
    return _retry(job, result, text)


def _preempted_by(job: JobView, result: BatchResult | None) -> str | None:
    if job.exit_code == ExitCode.PREEMPTED or (result is not None and result.outcome == "Preempted"):
        return _join("the trainer was stopped (SIGTERM) and saved a checkpoint", _text(job, result))
    if job.pod_reason in PREEMPTION_REASONS or job.disruption_target:
        return f"the pod was disrupted by the cluster ({job.pod_reason or 'DisruptionTarget'})"
    if job.suspended:
        return "Kueue suspended the Job"
    return None


def _retry(job: JobView, result: BatchResult | None, text: str) -> Outcome:
    if job.pod_reason == "OOMKilled":
        return Outcome(
            "Retry",
            "OOMKilled",
            "the trainer ran out of memory (OOMKilled): raise spec.resources.memory, or lower "
            "spec.training.perDeviceBatchSize or spec.training.maxSeqLength",
            result,
        )
    if job.exit_code == ExitCode.TRANSIENT:
        reason = (result.reason if result is not None else None) or "TransientError"
    elif job.exit_code == ExitCode.UNCLASSIFIED:
        reason = (result.reason if result is not None else None) or "UnexpectedError"
    elif job.pod_reason is not None:
        reason = job.pod_reason
    elif job.exit_code is None:
        reason = "NoExitCode"
    else:
        reason = f"ExitCode{job.exit_code}"
    detail = f"exit code {job.exit_code}" if job.exit_code is not None else "no exit code recorded"
    return Outcome("Retry", reason, _join(f"the trainer failed ({detail})", text), result)


def _join(head: str, detail: str) -> str:
    return f"{head}: {detail}" if detail else head


def backoff_seconds(failures: int, *, base: int, cap: int) -> int:
    """Delay before the retry that follows the ``failures``-th failure: base, 2 base, 4 base, ... up to cap."""
    return int(min(cap, base * 2 ** max(0, failures - 1)))
