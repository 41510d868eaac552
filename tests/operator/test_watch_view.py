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


# -- one's own writes: overlaid from their answers ------------------------------------------------------
def _batch(name: str, version: str | None, phase: str) -> dict[str, Any]:
    body = batch_body(name, status={"phase": phase})
    if version is not None:
        body["metadata"]["resourceVersion"] = version
    return body


def _view(indexed: dict[Any, list[dict[str, Any]]], storage: KubernetesStorage, **kw: Any) -> WatchView:
    view = WatchView(runs={}, batches=indexed, jobs={}, pods={}, **kw)
    view.attach(storage.journal)
    return view


def _write(storage: KubernetesStorage, kind: Any, answer: dict[str, Any] | None, **kw: Any) -> None:
    """A write of run ``demo`` answered with ``answer`` (as :class:`KubernetesStorage` notes it)."""
    name = (answer or {}).get("metadata", {}).get("name") or kw.pop("name")
    with writing_for(NS, RUN):
        storage.journal.note(kind, NS, name, answer, **kw)


@pytest.mark.parametrize(
    ("seen", "written", "reads", "phases"),
    [
        # The index holds that version (its copy is shown: here it says Training) or a newer one by another
        # writer (the trainer, kubectl): never hidden by the overlay.
        pytest.param("7", "7", 0, ("Training", "Training"), id="the-watch-delivered-the-write"),
        pytest.param("8", "7", 0, ("Training", "Training"), id="the-watch-delivered-a-later-version"),
        # Still late at the next reconcile: the answer is shown, never the older copy, and nothing is read.
        pytest.param("6", "7", 0, ("Succeeded", "Succeeded"), id="the-watch-is-late-the-answer-is-shown"),
        # No version to compare (kmock answers none): read afresh once, then the view is all there is.
        pytest.param(None, None, 1, ("Succeeded", "Training"), id="no-version-read-afresh"),
    ],
)
async def test_a_reconcile_sees_its_own_last_write_as_answered_until_the_watch_delivers_it(
    world: KubeWorld, seen: str | None, written: str | None, reads: int, phases: tuple[str, str]
) -> None:
    # The server answered the patch with the batch Succeeded; the index holds what the watch delivered.
    world.add(BATCHES, _batch("b1", written, "Succeeded"))
    indexed = {(NS, RUN): [_batch("b1", seen, "Training")]}
    storage = world.storage()
    view = _view(indexed, storage)
    _write(storage, BATCH_KIND, _batch("b1", written, "Succeeded"))
    try:
        first = await view.world(storage, NS, RUN)
        again = await view.world(storage, NS, RUN)
        indexed[NS, RUN] = [_batch("b1", "9", "Succeeded")]  # the watch delivers the write (and later)
        delivered = await view.world(storage, NS, RUN)
    finally:
        storage.close()

    assert (first.fresh_reads, again.fresh_reads, delivered.fresh_reads) == (reads, 0, 0)
    assert [b["status"]["phase"] for b in first.batches] == [phases[0]]
    assert [b["status"]["phase"] for b in again.batches] == [phases[1]]
    assert [b["status"]["phase"] for b in delivered.batches] == ["Succeeded"]
    assert len(world.requests("GET", BATCHES)) == reads
    assert storage.journal.pending(NS, RUN) == {}, "an entry the index reflects is dropped"


