"""Decider: queue order (decisions 1, 3 and 12 for batches) -- which batch trains next, as which attempt.

Batches train by explicit ``spec.order``, then creation time, then name
(:func:`~continual_operator.planning.draft.batch_order_key`). The next batch that is neither finished nor
deleted gets the next attempt (or the same one again, when its Job disappeared or a suspend stopped it);
the train kind builds its workload, and the batch is marked Training *before* the workload is created.
No Event says so (the status does, and a batch's one Normal Event comes at its end, naming its Job, attempt
and duration: one Event per batch, not two).
A batch whose ``data.path`` resolves outside the volume fails permanently without a workload.

**Coalescing**: the batches queued right after it, in order, ride in the same workload, up to
``spec.training.maxBatchesPerJob`` in all (:func:`coalesced_batches`); they are marked Training with its
Job, their attempts counted when the Job reaches them (:func:`~.attempts.record_coalesced`).
"""

from __future__ import annotations

import posixpath

from continual_operator.api import TrainingBatch
from continual_operator.naming import batch_id
from continual_operator.planning.actions import CreateWorkload
from continual_operator.planning.artifacts import batches_until_due
from continual_operator.planning.draft import Draft
from continual_operator.planning.lease import SUSPENDED
from continual_operator.planning.refusals import Refusal, batch_path_refusal
from continual_operator.planning.status import RUN_NOT_FOUND, parse_time
from continual_operator.workloads.gang import Engine, Gang
from continual_operator.workloads.train import TRAIN, TrainRequest

TERMINAL = frozenset({"Succeeded", "Failed"})
#: Re-check soon when a Job name is still taken by a Job that is going away.
NAME_TAKEN_REQUEUE_SECONDS = 5.0


def mark_new_batches_queued(draft: Draft) -> None:
    """A batch nobody has looked at yet says so (``kubectl get tbatch`` shows Queued, not a blank); so does
    one that waited for its run to be created."""
    for batch in draft.batches:
        name = batch.metadata.name
        status = draft.statuses[name]
        waited_for_run = status.phase == "Queued" and status.reason == RUN_NOT_FOUND
        if (status.phase is None or waited_for_run) and batch.metadata.deletion_timestamp is None:
            draft.update(
                name,
                phase="Queued",
                reason="Queued",
                message="waiting for its turn: batches train one at a time, in order",
            )


def start_next(draft: Draft) -> None:
    """Build the next batch's attempt (at most one), or note when the next one waits for its back-off."""
    for index, batch in enumerate(draft.batches):
        name = batch.metadata.name
        status = draft.statuses[name]
        if status.phase in TERMINAL or batch.metadata.deletion_timestamp is not None:
            continue
        if draft.context.check_paths and (refusal := batch_path_refusal(draft.run, batch)) is not None:
            _refuse_batch(draft, name, refusal)
            if draft.spec.failure_policy.on_permanent_failure == "Halt":
                return
            continue
        if status.phase == "Training" or (status.phase == "Queued" and status.reason == SUSPENDED):
            # Its Job disappeared, or was stopped by a suspend: create the same attempt again.
            attempt = max(status.attempts or 0, 1)
        else:
            retry_at = parse_time(status.next_attempt_time)
            if retry_at is not None and retry_at > draft.now:
                draft.waiting = (name, retry_at)
                draft.wake_up_in((retry_at - draft.now).total_seconds())
                return
            attempt = (status.attempts or 0) + 1
        job = TRAIN.job_name(draft.name, name, attempt)
        if any(j.name == job for j in draft.workloads):
            draft.wake_up_in(NAME_TAKEN_REQUEUE_SECONDS)  # a Job of that name is still being deleted
            return
        failed = tuple(
            batch_id(b.metadata.name)
            for b in draft.batches
            if draft.statuses[b.metadata.name].phase == "Failed"
        ) + tuple(draft.removed_failed)
        after = coalesced_batches(draft, index, job)
        engine = _engine(draft)
        workload = TRAIN.build(TrainRequest(draft.run, batch, attempt, failed, tuple(after), engine))
        draft.create = CreateWorkload(workload, abandon_batches=failed)
        message = f"attempt {attempt}: Job {job}"
        if after:
            message += f" (coalesced: it trains {len(after)} more queued batch(es) after this one)"
        draft.update(
            name,
            phase="Training",
            attempts=attempt,
            job=job,
            world_size=Gang.of(draft.spec.resources).world_size,
            reason="Started",
            message=message,
            next_attempt_time=None,
        )
        for follower in after:
            coalesced = f"coalesced into Job {job}: it trains after batch {name}, in the same process"
            draft.update(
                follower.metadata.name,
                phase="Training",
                job=job,
                reason="Started",
                message=coalesced,
                next_attempt_time=None,
            )
        return


