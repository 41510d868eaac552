"""Multi-node batches through the handler layer, against kmock (issue 9): engine discovery, then the
cluster executor creating, reading back, classifying and deleting a gang on either engine.

kmock serves discovery (``/version`` answers 1.26; ``/apis/<group>`` lists the groups of the resources it
is told about) and stores what it is sent. It runs no JobSet or Job controller and no kubelet: the tests
write the gang's pods and the workload's terminal condition themselves, as those controllers would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from kube_world import (
    BATCHES,
    CONFIG_MAPS,
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
    status_of,
)
from kube_world import run_body as _run_body

from continual_operator.api import ObjectMeta
from continual_operator.cluster import handlers
from continual_operator.cluster.engines import RECHECK_MISSING_SECONDS
from continual_operator.cluster.executor import ClusterExecutor
from continual_operator.cluster.k8s import Subject
from continual_operator.cluster.reconciler import Reconciler
from continual_operator.naming import ANNOTATION_TRAINER_CONFIG, job_name
from continual_operator.workloads.gang import COMPLETION_INDEX_ANNOTATION
from continual_operator.workloads.gang_views import JOBSET_RESTART_LABEL
from continual_trainer.records import BatchResult

JOBSETS = kmock.resource("jobset.x-k8s.io", "v1alpha2", "jobsets")
SERVICES = kmock.resource("", "v1", "services")
NOW = T0 + dt.timedelta(hours=3)
JOB_1 = job_name(RUN, "b1", 1)
JOB_2 = job_name(RUN, "b1", 2)


@pytest.fixture
def world(kmock: kmock.KubernetesEmulator) -> KubeWorld:
    world = KubeWorld(kmock)
    world.server.resources[SERVICES] = kmock.ResourceInfo(
        kind="Service", namespaced=True, verbs={"create", "delete"}
    )
    return world


def serve_jobset(world: KubeWorld) -> None:
    """JobSet's CRD is installed: its API group is discovered."""
    world.server.resources[JOBSETS] = kmock.ResourceInfo(
        kind="JobSet", namespaced=True, verbs={"get", "list", "watch", "create", "patch", "delete"}
    )


@pytest.fixture
async def reconciler(world: KubeWorld) -> AsyncIterator[Reconciler]:
    async with reconciler_of(world, NOW) as reconciler:
        yield reconciler


def run_body(**spec: Any) -> dict[str, Any]:
    return _run_body(resources={"gpus": 0, "nodes": 2}, **spec)


def seed(world: KubeWorld, **spec: Any) -> None:
    world.add(RUNS, run_body(**spec))
    world.add(BATCHES, batch_body("b1"))


def gang_pod(
    world: KubeWorld,
    template: dict[str, Any],
    index: int,
    *,
    exit_code: int | None,
    message: str = "",
    finished: str = "2025-03-01T11:10:00Z",
    restart: int = 0,
) -> None:
    """Pod ``index`` of a gang, as the Job controller makes it and the kubelet reports it."""
    meta = template["metadata"]
    labels = dict(meta["labels"]) | {JOBSET_RESTART_LABEL: str(restart)}
    state: dict[str, Any] = (
        {"running": {"startedAt": "2025-03-01T11:00:05Z"}}
        if exit_code is None
        else {"terminated": {"exitCode": exit_code, "message": message, "finishedAt": finished}}
    )
    world.add(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"gang-{restart}-{index}",
                "namespace": NS,
                "labels": labels,
                "annotations": dict(meta["annotations"]) | {COMPLETION_INDEX_ANNOTATION: str(index)},
                "creationTimestamp": "2025-03-01T11:00:01Z",
            },
            "status": {
                "phase": "Running" if exit_code is None else ("Succeeded" if exit_code == 0 else "Failed"),
                "containerStatuses": [{"name": "trainer", "state": state}],
            },
        },
    )


def jobset_pod_template(jobset: dict[str, Any]) -> dict[str, Any]:
    return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]  # type: ignore[no-any-return]


def coordinator_result(exit_code: int, outcome: str, reason: str) -> str:
    return BatchResult(
        batch_id="b1", outcome=outcome, exit_code=exit_code, reason=reason, message="m"
    ).to_termination_message()