async def test_the_overlay_is_slimmed_like_the_view(world: KubeWorld) -> None:
    storage = world.storage()
    view = _view({(NS, RUN): []}, storage)
    answer = _batch("b1", "4", "Queued")
    answer["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    _write(storage, BATCH_KIND, answer, created=True)
    try:
        (batch,) = (await view.world(storage, NS, RUN)).batches
    finally:
        storage.close()
    assert "managedFields" not in batch["metadata"] and batch["metadata"]["resourceVersion"] == "4"


@pytest.mark.parametrize(
    ("created", "shown"), [pytest.param(True, ["j1"], id="created"), pytest.param(False, [], id="patched")]
)
async def test_an_object_the_index_does_not_hold_is_shown_only_when_the_run_created_it(
    world: KubeWorld, created: bool, shown: list[str]
) -> None:
    # Created: the watch has not told the index yet. Only patched: the index held it, so it was deleted.
    storage = world.storage()
    view = WatchView(runs={}, batches={}, jobs={(NS, RUN): []}, pods={})
    view.attach(storage.journal)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1", "resourceVersion": "3"}}
    job["spec"] = {"template": {"spec": {"containers": [{"name": "trainer"}]}}, "backoffLimit": 0}
    _write(storage, JOB_KIND, job, created=created)
    try:
        run_world = await view.world(storage, NS, RUN)
    finally:
        storage.close()
    assert [j["metadata"]["name"] for j in run_world.jobs] == shown
    assert all("template" not in j["spec"] for j in run_world.jobs), "the view keeps no pod template"
    assert (run_world.fresh_reads, world.requests("GET", JOBS)) == (0, [])


async def test_a_deleted_object_is_hidden_until_the_view_no_longer_holds_it(world: KubeWorld) -> None:
    storage = world.storage()
    indexed = {(NS, RUN): [{"kind": "Job", "metadata": {"name": "j1", "resourceVersion": "5"}}]}
    view = WatchView(runs={}, batches={}, jobs=indexed, pods={})
    view.attach(storage.journal)
    _write(storage, JOB_KIND, None, name="j1")  # a delete answered with a Status
    try:
        while_held = await view.world(storage, NS, RUN)
        indexed[NS, RUN] = []
        dropped = await view.world(storage, NS, RUN)
    finally:
        storage.close()
    assert (while_held.jobs, dropped.jobs, while_held.fresh_reads) == ([], [], 0)
    assert not world.requests("GET", JOBS)
    assert storage.journal.pending(NS, RUN) == {}


async def test_a_write_the_watch_never_delivers_is_read_afresh_after_the_overlay_time(
    world: KubeWorld,
) -> None:
    world.add(BATCHES, _batch("b1", "12", "Failed"))  # changed again since the answer (7)
    indexed = {(NS, RUN): [_batch("b1", "6", "Training")]}
    storage = world.storage()
    view = _view(indexed, storage, overlay_seconds=0.0)
    _write(storage, BATCH_KIND, _batch("b1", "7", "Succeeded"))
    try:
        first = await view.world(storage, NS, RUN)
    finally:
        storage.close()
    assert [b["status"]["phase"] for b in first.batches] == ["Failed"]
    assert first.fresh_reads == 1 and len(world.requests("GET", BATCHES)) == 1


async def test_the_sweep_drops_what_the_indexes_reflect_and_keeps_the_rest(world: KubeWorld) -> None:
    indexed = {(NS, RUN): [_batch("b1", "7", "Succeeded"), _batch("b2", "3", "Queued")]}
    storage = world.storage()
    view = _view(indexed, storage)
    _write(storage, BATCH_KIND, _batch("b1", "7", "Succeeded"))
    _write(storage, BATCH_KIND, _batch("b2", "4", "Training"))
    try:
        view.touch()
        view.touch()  # a burst of index changes: one sweep
        await asyncio.sleep(1.3)
        assert [name for _, name in storage.journal.pending(NS, RUN)] == ["b2"]
        storage.forget_run(NS, RUN)  # the run was deleted: nothing of it is kept
        assert len(storage.journal) == 0
    finally:
        storage.close()
    assert not world.requests("GET", BATCHES)


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
    view = WatchView(runs={}, batches=indexed, jobs={}, pods={})
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


@pytest.mark.parametrize("answered", [True, False], ids=["from-the-answer", "read-afresh"])
async def test_a_folder_decision_sees_the_last_writes_of_the_other_runs_on_that_folder(
    world: KubeWorld, answered: bool
) -> None:
    # Run "first" took the folder a moment ago (trainedWith); the watch has not delivered that yet.
    held = {"trainedWith": {"storage": {"claim": "demo-data"}}}
    stored = run_body("first", status=held)
    stored["metadata"]["resourceVersion"] = "9"
    world.add(RUNS, stored)
    seen = run_body("first")
    seen["metadata"]["resourceVersion"] = "8"
    view = WatchView(runs={(NS, "first"): [seen]}, batches={}, jobs={}, pods={})
    storage = world.storage()
    view.attach(storage.journal)
    try:
        with writing_for(NS, "first"):
            storage.journal.note(RUNS_KIND, NS, "first", stored if answered else {"kind": stored["kind"]})
        runs = await view.settle_peers(storage, NS, ["first"], [seen])
        # Its own reconcile still settles on the write (the journal keeps it for "first").
        assert (RUNS_KIND, "first") in storage.journal.pending(NS, "first")
    finally:
        storage.close()
    assert [r["status"] for r in runs] == [held]
    assert len(world.requests("GET", RUNS)) == (0 if answered else 1)


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


async def test_a_job_event_that_only_delivers_the_runs_own_create_reconciles_nothing(
    world: KubeWorld,
) -> None:
    job = job_name(RUN, "b1", 1)
    created = {
        "kind": "Job",
        "metadata": {
            "name": job,
            "namespace": NS,
            "resourceVersion": "41",
            "labels": {"continual.dev/run": RUN},
            "annotations": {"continual.dev/run": RUN},
        },
    }
    reconciler = Reconciler(world.storage())
    memo = kopf.Memo(reconciler=reconciler)
    try:
        assert handlers.job_event_matters(created, memo=memo)  # nothing written: someone else's
        with writing_for(NS, RUN):
            reconciler.storage.journal.note(JOB_KIND, NS, job, created, created=True)
        assert not handlers.job_event_matters(created, memo=memo)  # the watch delivering that create
        # The Job controller's change (a newer version), or the same name under another run: reconciled.
        started = {**created, "metadata": {**created["metadata"], "resourceVersion": "42"}}
        assert handlers.job_event_matters(started, memo=memo)
        other = {**created, "metadata": {**created["metadata"], "annotations": {"continual.dev/run": OTHER}}}
        assert handlers.job_event_matters(other, memo=memo)
        registry = handlers.build_registry(handlers.OperatorOptions())
        filters = {h.id: h.when for h in registry._watching.get_all_handlers()}
        assert filters["job-event"] is handlers.job_event_matters
    finally:
        await reconciler.close()
        reconciler.storage.close()