def _engine(draft: Draft) -> Engine:
    """The shape of the run's attempts (the run's refusals have made sure that one exists)."""
    nodes = draft.spec.resources.nodes
    engine = draft.context.engines.engine_for(nodes) if draft.context.engines is not None else None
    if engine is None and nodes != 1:
        raise ValueError(f"no engine runs {nodes} nodes: multi_node_refusal should have refused the run")
    return engine or "job"


def coalesced_batches(draft: Draft, first: int, job: str) -> list[TrainingBatch]:
    """The batches queued right after ``draft.batches[first]`` that its Job trains too, in order.

    Up to ``spec.training.maxBatchesPerJob`` in all (1: none), and no more than may complete before an
    ``everyBatches`` snapshot or consolidation is due (it runs between Jobs, at the step it would with
    one Job per batch). Batches that are finished or being deleted are passed over, as the queue does;
    the first one that is not ready to start now (a retry waiting for its back-off, a path the queue
    refuses) ends the group, so that nothing overtakes it. Batches whose data the trainer would confine
    to different folders (local mode's ``--inbox`` beside the volume,
    :attr:`~.draft.PlanContext.data_roots`) cannot share a process: the group ends there too.
    """
    limit = draft.spec.training.max_batches_per_job
    if (until_artifact := batches_until_due(draft)) is not None:
        limit = min(limit, until_artifact)
    roots = {root for root in [_data_root(draft, draft.batches[first])] if root is not None}
    after: list[TrainingBatch] = []
    for batch in draft.batches[first + 1 :]:
        if len(after) + 1 >= limit:
            break
        status = draft.statuses[batch.metadata.name]
        if status.phase in TERMINAL or batch.metadata.deletion_timestamp is not None:
            continue
        retry_at = parse_time(status.next_attempt_time)
        if (
            status.phase not in (None, "Queued", "Training")
            or (status.phase == "Training" and status.job != job)
            or (retry_at is not None and retry_at > draft.now)
            or (draft.context.check_paths and batch_path_refusal(draft.run, batch) is not None)
        ):
            break
        root = _data_root(draft, batch)
        if root is not None and roots and root not in roots:
            break
        roots |= {root} if root is not None else set()
        after.append(batch)
    return after


def _data_root(draft: Draft, batch: TrainingBatch) -> str | None:
    """The folder the trainer confines a batch's data to (None: uri data, read from the store)."""
    path = batch.spec.data.path
    if path is None:
        return None
    if not posixpath.isabs(path):
        return ""  # in the run folder, on the volume
    return next((r for r in draft.context.data_roots if posixpath.commonpath([r, path]) == r), "")


def _refuse_batch(draft: Draft, batch: str, refusal: Refusal) -> None:
    """A batch that may not train fails permanently, without a workload (decision 12)."""
    draft.update(
        batch, phase="Failed", reason=refusal.reason, message=refusal.message, next_attempt_time=None
    )
    draft.event("TrainingBatch", batch, "Warning", refusal.reason, refusal.message)
