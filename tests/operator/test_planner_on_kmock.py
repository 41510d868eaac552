"""The refusals and the start deadline through the handler layer, against kmock (issue 6, on a cluster).

What the reconciler reads (the namespace's runs, a Job's pod waiting for a Secret), what it decides
(:mod:`continual_operator.planning.refusals`, decision 13 of the planner) and what it sends: status patches, Job
deletions and Events. kmock runs no controllers: the tests play the kubelet by writing pod statuses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from kube_world import (
    BATCHES,
    JOBS,
    NS,
    PODS,
    RUN,
    RUNS,
    T0,
    KubeWorld,
    batch_body,
    condition,
    reconciler_of,
    result,
    run_body,
    status_of,
)

from continual_operator.cluster import handlers
from continual_operator.cluster.reconciler import Reconciler
from continual_operator.naming import job_name

JOB_1 = job_name(RUN, "b1", 1)
#: The reconcile clock: an hour after the objects were created.
NOW = T0 + dt.timedelta(hours=3)


@pytest.fixture
async def reconciler(world: KubeWorld) -> AsyncIterator[Reconciler]:
    async with reconciler_of(world, NOW) as reconciler:
        yield reconciler


@pytest.fixture
def memo(reconciler: Reconciler) -> kopf.Memo:
    return kopf.Memo(reconciler=reconciler)


def events(world: KubeWorld, reason: str) -> list[dict[str, Any]]:
    return [e for e in world.events() if e["reason"] == reason]


async def test_a_lora_change_after_training_is_refused_and_the_recorded_values_kept(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1"))
    world.add(BATCHES, batch_body("b2", created=1))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    recorded = status_of(world, RUNS, RUN)["trainedWith"]
    assert recorded["lora"]["r"] == 8 and recorded["storage"]["claim"] == "demo-data"

    world.patch(RUNS, RUN, {"spec": {"lora": {"r": 32}}, "metadata": {"generation": 2}})
    world.finish_job(JOB_1, exit_code=0, message=result("b1", 0, 6))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))

    assert world.names(JOBS) == [JOB_1]  # b1 recorded, b2 not started
    assert status_of(world, BATCHES, "b1")["phase"] == "Succeeded"
    run = status_of(world, RUNS, RUN)
    assert run["trainedWith"] == recorded
    degraded = condition(run, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SpecChangeRefused")
    assert "spec.lora.r: 8 -> 32" in degraded["message"]
    (event,) = events(world, "SpecChangeRefused")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == RUN


async def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    world.add(RUNS, run_body())
    second = run_body("second")
    second["metadata"]["creationTimestamp"] = (T0 + dt.timedelta(minutes=5)).isoformat()
    world.add(RUNS, second)
    world.add(BATCHES, batch_body("b1"))
    world.add(BATCHES, batch_body("s1", run="second"))

    await handlers.reconciler_of(memo).reconcile((NS, "second"))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))

    assert world.names(JOBS) == [JOB_1]
    degraded = condition(status_of(world, RUNS, "second"), "Degraded")
    assert degraded["reason"] == "VolumeInUse"
    assert f"belongs to ContinualTrainingRun {RUN}" in degraded["message"]
    assert status_of(world, RUNS, "second")["phase"] == "Halted"
    assert [e["involvedObject"]["name"] for e in events(world, "VolumeInUse")] == ["second"]

    # The holder is deleted (as the message offers): the second run takes the folder over at once.
    gone = world.get(RUNS, RUN)
    world.unstore(RUNS, RUN)
    await handlers.on_run_event(event={"type": "DELETED", "object": gone}, namespace=NS, name=RUN, memo=memo)
    assert job_name("second", "s1", 1) in world.names(JOBS)
    assert condition(status_of(world, RUNS, "second"), "Degraded")["status"] == "False"


async def test_a_batch_outside_the_volume_fails_with_an_event_and_no_job(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1", data={"path": "../../../../etc/passwd"}))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    assert world.names(JOBS) == []
    batch = status_of(world, BATCHES, "b1")
    assert (batch["phase"], batch["reason"]) == ("Failed", "DataPathOutsideVolume")
    (event,) = events(world, "DataPathOutsideVolume")
    assert event["type"] == "Warning" and "spec.data.path" in event["message"]


async def test_a_batch_waits_for_its_run_and_trains_when_it_appears(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    body = batch_body("b1", run="later")
    world.add(BATCHES, body)
    await handlers.on_batch_event(event={"type": "ADDED"}, body=body, namespace=NS, memo=memo)
    batch = status_of(world, BATCHES, "b1")
    assert (batch["phase"], batch["reason"]) == ("Queued", "RunNotFound")
    assert "ContinualTrainingRun later" in batch["message"]
    (event,) = events(world, "RunNotFound")
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "b1"
    # Another event about it says nothing new.
    await handlers.on_batch_event(event={"type": "MODIFIED"}, body=body, namespace=NS, memo=memo)
    assert len(events(world, "RunNotFound")) == 1

    world.add(RUNS, run_body("later"))
    await handlers.reconciler_of(memo).reconcile((NS, "later"))
    assert world.names(JOBS) == [job_name("later", "b1", 1)]
    assert status_of(world, BATCHES, "b1")["phase"] == "Training"


def waiting_pod(world: KubeWorld, job: str, *, created: dt.datetime, reason: str, message: str) -> None:
    """The kubelet's report of a pod whose trainer container cannot be created."""
    uid = f"uid-job-{job}"
    world.patch(JOBS, job, {"metadata": {"uid": uid}})
    template = (world.get(JOBS, job) or {})["spec"]["template"]["metadata"]
    world.add(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job}-pod",
                "namespace": NS,
                "labels": template["labels"],
                "annotations": template["annotations"],
                "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ownerReferences": [{"kind": "Job", "name": job, "uid": uid, "controller": True}],
            },
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}
                ],
            },
        },
    )


