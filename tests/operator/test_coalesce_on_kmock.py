"""Coalesced batches through the cluster executor, against kmock: one Job, its config, each batch's status.

The handler layer reads a coalesced Job back from its labels and the ``continual.dev/next-batches``
annotation, and records every batch from the Job's ``JobResult`` termination message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kube_world import (
    BATCHES,
    JOBS,
    NS,
    RUN,
    RUNS,
    KubeWorld,
    batch_body,
    reconciler_of,
    run_body,
    status_of,
    trainer_config_of,
)

from continual_operator.cluster.reconciler import Reconciler
from continual_operator.naming import ANNOTATION_NEXT_BATCHES, job_name
from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult, JobResult

JOB_1 = job_name(RUN, "b1", 1)


@pytest.fixture
async def reconciler(world: KubeWorld) -> AsyncIterator[Reconciler]:
    async with reconciler_of(world) as reconciler:
        yield reconciler


def done(batch: str, start: int, end: int, outcome: str = "Succeeded") -> BatchResult:
    return BatchResult(
        batch_id=batch, outcome=outcome, start_step=start, end_step=end, samples=8, mean_loss=2.0
    )


async def test_three_queued_batches_get_one_job_and_each_its_own_status(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    world.add(RUNS, run_body(training={"maxBatchesPerJob": 3}))
    for minutes, name in enumerate(("b1", "b2", "b3", "b4")):
        world.add(BATCHES, batch_body(name, created=minutes))

    await reconciler.reconcile((NS, RUN))

    assert world.names(JOBS) == [JOB_1]
    job = world.get(JOBS, JOB_1)
    assert job is not None
    assert job["metadata"]["annotations"][ANNOTATION_NEXT_BATCHES] == "b2,b3"
    config = trainer_config_of(job)
    assert [config["batch"]["id"], *(b["id"] for b in config["nextBatches"])] == ["b1", "b2", "b3"]
    assert [status_of(world, BATCHES, b)["phase"] for b in ("b1", "b2", "b3", "b4")] == [
        "Training",
        "Training",
        "Training",
        "Queued",
    ]
    await reconciler.reconcile((NS, RUN))  # read back: the same Job, nothing new
    assert world.names(JOBS) == [JOB_1]

    # Preempted in b3: b1 and b2 complete, b3 resumes first in the next Job, b4 after it.
    results = [done("b1", 0, 4), done("b2", 4, 8), done("b3", 8, 10, "Preempted")]
    message = JobResult(exit_code=int(ExitCode.PREEMPTED), results=results).to_termination_message()
    world.finish_job(JOB_1, exit_code=ExitCode.PREEMPTED, message=message)
    await reconciler.reconcile((NS, RUN))

    b1, b2, b3 = (status_of(world, BATCHES, b) for b in ("b1", "b2", "b3"))
    assert (b1["phase"], b1["startStep"], b1["endStep"]) == ("Succeeded", 0, 4)
    assert (b2["phase"], b2["startStep"], b2["endStep"], b2["checkpoint"]) == (
        "Succeeded",
        4,
        8,
        "checkpoints/checkpoint-8",
    )
    assert (b3["phase"], b3["attempts"], b3["preemptions"]) == ("Training", 2, 1)
    assert status_of(world, RUNS, RUN)["completedStep"] == 8
    second = job_name(RUN, "b3", 2)
    assert world.names(JOBS) == sorted([JOB_1, second])
    assert world.get(JOBS, second)["metadata"]["annotations"][ANNOTATION_NEXT_BATCHES] == "b4"  # type: ignore[index]