# -- engine discovery -----------------------------------------------------------------------------------
async def test_without_jobset_or_indexed_jobs_the_run_is_refused_naming_what_to_install(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    """Kubernetes 1.20 (no JobSet, no Indexed Jobs before 1.21): nothing starts, the run says why."""
    world.server["get /version"] << {"major": "1", "minor": "20"}
    seed(world)

    await reconciler.reconcile((NS, RUN))

    assert world.requests("POST", JOBS) == []
    run = status_of(world, RUNS, RUN)
    degraded = condition(run, "Degraded")
    assert (degraded["reason"], run["phase"]) == ("MultiNodeUnavailable", "Halted")
    for needed in (
        "Kubernetes 1.20",
        "JobSet",
        "jobset.x-k8s.io/v1alpha2",
        "1.24",
        "spec.resources.nodes: 1",
    ):
        assert needed in degraded["message"], degraded["message"]
    warnings = [e for e in world.events() if e["reason"] == "MultiNodeUnavailable"]
    assert [e["type"] for e in warnings] == ["Warning"]
    assert world.names(JOBSETS) == [] and world.names(SERVICES) == []
    assert status_of(world, BATCHES, "b1").get("phase") != "Training"

    # Cached: a second reconcile does not ask again.
    await reconciler.reconcile((NS, RUN))
    assert len([r for r in world.server if r.url.path == "/version"]) == 1


async def test_a_server_that_drops_completion_mode_in_a_dry_run_gets_no_indexed_jobs(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    """1.21 without the IndexedJob gate: the dry run's answer lacks the field, so no Indexed Job is made."""
    world.server["get /version"] << {"major": "1", "minor": "21"}
    world.server["post", JOBS] << (lambda request: {**request.data, "spec": {"completions": 1}})
    seed(world)

    await reconciler.reconcile((NS, RUN))

    (probe,) = world.requests("POST", JOBS)
    assert probe.params.get("dryRun") == "All"  # a dry run: nothing is stored on a real server
    assert condition(status_of(world, RUNS, RUN), "Degraded")["reason"] == "MultiNodeUnavailable"


async def test_a_feature_gated_server_that_keeps_completion_mode_gets_indexed_jobs(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    world.server["get /version"] << {"major": "1", "minor": "22"}
    world.server["post", JOBS][:1] << (lambda request: request.data)  # the dry run keeps the field
    seed(world)

    await reconciler.reconcile((NS, RUN))

    assert [r.params.get("dryRun") for r in world.requests("POST", JOBS)] == ["All", None]
    assert JOB_1 in world.names(JOBS)  # (kmock stores the dry run's Job too: it ignores dryRun)
    assert world.get(JOBS, JOB_1)["spec"]["completionMode"] == "Indexed"  # type: ignore[index]


# -- JobSet ---------------------------------------------------------------------------------------------
async def test_a_jobset_gang_is_created_once_read_back_and_recorded_from_the_coordinator(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    serve_jobset(world)
    seed(world, scheduling={"kueueQueueName": "gpus"})

    await reconciler.reconcile((NS, RUN))
    await reconciler.reconcile((NS, RUN))  # read back: no second create, no Job of its own

    assert world.names(JOBSETS) == [JOB_1] and world.names(JOBS) == []
    assert len(world.requests("POST", JOBSETS)) == 1
    jobset = world.get(JOBSETS, JOB_1)
    assert jobset is not None
    meta = jobset["metadata"]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpus" and jobset["spec"]["suspend"] is True
    assert [(o["kind"], o["name"]) for o in meta["ownerReferences"]] == [("ContinualTrainingRun", RUN)]
    # the trainer config travels in the gang's pod template (no ConfigMap per attempt)
    assert world.names(CONFIG_MAPS) == []
    assert ANNOTATION_TRAINER_CONFIG in jobset_pod_template(jobset)["metadata"]["annotations"]
    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["job"], b1["worldSize"]) == ("Training", JOB_1, 2)
    # An executor without the view lists the run's JobSets itself where JobSet is served.
    unviewed = ClusterExecutor(reconciler.storage, Subject(ObjectMeta(name=RUN, namespace=NS)), jobsets=True)
    (view,) = await unviewed.workloads()
    assert (view.name, view.owned, view.world_size) == (JOB_1, (("JobSet", JOB_1),), 2)

    # The JobSet completed: the coordinator (index 0) speaks, rank 1's message is not read.
    template = jobset_pod_template(jobset)
    gang_pod(world, template, 0, exit_code=0, message=result("b1", 0, 6))
    gang_pod(world, template, 1, exit_code=0, message="not a result")
    world.patch(JOBSETS, JOB_1, {"status": {"conditions": [{"type": "Completed", "status": "True"}]}})
    await reconciler.reconcile((NS, RUN))

    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["endStep"], b1["attempts"]) == ("Succeeded", 6, 1)


async def test_a_failed_jobset_is_classified_by_the_first_failed_pod_retried_and_deleted(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    """Rank 1's pod is SIGKILLed first; the coordinator, stopped after it, reports Preempted: the attempt
    counts as a failure (not a free preemption), the gang is restarted as attempt 2 after the back-off;
    a suspend deletes the running JobSet (its pods first)."""
    serve_jobset(world)
    seed(world)
    await reconciler.reconcile((NS, RUN))
    template = jobset_pod_template(world.get(JOBSETS, JOB_1))  # type: ignore[arg-type]
    gang_pod(world, template, 1, exit_code=137, finished="2025-03-01T11:05:00Z")
    preempted = coordinator_result(85, "Preempted", "Preempted")
    # torchrun exits 1 whatever its worker's code
    gang_pod(world, template, 0, exit_code=1, message=preempted, finished="2025-03-01T11:05:09Z")
    world.patch(JOBSETS, JOB_1, {"status": {"conditions": [{"type": "Failed", "status": "True"}]}})

    await reconciler.reconcile((NS, RUN))

    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["reason"], b1["failures"]) == ("Queued", "ExitCode137", 1), b1
    assert not b1.get("preemptions")
    reconciler.clock["now"] = NOW + dt.timedelta(minutes=1)  # type: ignore[attr-defined]  # the back-off ends
    await reconciler.reconcile((NS, RUN))
    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["attempts"], b1["job"]) == ("Training", 2, JOB_2)
    assert world.names(JOBSETS) == [JOB_1, JOB_2]  # the failed one kept a while, for kubectl logs

    # Suspended: the running gang is deleted, pods first (Foreground).
    world.patch(RUNS, RUN, {"spec": {"suspend": True}, "metadata": {"generation": 2}})
    await reconciler.reconcile((NS, RUN))
    deletes = [(r.name, r.params.get("propagationPolicy")) for r in world.requests("DELETE", JOBSETS)]
    assert deletes == [(JOB_2, "Foreground")]
    assert world.requests("DELETE", CONFIG_MAPS) == []  # it has none: its config is in its pod template


async def test_a_gang_still_checkpointing_holds_the_volume(world: KubeWorld, reconciler: Reconciler) -> None:
    """The JobSet failed at its first failed pod while the coordinator still saves: no new attempt yet."""
    serve_jobset(world)
    seed(world)
    await reconciler.reconcile((NS, RUN))
    template = jobset_pod_template(world.get(JOBSETS, JOB_1))  # type: ignore[arg-type]
    gang_pod(world, template, 1, exit_code=137)
    gang_pod(world, template, 0, exit_code=None)  # still running
    world.patch(JOBSETS, JOB_1, {"status": {"conditions": [{"type": "Failed", "status": "True"}]}})

    await reconciler.reconcile((NS, RUN))

    assert world.names(JOBSETS) == [JOB_1]
    assert status_of(world, BATCHES, "b1")["attempts"] == 1


# -- Indexed Job + headless Service -----------------------------------------------------------------------
async def test_without_jobset_an_indexed_job_and_its_service_run_the_gang(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    seed(world, scheduling={"kueueQueueName": "gpus"})

    await reconciler.reconcile((NS, RUN))

    posts = [
        (r.resource, r.data["metadata"]["name"])
        for r in world.server
        if r.method == "POST" and r.resource in (JOBS, SERVICES)
    ]
    assert posts == [(SERVICES, JOB_1), (JOBS, JOB_1)]  # the Service first: the Job's pods need its DNS
    job = world.get(JOBS, JOB_1)
    assert job is not None
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert "kueue.x-k8s.io/queue-name" not in world.get(SERVICES, JOB_1)["metadata"]["labels"]  # type: ignore[index]

    # One pod crashed: the Job failed (backoffLimit 0) and its other pod was stopped: a gang restart.
    uid = "uid-job-1"
    failed = {"conditions": [{"type": "Failed", "status": "True"}]}
    # (Kueue admitted it: unsuspended)
    world.patch(JOBS, JOB_1, {"metadata": {"uid": uid}, "spec": {"suspend": False}, "status": failed})
    template = job["spec"]["template"]
    gang_pod(world, template, 0, exit_code=1, message=coordinator_result(75, "Failed", "RankLost"))
    gang_pod(world, template, 1, exit_code=139, finished="2025-03-01T11:09:00Z")
    await reconciler.reconcile((NS, RUN))

    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["reason"], b1["failures"]) == ("Queued", "ExitCode139", 1), b1  # rank 1 first
    reconciler.clock["now"] = NOW + dt.timedelta(minutes=1)  # type: ignore[attr-defined]  # the back-off ends
    await reconciler.reconcile((NS, RUN))
    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["attempts"], b1["worldSize"]) == ("Training", 2, 2)
    assert JOB_2 in world.names(JOBS) and world.names(SERVICES) == [JOB_1, JOB_2]

    world.patch(RUNS, RUN, {"spec": {"suspend": True}, "metadata": {"generation": 2}})
    await reconciler.reconcile((NS, RUN))
    deleted = [
        (r.resource, r.name, r.params.get("propagationPolicy")) for r in world.server if r.method == "DELETE"
    ]
    assert deleted == [
        (JOBS, JOB_2, "Foreground"),
        (SERVICES, JOB_2, "Background"),
    ]


