"""The operator reads from its watch-fed view: a reconcile of one run never lists anything, nor reads
another run's objects; it waits for its own last writes and reads afresh only what the watch has not
delivered; per-run objects are created once per run.

The first test runs kopf itself against kmock and tells the operator's own requests (the ``kubernetes``
client) from kopf's watches (aiohttp) by their User-Agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes
import pytest
from kube_world import (
    BATCHES,
    JOBS,
    NS,
    PODS,
    ROLE_BINDINGS,
    ROLES,
    RUN,
    RUNS,
    SERVICE_ACCOUNTS,
    KubeWorld,
    batch_body,
    result,
    run_body,
)

from continual_operator.cluster import handlers
from continual_operator.cluster.k8s import BATCHES as BATCH_KIND
from continual_operator.cluster.k8s import JOBS as JOB_KIND
from continual_operator.cluster.k8s import RUNS as RUNS_KIND
from continual_operator.cluster.k8s import KubernetesStorage, writing_for
from continual_operator.cluster.reconciler import Reconciler
from continual_operator.cluster.view import WatchView
from continual_operator.errors import ConflictError
from continual_operator.naming import job_name

OTHER = "other"


@pytest.fixture
def world(kmock: kmock.KubernetesEmulator) -> KubeWorld:
    return KubeWorld(kmock)


def _operator_requests(world: KubeWorld) -> list[Any]:
    """The requests of the operator's own client (kopf's watches use aiohttp, the test its own agent)."""
    return [r for r in world.server if r.headers.get("User-Agent", "").startswith("OpenAPI-Generator")]


async def _as_the_cluster(world: KubeWorld, method: str, path: str, body: dict[str, Any]) -> None:
    """A write by the Job controller or the kubelet, over HTTP, so that kopf's watches see it."""
    client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=world.url))
    client.user_agent = "the-cluster"
    content = "application/merge-patch+json" if method == "PATCH" else "application/json"
    try:
        await asyncio.to_thread(
            client.call_api,
            *client.param_serialize(
                method=method, resource_path=path, body=body, header_params={"Content-Type": content}
            ),
        )
    finally:
        client.close()