async def test_a_pod_waiting_for_a_missing_secret_is_shown_then_stopped(
    world: KubeWorld, reconciler: Reconciler, memo: kopf.Memo
) -> None:
    world.add(RUNS, run_body(failurePolicy={"startDeadlineSeconds": 60}))
    world.add(BATCHES, batch_body("b1"))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    waiting_pod(
        world, JOB_1, created=NOW, reason="CreateContainerConfigError", message='secret "hf-token" not found'
    )
    reconciler.clock["now"] = NOW + dt.timedelta(seconds=5)  # type: ignore[attr-defined]
    await reconciler.reconcile((NS, RUN))

    batch = status_of(world, BATCHES, "b1")
    assert (batch["phase"], batch["reason"]) == ("Training", "CreateContainerConfigError")
    assert 'secret "hf-token" not found' in batch["message"]
    (event,) = events(world, "CreateContainerConfigError")
    assert event["type"] == "Warning" and "hf-token" in event["message"]
    assert event["involvedObject"]["name"] == "b1"
    run = status_of(world, RUNS, RUN)
    assert run["phase"] == "Pending"
    assert condition(run, "Training")["reason"] == "CreateContainerConfigError"
    assert (NS, RUN) in reconciler._timers  # looked at again soon: pods have no watch

    reconciler.clock["now"] = NOW + dt.timedelta(seconds=61)  # type: ignore[attr-defined]
    await reconciler.reconcile((NS, RUN))
    deletes = [r for r in world.requests("DELETE", JOBS) if r.name == JOB_1]
    assert len(deletes) == 1 and deletes[0].params.get("propagationPolicy") == "Foreground"
    batch = status_of(world, BATCHES, "b1")
    assert (batch["phase"], batch["reason"], batch["failures"]) == ("Queued", "StartDeadlineExceeded", 1)
    assert batch["nextAttemptTime"] == "2025-03-01T12:01:31Z"
    assert events(world, "Retrying")


def test_trainer_progress_patches_reach_no_handler() -> None:
    # kopf logs every handler call at INFO: the trainer's status patch (one per progress update) and the
    # operator's own batch status patches are filtered out before a handler is called.
    progress = {"type": "MODIFIED", "object": run_body(status={"globalStep": 3, "observedGeneration": 1})}
    assert not handlers.run_event_matters(event=progress)
    assert handlers.run_event_matters(event={"type": "DELETED"})
    # A spec change (generation ahead of observedGeneration) and the start-up listing do reconcile.
    edited = run_body(status={"globalStep": 3, "observedGeneration": 1})
    edited["metadata"]["generation"] = 2
    assert handlers.run_event_matters(event={"type": "MODIFIED", "object": edited})
    assert handlers.run_event_matters(event={"type": None, "object": progress["object"]})
    own_patch = batch_body("b1", status={"phase": "Training", "observedGeneration": 1})
    assert not handlers.batch_event_matters(event={"type": "MODIFIED"}, body=own_patch)
    assert handlers.batch_event_matters(event={"type": "ADDED"}, body=own_patch)
    registry = handlers.build_registry(handlers.OperatorOptions())
    filters = {h.id: h.when for h in registry._watching.get_all_handlers()}
    assert filters["run-event"] is handlers.run_event_matters
    assert filters["batch-event"] is handlers.batch_event_matters


async def test_a_snapshot_job_runs_between_batches_and_its_result_lands_in_the_run_status(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    """Through the handler, the reconciler and the cluster executor: serialized with training."""
    snapshots = {"everyBatches": 1, "destination": "s3://backups/demo/"}
    world.add(RUNS, run_body(snapshots=snapshots, objectStore={"credentialsSecretRef": {"name": "s3-creds"}}))
    world.add(BATCHES, batch_body("b1"))
    world.add(BATCHES, batch_body("b2", created=1))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    world.finish_job(JOB_1, exit_code=0, message=result("b1", 0, 6))
    await handlers.reconciler_of(memo).reconcile((NS, RUN))

    snapshot = "demo-snapshot-s6-a1"
    assert world.names(JOBS) == [JOB_1, snapshot]  # not b2's Job: the snapshot holds the volume
    job = world.get(JOBS, snapshot)
    assert job is not None and job["metadata"]["labels"]["continual.dev/kind"] == "snapshot"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["python", "-m", "continual_trainer.snapshot", "create"]
    assert {e["name"] for e in container["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert condition(status_of(world, RUNS, RUN), "Training")["reason"] == "SnapshotRunning"

    message = (
        '{"kind": "snapshot", "uri": "s3://backups/demo/20250301T120000Z-step00000006/", '
        '"snapshotId": "20250301T120000Z-step00000006", "globalStep": 6, "batches": 1, "files": 7, '
        '"bytes": 4096, "completedAt": "2025-03-01T12:00:00Z", "retired": [], "swept": []}'
    )
    world.finish_job(snapshot, exit_code=0, message=message)
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    run = status_of(world, RUNS, RUN)
    assert run["lastSnapshot"]["snapshotId"] == "20250301T120000Z-step00000006"
    assert condition(run, "Snapshots")["reason"] == "SnapshotCompleted"
    assert snapshot not in world.names(JOBS)  # recorded, then deleted
    assert job_name(RUN, "b2", 1) in world.names(JOBS)  # and b2 trains