# -- the watch ------------------------------------------------------------------------------------------
async def test_the_jobset_index_keeps_a_slim_jobset_under_its_run() -> None:
    body = {
        "kind": "JobSet",
        "metadata": {"name": JOB_1, "labels": {"continual.dev/run": RUN}, "managedFields": [{}]},
        "spec": {"suspend": True, "replicatedJobs": [{"name": "node", "template": {}}]},
        "status": {"conditions": [{"type": "Completed", "status": "True"}]},
    }
    kept = await handlers.index_jobset(body=body, namespace=NS, memo=handlers.kopf.Memo())
    assert kept == {
        (NS, RUN): {
            "kind": "JobSet",
            "metadata": {"name": JOB_1, "labels": {"continual.dev/run": RUN}},
            "spec": {"suspend": True},
            "status": body["status"],
        }
    }


async def test_a_jobset_installed_later_is_used_once_the_answer_is_rechecked(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    world.server["get /version"] << {"major": "1", "minor": "20"}
    seed(world)
    ticks = {"now": 0.0}
    reconciler.engines.clock = lambda: ticks["now"]
    await reconciler.reconcile((NS, RUN))
    assert condition(status_of(world, RUNS, RUN), "Degraded")["reason"] == "MultiNodeUnavailable"

    serve_jobset(world)  # JobSet installed
    ticks["now"] = RECHECK_MISSING_SECONDS - 1
    await reconciler.reconcile((NS, RUN))
    assert world.names(JOBSETS) == []  # the cached answer still holds
    ticks["now"] = RECHECK_MISSING_SECONDS + 1
    await reconciler.reconcile((NS, RUN))

    assert world.names(JOBSETS) == [JOB_1]
    assert condition(status_of(world, RUNS, RUN), "Degraded")["reason"] == "Healthy"


async def test_a_finished_jobset_whose_pods_the_view_holds_as_running_is_read_with_fresh_pods(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    """The JobSet's watch said Completed before the pod watch delivered the coordinator's end: the
    executor lists the pods once instead of waiting for a trigger that would not come."""
    serve_jobset(world)
    seed(world)
    await reconciler.reconcile((NS, RUN))
    jobset = world.get(JOBSETS, JOB_1)
    assert jobset is not None
    template = jobset_pod_template(jobset)
    gang_pod(world, template, 0, exit_code=None)
    gang_pod(world, template, 1, exit_code=None)
    stale = [p for p in (world.get(PODS, f"gang-0-{i}") for i in (0, 1)) if p is not None]
    gang_pod(world, template, 0, exit_code=0, message=result("b1", 0, 6))  # what the API server has now
    gang_pod(world, template, 1, exit_code=0)
    jobset["status"] = {"conditions": [{"type": "Completed", "status": "True"}]}
    executor = ClusterExecutor(
        reconciler.storage, Subject(ObjectMeta(name=RUN, namespace=NS)), seen=([jobset], stale)
    )

    listed = len(world.requests("GET", PODS))
    (view,) = await executor.workloads()

    assert (view.name, view.phase, view.exit_code) == (JOB_1, "Succeeded", 0)
    assert len(world.requests("GET", PODS)) == listed + 1


@pytest.mark.parametrize(
    ("event", "phase", "index", "reconciles"),
    [
        ("MODIFIED", "Failed", "0", True),  # a gang pod ended: its attempt may be over now
        ("MODIFIED", "Succeeded", "1", True),
        ("DELETED", "Running", "0", True),  # stopped by the Job controller, and gone
        ("MODIFIED", "Running", "0", False),
        ("MODIFIED", "Failed", None, False),  # a one-node Job's pod: the Job's own event follows it
    ],
)
def test_a_gang_pod_that_ends_triggers_a_reconcile(
    event: str, phase: str, index: str | None, reconciles: bool
) -> None:
    annotations = {COMPLETION_INDEX_ANNOTATION: index} if index is not None else {}
    body = {"metadata": {"annotations": annotations}, "status": {"phase": phase}}
    assert handlers.pod_event_matters(event={"type": event}, body=body) is reconciles
