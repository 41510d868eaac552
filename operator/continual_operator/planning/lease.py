"""Decider: the writer lease (decisions 2 and 8).

One writer per volume: a workload of any kind that writes the volume (:attr:`~continual_operator.workloads.
kinds.WorkloadKind.writes_volume`) holds the lease until its Job has finished -- running, waiting for Kueue,
or being deleted while its pod checkpoints. While one holds it nothing else starts; the trainer's lock on
the volume is the second line of defence. On suspend every holder is stopped with foreground deletion
(SIGTERM, a checkpoint, exit 85), and keeps the lease until its pod is gone.
"""

from __future__ import annotations

from continual_operator.planning.draft import Draft
from continual_operator.workloads.views import JobView

SUSPENDED = "Suspended"


def may_start(draft: Draft, writers: list[JobView], halting: str | None) -> bool:
    """A new workload may start: nobody holds the lease, the run is not suspended, halted or refused."""
    return not draft.spec.suspend and halting is None and not writers and draft.refusal is None


def suspend(draft: Draft, writers: list[JobView]) -> None:
    """Stop every lease holder so that it checkpoints; batches that trained show Queued (Suspended)."""
    for job in writers:
        if job.deleting:
            continue
        draft.delete(job, reason=SUSPENDED, propagation="Foreground")
        then = (
            f"so that it checkpoints; batch {job.batch} resumes from that checkpoint"
            if job.batch
            else f"({job.kind}: it commits nothing half-done); it runs again"
        )
        draft.run_event(
            "Normal",
            "Suspending",
            f"spec.suspend is true: stopping Job {job.name} {then} when spec.suspend is false",
        )
    # A batch whose Job is being stopped (or is gone) no longer shows Training; being deleted, that Job
    # is never recorded, and the same attempt is created again on resume (see queue.start_next).
    running = {j.name for j in draft.jobs if not j.deleting}
    for batch in draft.batches:
        name = batch.metadata.name
        status = draft.statuses[name]
        if status.phase == "Training" and status.job not in running:
            draft.update(
                name,
                phase="Queued",
                reason=SUSPENDED,
                message=f"run {draft.name} is suspended (spec.suspend is true): attempt {status.attempts} "
                "stopped at its last checkpoint and resumes from it when spec.suspend is false",
            )