async def _finish(world: KubeWorld, job: str, message: str) -> None:
    """The Job's pod ended with ``message``, then the Job completed (pod first, as on a cluster)."""
    template = (world.get(JOBS, job) or {})["spec"]["template"]["metadata"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-pod",
            "namespace": NS,
            "labels": template["labels"],
            "annotations": template["annotations"],
            "ownerReferences": [{"kind": "Job", "name": job, "uid": f"uid-{job}", "controller": True}],
        },
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": message}}}
            ],
        },
    }
    await _as_the_cluster(world, "POST", f"/api/v1/namespaces/{NS}/pods", pod)
    await _as_the_cluster(
        world,
        "PATCH",
        f"/apis/batch/v1/namespaces/{NS}/jobs/{job}",
        {
            "metadata": {"uid": f"uid-{job}"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        },
    )


@contextlib.asynccontextmanager
async def running_operator(
    world: KubeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[kopf.Memo]:
    """kopf (login, startup, indexes, watches, handlers) against kmock, watching namespace ``ml``."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": world.url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}],
        "current-context": "kmock",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig")
    )
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    world.server.resources[kmock.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"list", "watch"}
    )
    world.server.resources[kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")] = (
        kmock.ResourceInfo(kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"})
    )
    world.server.resources[PODS] = kmock.ResourceInfo(
        kind="Pod", singular="pod", namespaced=True, verbs={"get", "list", "watch", "create", "patch"}
    )
    world.add(RUNS, run_body())
    world.add(RUNS, run_body(OTHER, storage={"existingClaim": "other-data"}))
    world.add(BATCHES, batch_body("b1"))
    world.add(BATCHES, batch_body("b2", created=1))
    world.add(BATCHES, batch_body("o1", run=OTHER))
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # kmock serves no CustomResourceDefinitions
    stop = asyncio.Event()
    memo = kopf.Memo()
    task = asyncio.create_task(
        kopf.operator(
            registry=handlers.build_registry(handlers.OperatorOptions()),
            settings=settings,
            standalone=True,
            namespaces=[NS],
            memo=memo,
            stop_flag=stop,
        )
    )
    try:
        for _ in range(200):
            if {job_name(RUN, "b1", 1), job_name(OTHER, "o1", 1)} <= set(world.names(JOBS)):
                break
            await asyncio.sleep(0.05)
        yield memo
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_a_reconcile_of_one_run_lists_nothing_and_reads_no_object_of_another_run(
    world: KubeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_operator(world, tmp_path, monkeypatch) as memo:
        await _reconciles_of_one_run(world, memo)


async def _reconciles_of_one_run(world: KubeWorld, operator: kopf.Memo) -> None:
    assert {job_name(RUN, "b1", 1), job_name(OTHER, "o1", 1)} <= set(world.names(JOBS))
    reconciler = operator["reconciler"]
    assert isinstance(reconciler, Reconciler) and reconciler.view is not None
    # The start-up reconciles of both runs (and the watch events of their writes) are over.
    seen = -1
    while seen != len(list(world.server)):
        seen = len(list(world.server))
        await asyncio.sleep(0.5)
    before = len(list(world.server))
    # kmock answers no resourceVersion: the first reconcile reads its last writes afresh (by name).
    await reconciler.reconcile((NS, RUN))
    settled = len(list(world.server))

    # An idle run's reconcile (a resync) reads its view: no request at all.
    for _ in range(3):
        await reconciler.reconcile((NS, RUN))
    assert [r for r in _operator_requests(world) if r.id >= settled] == []

    # b1 ends: the Job event's reconcile records it from the view and starts b2.
    await _finish(world, job_name(RUN, "b1", 1), result("b1", 0, 5))
    for _ in range(200):
        if job_name(RUN, "b2", 1) in world.names(JOBS):
            break
        await asyncio.sleep(0.05)
    assert job_name(RUN, "b2", 1) in world.names(JOBS)
    assert status_of(world, "b1")["phase"] == "Succeeded"
    await reconciler.reconcile((NS, RUN))

    during = [r for r in _operator_requests(world) if r.id >= before]
    assert during, "the reconciles made no request at all: the test would prove nothing"
    lists = [f"{r.method} {r.url.path}?{r.params}" for r in during if r.name is None and r.method == "GET"]
    assert lists == [], "a reconcile listed objects instead of reading its view"
    others = [f"{r.method} {r.url.path}" for r in during if r.name is not None and OTHER in r.name]
    assert others == [], "a reconcile of one run read or wrote another run's objects"
    # Over the whole life of the operator, its own client never listed the namespace's batches or runs.
    assert not [
        r
        for r in _operator_requests(world)
        if r.method == "GET" and r.name is None and r.resource in {BATCHES, RUNS}
    ]


async def test_per_run_objects_are_created_once_per_run_not_before_every_job(world: KubeWorld) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1"))
    world.add(BATCHES, batch_body("b2", created=1))
    reconciler = Reconciler(world.storage())
    try:
        await reconciler.reconcile((NS, RUN))
        world.finish_job(job_name(RUN, "b1", 1), exit_code=0, message=result("b1", 0, 5))
        await reconciler.reconcile((NS, RUN))
        assert job_name(RUN, "b2", 1) in world.names(JOBS)
    finally:
        await reconciler.close()
        reconciler.storage.close()
    for resource in (SERVICE_ACCOUNTS, ROLES, ROLE_BINDINGS):
        assert len(world.requests("POST", resource)) == 1, resource
    assert len(world.requests("POST", JOBS)) == 2


def status_of(world: KubeWorld, batch: str) -> dict[str, Any]:
    return (world.get(BATCHES, batch) or {}).get("status") or {}


# -- settling on one's own writes ---------------------------------------------------------------------
def _batch(name: str, version: str | None, phase: str) -> dict[str, Any]:
    body = batch_body(name, status={"phase": phase})
    if version is not None:
        body["metadata"]["resourceVersion"] = version
    return body


async def _storage_with_write(world: KubeWorld, version: int | None) -> KubernetesStorage:
    storage = world.storage()
    with writing_for(NS, RUN):
        storage.journal.note(
            BATCH_KIND,
            NS,
            "b1",
            {
                "kind": "TrainingBatch",
                "metadata": {"resourceVersion": str(version) if version is not None else None},
            },
        )
    return storage


@pytest.mark.parametrize(
    ("seen", "written", "reads", "phase"),
    [
        pytest.param("7", 7, (0, 0), "Training", id="the-watch-delivered-the-write"),
        pytest.param("8", 7, (0, 0), "Training", id="the-watch-delivered-a-later-version"),
        # Still late at the next reconcile: read afresh again, never the older copy.
        pytest.param("6", 7, (1, 1), "Succeeded", id="the-watch-is-late-read-afresh"),
        # No version to wait for (kmock): read afresh once, then the view is all there is.
        pytest.param(None, None, (1, 0), "Succeeded", id="no-version-read-afresh"),
    ],
)
async def test_a_reconcile_waits_for_its_own_last_write_and_reads_afresh_what_the_watch_has_not_delivered(
    world: KubeWorld, seen: str | None, written: int | None, reads: tuple[int, int], phase: str
) -> None:
    # The server holds the batch as written (Succeeded); the view holds what the watch delivered.
    world.add(BATCHES, _batch("b1", str(written), "Succeeded"))
    indexed = {(NS, RUN): [_batch("b1", seen, "Training")]}
    view = WatchView(runs={}, batches=indexed, jobs={}, pods={}, settle_seconds=0.1)
    storage = await _storage_with_write(world, written)
    try:
        first = await view.world(storage, NS, RUN)
        again = await view.world(storage, NS, RUN)
        indexed[NS, RUN] = [_batch("b1", str(written), "Succeeded")]  # the watch delivers the write
        delivered = await view.world(storage, NS, RUN)
    finally:
        storage.close()

    assert (first.fresh_reads, again.fresh_reads, delivered.fresh_reads) == (*reads, 0)
    assert [b["status"]["phase"] for b in first.batches] == [phase]
    if reads[1]:
        assert [b["status"]["phase"] for b in again.batches] == ["Succeeded"]
    assert len(world.requests("GET", BATCHES)) == sum(reads)


async def test_a_deleted_object_is_settled_when_the_view_no_longer_holds_it(world: KubeWorld) -> None:
    storage = world.storage()
    with writing_for(NS, RUN):
        storage.journal.note(JOB_KIND, NS, "j1", None)  # a delete answered with a Status
    view = WatchView(runs={}, batches={}, jobs={(NS, RUN): []}, pods={}, settle_seconds=0.1)
    try:
        run_world = await view.world(storage, NS, RUN)
    finally:
        storage.close()
    assert (run_world.fresh_reads, run_world.jobs) == (0, [])
    assert not world.requests("GET", JOBS)


async def test_a_batch_status_patch_is_conditional_on_the_viewed_version_and_a_conflict_is_read_afresh(
    world: KubeWorld,
) -> None:
    run, batch = run_body(), _batch("b1", "5", "Queued")
    world.add(RUNS, run)
    world.add(BATCHES, batch)
    view = WatchView(
        runs={NS: [run], (NS, RUN): [run]},
        batches={(NS, RUN): [batch]},
        jobs={},
        pods={},
        settle_seconds=0.1,
    )
    world.server["patch", BATCHES][:1] << kmock.KubernetesError(
        status=409, reason="Conflict", message="the object has been modified"
    )
    reconciler = Reconciler(world.storage(), view=view)
    try:
        with pytest.raises(ConflictError):
            await reconciler.reconcile((NS, RUN))
        patches = [r.data for r in world.requests("PATCH", BATCHES) if r.name == "b1"]
        assert patches[0]["metadata"] == {"resourceVersion": "5"}
        gets_before = len([r for r in world.requests("GET", BATCHES) if r.name == "b1"])
        await reconciler.reconcile((NS, RUN))
    finally:
        await reconciler.close()
        reconciler.storage.close()
    # The conflicted batch was read afresh by name (not listed), and the retry went through.
    assert len([r for r in world.requests("GET", BATCHES) if r.name == "b1"]) == gets_before + 1
    assert not [r for r in world.requests("GET", BATCHES) if r.name is None]
    assert world.names(JOBS) == [job_name(RUN, "b1", 1)]


async def test_an_object_found_gone_stays_hidden_until_the_index_drops_it_or_holds_a_newer_one(
    world: KubeWorld,
) -> None:
    # kopf re-lists after a peering pause without dropping what was deleted meanwhile: b2 is still indexed.
    stale, kept = _batch("b2", "3", "Queued"), _batch("b1", "2", "Queued")
    world.add(BATCHES, kept)
    indexed = {(NS, RUN): [kept, stale]}
    view = WatchView(runs={}, batches=indexed, jobs={}, pods={}, settle_seconds=0.1)
    storage = world.storage()
    try:
        with writing_for(NS, RUN):  # a status patch of b2 answered 404
            storage.journal.note(BATCH_KIND, NS, "b2", {"kind": "TrainingBatch", "metadata": {}})
        first = await view.world(storage, NS, RUN)
        second = await view.world(storage, NS, RUN)  # nothing pending: the index alone still holds b2
        indexed[NS, RUN] = [kept, _batch("b2", "9", "Queued")]  # created again
        third = await view.world(storage, NS, RUN)
    finally:
        storage.close()
    assert [b["metadata"]["name"] for b in first.batches] == ["b1"]
    assert [b["metadata"]["name"] for b in second.batches] == ["b1"]
    assert sorted(b["metadata"]["name"] for b in third.batches) == ["b1", "b2"]


async def test_a_folder_decision_sees_the_last_writes_of_the_other_runs_on_that_folder(
    world: KubeWorld,
) -> None:
    # Run "first" took the folder a moment ago (trainedWith); the watch has not delivered that yet.
    held = {"trainedWith": {"storage": {"claim": "demo-data"}}}
    stored = run_body("first", status=held)
    stored["metadata"]["resourceVersion"] = "9"
    world.add(RUNS, stored)
    seen = run_body("first")
    seen["metadata"]["resourceVersion"] = "8"
    view = WatchView(runs={}, batches={}, jobs={}, pods={}, settle_seconds=0.1)
    storage = world.storage()
    try:
        with writing_for(NS, "first"):
            storage.journal.note(RUNS_KIND, NS, "first", stored)
        runs = await view.settle_peers(storage, NS, ["first"], [seen])
        # Its own reconcile still settles on the write (the journal keeps it for "first").
        assert (RUNS_KIND, "first") in storage.journal.pending(NS, "first")
    finally:
        storage.close()
    assert [r["status"] for r in runs] == [held]


@pytest.mark.parametrize(
    ("status", "reconciles"),
    [
        pytest.param({"phase": "Pending"}, False, id="pending-nothing-said"),
        pytest.param(
            {
                "phase": "Pending",
                "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
            },
            False,
            id="the-normal-start",
        ),
        pytest.param(
            {
                "phase": "Pending",
                "containerStatuses": [{"state": {"waiting": {"reason": "CreateContainerConfigError"}}}],
            },
            True,
            id="a-missing-secret",
        ),
        pytest.param(
            {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
            True,
            id="unschedulable",
        ),
        pytest.param(
            {"phase": "Running", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]},
            False,
            id="started",
        ),
    ],
)
def test_a_pod_event_reconciles_only_when_the_pod_cannot_start(
    status: dict[str, Any], reconciles: bool
) -> None:
    assert handlers.pod_waits({"status": status}) is reconciles
