"""Decider: artifact jobs -- restore first, then due snapshots and consolidations, before the next batch.

* **Restore** (``spec.restoreFrom``) runs first on a run with no progress yet (no completed step, no
  batch succeeded): batches wait for it. Its result sets the step the next batch starts from
  (``completedStep``, ``globalStep``) and the S3 inbox's watermark; a failure is the ``Restored`` condition
  and a Warning Event, and batches do not start (a permanent failure halts the run until
  ``spec.restoreFrom`` is corrected: a new source is a new restore).
* **Snapshots** (``spec.snapshots``) and **consolidations** (``spec.consolidation``) are due when their
  schedule ticked since the last one (:func:`continual_operator.cadence.next_due`: a missed tick runs once)
  or ``everyBatches`` batches completed since, and there is something new (the completed step moved). A
  due job starts when nobody holds the writer lease, *before* the next batch. Its result goes into
  ``status.lastSnapshot`` / ``status.lastConsolidation``; a failure is the ``Snapshots`` / ``Consolidation``
  condition and a Warning Event, retried after the back-off (``spec.failurePolicy``) up to
  ``maxRetriesPerBatch`` times per step, while batches go on training: a failed artifact never stops
  training. A Job whose pod does not start within ``startDeadlineSeconds`` (a missing Secret) is stopped,
  and that step's snapshot or consolidation is not tried again: the next step's is.

Every finished artifact Job is read with its kind (:mod:`continual_operator.workloads.artifact`); the
failed attempts of the current key stay (they are the record of the retries), everything else is deleted
once recorded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from continual_operator.api import ContinualTrainingRunSpec
from continual_operator.api.meta import ConditionStatus
from continual_operator.cadence import next_due
from continual_operator.planning.actions import CreateWorkload
from continual_operator.planning.draft import Draft
from continual_operator.planning.status import parse_time, rfc3339
from continual_operator.workloads.artifact import ArtifactKind, ArtifactRequest
from continual_operator.workloads.consolidate import CONSOLIDATE, consolidate_request
from continual_operator.workloads.outcomes import backoff_seconds
from continual_operator.workloads.restore import RESTORE, restore_key, restore_request
from continual_operator.workloads.snapshot import SNAPSHOT, snapshot_request
from continual_operator.workloads.views import JobView

_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)
RESTORED = "Restored"


@dataclass(frozen=True)
class Cadenced:
    """A scheduled artifact kind and where its results live."""

    kind: ArtifactKind
    noun: str  # for messages and reasons: Snapshot, Consolidation
    condition: str  # the condition type on the run
    status_field: str  # camelCase field of the run's status
    spec: Callable[[ContinualTrainingRunSpec], Any]
    request: Callable[..., ArtifactRequest]


SCHEDULED = (
    Cadenced(SNAPSHOT, "Snapshot", "Snapshots", "lastSnapshot", lambda s: s.snapshots, snapshot_request),
    Cadenced(
        CONSOLIDATE,
        "Consolidation",
        "Consolidation",
        "lastConsolidation",
        lambda s: s.consolidation,
        consolidate_request,
    ),
)
ARTIFACT_KINDS = frozenset({SNAPSHOT.name, RESTORE.name, CONSOLIDATE.name})


def _jobs(draft: Draft, kind: ArtifactKind) -> list[JobView]:
    return sorted((j for j in draft.workloads if j.kind == kind.name), key=lambda j: (j.key, j.attempt))


def _condition(
    draft: Draft, type_: str, status: ConditionStatus, reason: str, message: str, warn: bool
) -> None:
    """Set a condition; an Event when it changes (not on every reconcile)."""
    draft.extra_conditions.append((type_, status, reason, message))
    before = next((c for c in draft.run.status.conditions if c.type == type_), None)
    if before is None or (before.status, before.reason, before.message) != (status, reason, message):
        draft.run_event("Warning" if warn else "Normal", reason, message)


def _existing_condition(draft: Draft, type_: str) -> None:
    """Keep a condition as it is (the run's status is recomputed whole)."""
    before = next((c for c in draft.run.status.conditions if c.type == type_), None)
    if before is not None:
        draft.extra_conditions.append((type_, before.status, before.reason, before.message))


# -- results ------------------------------------------------------------------------------------------
def record_artifacts(draft: Draft) -> None:
    """Finished artifact Jobs into the run's status and conditions."""
    _record_restore(draft)
    _restore_not_applicable(draft)
    for cadenced in SCHEDULED:
        _record_scheduled(draft, cadenced)


def _restore_not_applicable(draft: Draft) -> None:
    """spec.restoreFrom set on a run that trained (or restored) already: say that it is ignored, once."""
    source = draft.spec.restore_from
    if source is None or draft.restored_step is not None or needs_restore(draft) or _jobs(draft, RESTORE):
        return
    restored = next((c for c in draft.run.status.conditions if c.type == RESTORED), None)
    if restored is not None and restored.reason == "RestoreCompleted":
        return
    message = (
        f"spec.restoreFrom {source} is ignored: the run has progress already (step {draft.completed_step()}); "
        "a snapshot is restored into a new run (create one with spec.restoreFrom), or remove the field"
    )
    _condition(draft, RESTORED, "False", "RestoreNotApplicable", message, warn=True)


def _record_scheduled(draft: Draft, cadenced: Cadenced) -> None:
    spec = cadenced.spec(draft.spec)
    changed = False
    current = f"s{draft.completed_step()}"
    for job in _jobs(draft, cadenced.kind):
        if not job.finished or job.deleting:
            continue
        outcome = cadenced.kind.classify(job)
        if outcome.kind != "Succeeded" and job.key != current:
            draft.delete(job, reason="Superseded")  # a failed attempt of an older step: the step moved on
            continue
        if outcome.kind == "Succeeded" and outcome.artifact is not None:
            entry = _scheduled_entry(cadenced, outcome.artifact, draft.now)
            if not _same(
                draft.run_fields.get(cadenced.status_field) or _status_field(draft, cadenced), entry
            ):
                draft.run_fields[cadenced.status_field] = entry
                where = entry.get("uri") or entry.get("output")
                message = f"{cadenced.noun} of step {entry['globalStep']} ({entry['batches']} batches) committed: {where}"
                _condition(
                    draft, cadenced.condition, "True", f"{cadenced.noun}Completed", message, warn=False
                )
                changed = True
            draft.delete(job, reason="ResultRecorded")
        elif outcome.kind == "Preempted":
            draft.delete(job, reason="Preempted")  # again at once, as the same attempt would be
        elif spec is None:
            draft.delete(job, reason="NotConfigured")
        else:
            message = f"{cadenced.noun} Job {job.name} failed ({outcome.reason}): {outcome.message}"
            _condition(draft, cadenced.condition, "False", f"{cadenced.noun}Failed", message, warn=True)
            changed = True
    if not changed and spec is not None:
        _existing_condition(draft, cadenced.condition)


def _status_field(draft: Draft, cadenced: Cadenced) -> dict[str, Any] | None:
    value = getattr(draft.run.status, "last_snapshot" if cadenced.kind is SNAPSHOT else "last_consolidation")
    return value.model_dump(mode="json", by_alias=True, exclude_none=True) if value is not None else None


def _same(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    return old is not None and {k: v for k, v in old.items() if k != "time"} == {
        k: v for k, v in new.items() if k != "time"
    }


def _scheduled_entry(cadenced: Cadenced, result: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": result.get("completedAt") or rfc3339(now),
        "globalStep": int(result.get("globalStep") or 0),
        "batches": int(result.get("batches") or 0),
    }
    if cadenced.kind is SNAPSHOT:
        entry |= {"uri": str(result.get("uri")), "snapshotId": str(result.get("snapshotId"))}
    else:
        entry |= {"output": str(result.get("output")), "dtype": str(result.get("dtype"))}
    return entry


def _record_restore(draft: Draft) -> None:
    source = draft.spec.restore_from
    key = restore_key(source) if source is not None else None
    for job in _jobs(draft, RESTORE):
        if not job.finished or job.deleting:
            continue
        outcome = RESTORE.classify(job)
        if outcome.kind == "Succeeded" and outcome.artifact is not None and job.key == key:
            result = outcome.artifact
            step = int(result.get("globalStep") or 0)
            draft.restored_step = step
            draft.progress["globalStep"] = step
            if isinstance(result.get("inbox"), dict):
                draft.run_fields["inbox"] = result["inbox"]
            message = (
                f"restored snapshot {result.get('snapshotId')} from {result.get('uri')}: step {step}, "
                f"{result.get('batches')} batches; the next batch continues from step {step}"
            )
            _condition(draft, RESTORED, "True", "RestoreCompleted", message, warn=False)
            draft.delete(job, reason="ResultRecorded")
        elif outcome.kind == "Preempted" or job.key != key:
            draft.delete(job, reason="Preempted" if job.key == key else "SourceChanged")


# -- artifact Jobs that do not start --------------------------------------------------------------------
START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"


def _condition_type(kind: str) -> str:
    return RESTORED if kind == RESTORE.name else next(c.condition for c in SCHEDULED if c.kind.name == kind)


def watch_starting_artifacts(draft: Draft) -> None:
    """An artifact Job whose pod has not started within ``startDeadlineSeconds`` is stopped (foreground:
    it holds the lease until its pod is gone), and its kind's condition says so; a snapshot or
    consolidation of that step is not tried again (the next step's is), so training goes on."""
    if draft.spec.suspend:
        return
    seconds = draft.spec.failure_policy.start_deadline_seconds
    for job in draft.workloads:
        if job.kind not in ARTIFACT_KINDS or job.finished or job.deleting or job.pending_since is None:
            continue
        deadline = job.pending_since + dt.timedelta(seconds=seconds)
        if draft.now < deadline:
            draft.wake_up_in(min(10.0, (deadline - draft.now).total_seconds()))
            continue
        draft.delete(job, reason=START_DEADLINE_EXCEEDED, propagation="Foreground")
        waited = f" ({job.waiting_reason}: {job.waiting_message})" if job.waiting_reason else ""
        message = (
            f"Job {job.name} [{job.key}] did not start its pod within spec.failurePolicy.startDeadlineSeconds "
            f"({seconds}s){waited}; it is stopped"
        )
        _condition(draft, _condition_type(job.kind), "False", START_DEADLINE_EXCEEDED, message, warn=True)


def _given_up_on_start(draft: Draft, cadenced: Cadenced, key: str) -> bool:
    """The last attempt of this key could not start its pod: wait for the next step."""
    before = next((c for c in draft.run.status.conditions if c.type == cadenced.condition), None)
    pending = [c for c in draft.extra_conditions if c[0] == cadenced.condition]
    reason, message = (
        (pending[-1][2], pending[-1][3])
        if pending
        else ((before.reason, before.message) if before is not None else ("", ""))
    )
    return reason == START_DEADLINE_EXCEEDED and f"[{key}]" in message


# -- what to start --------------------------------------------------------------------------------------
def needs_restore(draft: Draft) -> bool:
    """spec.restoreFrom on a run with no progress yet (nothing trained, nothing restored)."""
    if draft.spec.restore_from is None or draft.completed_step() is not None or draft.run.status.global_step:
        return False
    restored = next((c for c in draft.run.status.conditions if c.type == RESTORED), None)
    return not (restored is not None and restored.status == "True")


def start_artifact(draft: Draft) -> bool:
    """Start the artifact job that comes before the next batch, if any; True when batches must wait."""
    if needs_restore(draft):
        _start_restore(draft)
        return True
    return any(_start_scheduled(draft, cadenced) for cadenced in SCHEDULED)


def _attempt(draft: Draft, kind: ArtifactKind, key: str) -> tuple[int | None, str | None]:
    """The next attempt for ``key`` (None: not now) and, when it is never again, why."""
    failed = [j for j in _jobs(draft, kind) if j.key == key and j.finished and not j.deleting]
    if any(j.key == key and not j.finished for j in _jobs(draft, kind)):
        return None, None
    if not failed:
        taken = {j.attempt for j in _jobs(draft, kind) if j.key == key}
        return (max(taken) + 1 if taken else 1), None
    last = max(failed, key=lambda j: j.attempt)
    outcome = kind.classify(last)
    policy = draft.spec.failure_policy
    if outcome.kind == "Permanent":
        return None, outcome.message
    if len(failed) > policy.max_retries_per_batch:
        return None, f"{len(failed)} attempts failed, the last one {outcome.reason}: {outcome.message}"
    delay = backoff_seconds(len(failed), base=policy.backoff_seconds, cap=policy.max_backoff_seconds)
    retry_at = (last.created or _EPOCH) + dt.timedelta(seconds=delay)
    if retry_at > draft.now:
        draft.wake_up_in((retry_at - draft.now).total_seconds())
        return None, None
    return last.attempt + 1, None


def _start_restore(draft: Draft) -> None:
    source = draft.spec.restore_from
    assert source is not None
    attempt, never = _attempt(draft, RESTORE, restore_key(source))
    if never is not None:
        message = (
            f"the restore of spec.restoreFrom {source} failed: {never}. Batches do not start: correct "
            "spec.restoreFrom (a new source is restored afresh) or remove it to start from nothing"
        )
        _condition(draft, RESTORED, "False", "RestoreFailed", message, warn=True)
        draft.hold = ("Halted", "RestoreFailed", message)
        return
    _existing_condition(draft, RESTORED)
    if attempt is not None:
        workload = RESTORE.build(restore_request(draft.run, attempt))
        draft.create = CreateWorkload(workload)
        draft.event(
            "ContinualTrainingRun",
            draft.name,
            "Normal",
            "RestoreStarted",
            f"Job {workload.name} restores {source}",
        )
    draft.hold = ("Pending", "RestorePending", f"batches wait for the restore of {source}")


def _start_scheduled(draft: Draft, cadenced: Cadenced) -> bool:
    spec = cadenced.spec(draft.spec)
    step = draft.completed_step()
    if spec is None or step is None:
        return False
    last = draft.run_fields.get(cadenced.status_field) or _status_field(draft, cadenced)
    if last is not None and last.get("globalStep") == step:
        _wake_at_next_tick(draft, spec)
        return False  # nothing new since the last one
    if not _due(draft, spec, last) or _given_up_on_start(draft, cadenced, f"s{step}"):
        return False
    attempt, never = _attempt(draft, cadenced.kind, f"s{step}")
    if attempt is None:
        if never is not None:
            message = (
                f"{cadenced.noun} of step {step} given up: {never}; the next one is tried at step > {step}"
            )
            _condition(draft, cadenced.condition, "False", f"{cadenced.noun}Failed", message, warn=True)
        return False
    workload = cadenced.kind.build(cadenced.request(draft.run, step, attempt))
    draft.create = CreateWorkload(workload)
    draft.run_event(
        "Normal", f"{cadenced.noun}Started", f"Job {workload.name}: {cadenced.noun.lower()} of step {step}"
    )
    return True


def batches_until_due(draft: Draft) -> int | None:
    """How many more batches may complete before an ``everyBatches`` snapshot or consolidation is due
    (at least 1; None: no ``everyBatches``). A coalesced Job trains no more, so that the artifact is of
    the step it would be with one Job per batch."""
    done = sum(1 for s in draft.statuses.values() if s.phase == "Succeeded")
    left = []
    for cadenced in SCHEDULED:
        spec = cadenced.spec(draft.spec)
        if spec is None or spec.every_batches is None:
            continue
        last = draft.run_fields.get(cadenced.status_field) or _status_field(draft, cadenced)
        left.append(max(1, spec.every_batches - (done - int((last or {}).get("batches") or 0))))
    return min(left) if left else None


def _due(draft: Draft, spec: Any, last: dict[str, Any] | None) -> bool:
    if spec.every_batches is not None:
        done = sum(1 for s in draft.statuses.values() if s.phase == "Succeeded")
        if done - int((last or {}).get("batches") or 0) >= spec.every_batches:
            return True
    if spec.schedule is not None:
        created = draft.run.metadata.creation_timestamp or draft.now
        if created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
        since = parse_time(last.get("time")) if last else None
        due = next_due(spec.schedule, spec.time_zone, since, created, draft.now)
        if due is not None and due <= draft.now:
            return True
        if due is not None:
            draft.wake_up_in((due - draft.now).total_seconds())
    return False


def _wake_at_next_tick(draft: Draft, spec: Any) -> None:
    """Nothing new to save: look again at the next tick (a new batch wakes the run anyway)."""
    if spec.schedule is None:
        return
    created = draft.run.metadata.creation_timestamp or draft.now
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    due = next_due(spec.schedule, spec.time_zone, draft.now, created, draft.now)
    if due is not None and due > draft.now:
        draft.wake_up_in((due - draft.now).total_seconds())
