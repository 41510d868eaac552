"""The handler layer against a fake API server (kmock): what the operator reads, decides and sends.

These tests drive the same entry points kopf calls (the handler functions and the reconciler behind
them) against kmock's Kubernetes emulator, and assert on the requests and objects that result: Jobs and
their trainer configs, per-run RBAC, status patches (merge patches on the status subresource) and Events.
kmock runs no controllers, so the tests finish Jobs themselves (:meth:`KubeWorld.finish_job`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes
import pytest
from kube_world import (
    BATCHES,
    CLAIMS,
    CONFIG_MAPS,
    JOBS,
    NS,
    ROLE_BINDINGS,
    ROLES,
    RUN,
    RUNS,
    SERVICE_ACCOUNTS,
    KubeWorld,
    batch_body,
    condition,
    reconciler_of,
    result,
    run_body,
    status_of,
    trainer_config_of,
)
from kubernetes.client.exceptions import ApiException

from continual_operator.cluster import handlers
from continual_operator.cluster.k8s import translate_api_exception
from continual_operator.cluster.operator_main import run_operator
from continual_operator.cluster.reconciler import InvalidSpecError, Reconciler
from continual_operator.errors import (
    ConflictError,
    ForbiddenError,
    InvalidObjectError,
    KubernetesApiError,
    NotFoundError,
    TransientApiError,
)
from continual_operator.naming import job_name
from continual_trainer.exitcodes import ExitCode

JOB_1 = job_name(RUN, "b1", 1)
JOB_2 = job_name(RUN, "b2", 1)


@pytest.fixture
async def reconciler(world: KubeWorld) -> AsyncIterator[Reconciler]:
    async with reconciler_of(world) as reconciler:
        yield reconciler


@pytest.fixture
def memo(reconciler: Reconciler) -> kopf.Memo:
    return kopf.Memo(reconciler=reconciler)


def seed(world: KubeWorld, *batches: str, **spec: Any) -> None:
    world.add(RUNS, run_body(**spec))
    for minutes, name in enumerate(batches):
        world.add(BATCHES, batch_body(name, created=minutes))


# -- (a) a new run with two batches -------------------------------------------------------------------
async def test_first_reconcile_creates_one_job_with_its_config_and_the_runs_rbac(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    # One Job per batch (coalesced Jobs: tests/operator/test_coalesce_on_kmock.py).
    seed(world, "b1", "b2", storage={"claimTemplate": {"size": "10Gi"}}, training={"maxBatchesPerJob": 1})

    await handlers.reconciler_of(memo).reconcile((NS, RUN))

    assert world.names(JOBS) == [JOB_1]
    assert world.names(CONFIG_MAPS) == [], "the config travels in the Job's pod template"
    assert (
        world.names(SERVICE_ACCOUNTS) == world.names(ROLES) == world.names(ROLE_BINDINGS) == ["demo-trainer"]
    )
    assert world.names(CLAIMS) == ["demo-data"]
    job = world.get(JOBS, JOB_1)
    assert job is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-run-demo"
    config = trainer_config_of(job)
    assert config["batch"]["id"] == "b1"
    # Status: the run trains b1 with that Job; b1 is Training, b2 waits.
    run = status_of(world, RUNS, RUN)
    assert (run["phase"], run["currentJob"], run["currentBatch"]) == ("Training", JOB_1, "b1")
    assert condition(run, "Training")["status"] == "True"
    assert status_of(world, BATCHES, "b1")["phase"] == "Training"
    assert status_of(world, BATCHES, "b2")["phase"] == "Queued"
    # Every status write went to the status subresource as a JSON merge patch.
    patches = [r for r in world.server if r.method == "PATCH"]
    assert patches
    assert all(r.subresource == "status" for r in patches)
    assert {r.headers["Content-Type"] for r in patches} == {"application/merge-patch+json"}
    # No Event for a start (the status says Training): a batch's one Normal Event comes at its end.
    assert world.events() == []


# -- (b) repeated and concurrent triggers -------------------------------------------------------------
async def test_repeated_and_concurrent_reconciles_never_create_a_second_job(
    world: KubeWorld, reconciler: Reconciler, memo: kopf.Memo
) -> None:
    seed(world, "b1", "b2")
    # A burst of triggers at once (the run's handlers, a batch event), then more, one by one.
    triggers = [
        handlers.reconciler_of(memo).reconcile((NS, RUN)),
        handlers.on_batch_event(event={"type": "ADDED"}, body=batch_body("b2"), namespace=NS, memo=memo),
        handlers.reconciler_of(memo).reconcile((NS, RUN)),
    ]
    await asyncio.gather(*triggers)
    await handlers.reconciler_of(memo).reconcile((NS, RUN))
    job = world.get(JOBS, JOB_1)
    assert job is not None
    await handlers.on_job_event(body=job, namespace=NS, memo=memo)

    assert world.names(JOBS) == [JOB_1]
    assert len(world.requests("POST", JOBS)) == 1
    # The later reconciles found nothing to change: no status writes, no Events.
    writes_after_first = len(world.requests("PATCH", RUNS)) + len(world.requests("PATCH", BATCHES))
    await reconciler.reconcile((NS, RUN))
    assert len(world.requests("PATCH", RUNS)) + len(world.requests("PATCH", BATCHES)) == writes_after_first
    assert reconciler.metrics.registry.get_sample_value("continual_jobs_created_total") == 1
    assert reconciler._locks == {}  # no lock outlives its reconciles


async def test_a_job_that_exists_already_is_adopted_not_created_again(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    """The operator died between creating the Job and recording it: the batch still says Queued."""
    seed(world, "b1")
    await reconciler.reconcile((NS, RUN))
    world.patch(BATCHES, "b1", {"status": {"phase": "Queued", "attempts": None, "job": None}})

    await reconciler.reconcile((NS, RUN))

    assert len(world.requests("POST", JOBS)) == 1
    assert status_of(world, BATCHES, "b1")["phase"] == "Training"


# -- (c) a Job finishes -------------------------------------------------------------------------------
async def test_finished_job_is_recorded_from_the_termination_message_and_the_next_batch_starts(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    seed(world, "b1", "b2")
    await reconciler.reconcile((NS, RUN))
    world.finish_job(JOB_1, exit_code=0, message=result("b1", 0, 12))

    await reconciler.reconcile((NS, RUN))

    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["startStep"], b1["endStep"], b1["samples"]) == ("Succeeded", 0, 12, 40)
    assert world.names(JOBS) == [JOB_1, JOB_2]
    run = status_of(world, RUNS, RUN)
    assert (run["globalStep"], run["completedStep"], run["currentJob"]) == (12, 12, JOB_2)
    assert run["latestCheckpoint"] == "checkpoint-12"
    outcomes = {"outcome": "Succeeded", "reason": "Succeeded"}
    assert reconciler.metrics.registry.get_sample_value("continual_batch_outcomes_total", outcomes) == 1


async def test_preempted_job_is_retried_with_a_new_attempt(world: KubeWorld, reconciler: Reconciler) -> None:
    seed(world, "b1")
    await reconciler.reconcile((NS, RUN))
    world.finish_job(JOB_1, exit_code=ExitCode.PREEMPTED, message=result("b1", 0, 5, "Preempted"))

    await reconciler.reconcile((NS, RUN))

    assert job_name(RUN, "b1", 2) in world.names(JOBS)
    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["attempts"], b1["preemptions"]) == ("Training", 2, 1)
    outcomes = {"outcome": "Preempted", "reason": "Preempted"}
    assert reconciler.metrics.registry.get_sample_value("continual_batch_outcomes_total", outcomes) == 1


async def test_suspend_stops_the_running_job_with_foreground_deletion(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    seed(world, "b1")
    await reconciler.reconcile((NS, RUN))
    world.patch(RUNS, RUN, {"spec": {"suspend": True}, "metadata": {"generation": 2}})

    await reconciler.reconcile((NS, RUN))

    deletes = world.requests("DELETE", JOBS)
    assert [(r.name, r.params["propagationPolicy"]) for r in deletes] == [(JOB_1, "Foreground")]
    assert world.requests("DELETE", CONFIG_MAPS) == [], "a Job with its config inline has no ConfigMap"
    assert status_of(world, RUNS, RUN)["phase"] == "Suspended"


# -- (d) an invalid run -------------------------------------------------------------------------------
async def test_invalid_spec_is_reported_on_the_run_and_by_an_event_naming_the_field(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    seed(world, "b1", training={"lrSchedule": {"type": "cosine"}})

    with pytest.raises(InvalidSpecError, match=r"spec\.training\.lrSchedule\.type"):
        await handlers.reconciler_of(memo).reconcile((NS, RUN))

    assert world.names(JOBS) == []
    run = status_of(world, RUNS, RUN)
    assert run["phase"] == "Failed"
    degraded = condition(run, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "spec.training.lrSchedule.type" in degraded["message"]
    (event,) = world.events()
    assert (event["type"], event["reason"]) == ("Warning", "InvalidSpec")
    assert "spec.training.lrSchedule.type" in event["message"]
    assert event["involvedObject"] == {
        "apiVersion": "continual.dev/v1alpha1",
        "kind": "ContinualTrainingRun",
        "name": RUN,
        "namespace": NS,
        "uid": "uid-run-demo",
    }
    assert event["source"] == {"component": "continual-training-operator"}
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"]

    # Another trigger: the same error, but no second Event and no status write (no event storm).
    with pytest.raises(InvalidSpecError):
        await handlers.reconciler_of(memo).reconcile((NS, RUN))
    assert len(world.events()) == 1
    assert len(world.status_patches(RUNS, RUN)) == 1


async def test_invalid_batch_is_failed_and_the_others_train(world: KubeWorld, reconciler: Reconciler) -> None:
    seed(world, "b2")
    bad = batch_body("b1", created=-1)
    bad["spec"]["data"] = {"path": ""}
    world.add(BATCHES, bad)

    await reconciler.reconcile((NS, RUN))

    b1 = status_of(world, BATCHES, "b1")
    assert (b1["phase"], b1["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.data.path" in b1["message"]
    assert world.names(JOBS) == [JOB_2]


async def test_a_job_the_api_server_refuses_fails_the_run_until_the_spec_changes(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    seed(world, "b1")
    world.server["post", JOBS] << kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message='Job.batch "demo-b1-a1" is invalid: spec.template.spec.nodeSelector: Invalid value: "x y"',
    )

    with pytest.raises(InvalidSpecError, match="nodeSelector"):
        await reconciler.reconcile((NS, RUN))
    world.unstore(JOBS, JOB_1)
    run = status_of(world, RUNS, RUN)
    assert run["phase"] == "Failed"
    assert "nodeSelector: Invalid value" in condition(run, "Degraded")["message"]

    # Until a new generation of the spec, reconciles change nothing and try no Job.
    posts = len(world.requests("POST", JOBS))
    await reconciler.reconcile((NS, RUN))
    assert len(world.requests("POST", JOBS)) == posts
    # A new generation is tried again.
    world.patch(
        RUNS, RUN, {"metadata": {"generation": 2}, "spec": {"scheduling": {"nodeSelector": {"a": "b"}}}}
    )
    with pytest.raises(InvalidSpecError):
        await reconciler.reconcile((NS, RUN))
    assert len(world.requests("POST", JOBS)) == posts + 1


# -- (e) API errors -----------------------------------------------------------------------------------
def test_api_exceptions_become_the_projects_errors_with_the_servers_message() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "reason": "Forbidden",
            "message": 'jobs.batch is forbidden: User "system:serviceaccount:ops:op" cannot create resource '
            '"jobs" in API group "batch" in the namespace "ml"',
            "code": 403,
        }
    )
    error = translate_api_exception(
        ApiException(status=403, reason="Forbidden", body=body), "create jobs.batch ml/x"
    )

    assert isinstance(error, ForbiddenError)
    assert error.retry_after == 60
    assert str(error) == (
        "create jobs.batch ml/x failed: HTTP 403 Forbidden: jobs.batch is forbidden: User "
        '"system:serviceaccount:ops:op" cannot create resource "jobs" in API group "batch" in the namespace '
        "\"ml\". The operator's ServiceAccount needs this permission (see the chart's ClusterRole), or a "
        "ResourceQuota or an admission webhook refused the request"
    )


@pytest.mark.parametrize(
    ("status", "body", "kind", "retry_after"),
    [
        pytest.param(0, "", TransientApiError, 5, id="no-answer"),
        pytest.param(401, "", ForbiddenError, 60, id="unauthorized"),
        pytest.param(404, "", NotFoundError, 2, id="not-found"),
        pytest.param(409, "", ConflictError, 1, id="conflict"),
        pytest.param(422, "", InvalidObjectError, 300, id="invalid"),
        pytest.param(410, "", TransientApiError, 5, id="gone"),
        pytest.param(429, "", TransientApiError, 5, id="too-many-requests"),
        pytest.param(503, "<html>busy</html>", TransientApiError, 5, id="unavailable-not-json"),
        pytest.param(418, "", KubernetesApiError, 30, id="anything-else"),
    ],
)
def test_every_http_status_maps_to_an_error_with_a_retry_delay(
    status: int, body: str, kind: type[KubernetesApiError], retry_after: float
) -> None:
    error = translate_api_exception(ApiException(status=status, reason="Why", body=body), "get x")
    assert type(error) is kind
    assert error.retry_after == retry_after
    assert str(error).startswith("get x failed: ")


async def test_forbidden_is_retried_after_a_delay_with_a_clear_message(
    world: KubeWorld, memo: kopf.Memo
) -> None:
    seed(world, "b1")
    world.server["post", ROLES] << kmock.KubernetesError(
        status=403, reason="Forbidden", message="roles.rbac.authorization.k8s.io is forbidden"
    )

    with pytest.raises(KubernetesApiError) as caught:
        await handlers.reconciler_of(memo).reconcile((NS, RUN))

    assert caught.value.retry_after == 60
    assert "create roles.rbac.authorization.k8s.io ml/demo-trainer failed: HTTP 403 Forbidden" in str(
        caught.value
    )
    assert world.names(JOBS) == []  # the Job waits for the objects it needs


async def test_background_triggers_retry_after_an_api_error(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TransientApiError, "retry_after", 0.1)
    seed(world, "b1")
    world.server["post", JOBS][:1] << kmock.KubernetesError(status=503, reason="ServiceUnavailable")

    await reconciler.reconcile_or_retry((NS, RUN))  # a Job event, say: the failure is logged, not raised
    world.unstore(JOBS, JOB_1)
    assert (
        reconciler.metrics.registry.get_sample_value("continual_reconciles_total", {"result": "error"}) == 1
    )
    for _ in range(40):
        if world.names(JOBS):
            break
        await asyncio.sleep(0.05)

    assert world.names(JOBS) == [JOB_1]
    assert len(world.requests("POST", JOBS)) == 2


# -- (f) the trainer's permissions --------------------------------------------------------------------
async def test_the_trainers_role_may_only_read_and_patch_its_own_runs_status(
    world: KubeWorld, reconciler: Reconciler
) -> None:
    seed(world, "b1")
    await reconciler.reconcile((NS, RUN))

    role = world.get(ROLES, "demo-trainer")
    assert role is not None
    assert role["rules"] == [
        {
            "apiGroups": ["continual.dev"],
            "resources": ["continualtrainingruns/status"],
            "resourceNames": [RUN],
            "verbs": ["get", "patch"],
        }
    ]
    binding = world.get(ROLE_BINDINGS, "demo-trainer")
    assert binding is not None
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-trainer", "namespace": NS}]
    job = world.get(JOBS, JOB_1)
    assert job is not None
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "demo-trainer"


# -- requeues and triggers ----------------------------------------------------------------------------
async def test_every_run_is_resynced_periodically_without_a_kopf_timer(world: KubeWorld) -> None:
    reconciler = Reconciler(world.storage(), resync_seconds=0.2)
    seed(world, "b1")
    try:
        await reconciler.reconcile((NS, RUN))
        gets = len(world.requests("GET", RUNS))
        await asyncio.sleep(0.5)
        assert len(world.requests("GET", RUNS)) > gets
    finally:
        await reconciler.close()
        reconciler.storage.close()


async def test_a_retry_starts_when_its_back_off_ends_without_any_other_trigger(world: KubeWorld) -> None:
    base = dt.datetime(2025, 3, 1, 12, 0, 0, 700000, tzinfo=dt.UTC)
    started = time.monotonic()
    reconciler = Reconciler(
        world.storage(), clock=lambda: base + dt.timedelta(seconds=time.monotonic() - started)
    )
    seed(world, "b1")
    world.patch(
        BATCHES,
        "b1",
        {
            "status": {
                "phase": "Queued",
                "attempts": 1,
                "failures": 1,
                "nextAttemptTime": "2025-03-01T12:00:01Z",
            }
        },
    )
    try:
        await reconciler.reconcile((NS, RUN))
        assert world.names(JOBS) == []
        for _ in range(50):
            if world.names(JOBS):
                break
            await asyncio.sleep(0.05)
        assert world.names(JOBS) == [job_name(RUN, "b1", 2)]
    finally:
        await reconciler.close()
        reconciler.storage.close()


@pytest.mark.parametrize(
    ("event_type", "generation", "observed", "deleting", "expected"),
    [
        pytest.param(None, 1, 1, False, True, id="initial-listing"),
        pytest.param("ADDED", 1, None, False, True, id="added"),
        pytest.param("DELETED", 1, 1, False, True, id="deleted"),
        pytest.param("MODIFIED", 2, 1, False, True, id="spec-changed"),
        pytest.param("MODIFIED", 1, 1, True, True, id="being-deleted"),
        pytest.param("MODIFIED", 1, 1, False, False, id="operators-own-status-patch"),
    ],
)
def test_which_batch_events_trigger_a_reconcile(
    event_type: str | None, generation: int, observed: int | None, deleting: bool, expected: bool
) -> None:
    body = batch_body("b1", status={"observedGeneration": observed})
    body["metadata"]["generation"] = generation
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2025-03-01T12:00:00Z"
    assert handlers.spec_changed(event_type, body) is expected


def test_a_jobs_run_is_its_full_name_from_the_annotation() -> None:
    long_run = "r" * 70
    assert (
        handlers.run_of_job({"metadata": {"annotations": {"continual.dev/run": long_run}, "labels": {}}})
        == long_run
    )
    assert handlers.run_of_job({"metadata": {"labels": {"continual.dev/run": "demo"}}}) == "demo"
    assert handlers.run_of_job({"metadata": {}}) is None


async def test_a_deleted_run_is_forgotten(world: KubeWorld, reconciler: Reconciler, memo: kopf.Memo) -> None:
    seed(world, "b1")
    await reconciler.reconcile((NS, RUN))
    registry = reconciler.metrics.registry
    assert registry.get_sample_value("continual_runs", {"phase": "Training"}) == 1
    # the run's training series, from the statuses this reconcile wrote (no extra API call)
    labels = {"namespace": NS, "run": RUN}
    assert registry.get_sample_value("continual_run_batches", {**labels, "phase": "Training"}) == 1
    assert registry.get_sample_value("continual_batch_queue_wait_seconds_count", labels) == 1
    assert registry.get_sample_value("continual_run_degraded", labels) == 0

    # The trainer's progress patches reach the metrics through the run-event filter, without a reconcile.
    progress = {"globalStep": 4, "lastLoss": 1.5, "lastProgressTime": "2025-03-01T12:00:00Z"}
    event = {"type": "MODIFIED", "object": {"metadata": {"namespace": NS, "name": RUN}, "status": progress}}
    assert handlers.run_event_matters(event, memo=memo) is False
    assert registry.get_sample_value("continual_run_global_step", labels) == 4
    assert registry.get_sample_value("continual_run_last_loss", labels) == 1.5
    other = {
        "type": "MODIFIED",
        "object": {"metadata": {"namespace": NS, "name": "other"}, "status": progress},
    }
    assert handlers.run_event_matters(other, memo=memo) is False  # not reconciled yet: no series of its own
    assert registry.get_sample_value("continual_run_global_step", {"namespace": NS, "run": "other"}) is None
    assert handlers.run_event_matters({"type": "DELETED"}, memo=memo) is True

    world.unstore(RUNS, RUN)  # what a DELETED event reports
    await handlers.on_run_event(event={"type": "DELETED"}, namespace=NS, name=RUN, memo=memo)

    assert registry.get_sample_value("continual_runs", {"phase": "Training"}) is None
    assert not [s for f in registry.collect() for s in f.samples if s.labels.get("run") == RUN]
    assert (NS, RUN) not in reconciler._timers


def test_kopf_keeps_its_state_in_annotations_and_watches_only_trainer_jobs_and_pods() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings)

    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "continual.dev"
    assert isinstance(settings.persistence.diffbase_storage, handlers.NoDiffBase)
    selectors = settings.watching.label_selectors.items()
    assert {(k.group, k.version, k.any_name): v for k, v in selectors} == {
        handlers.JOBS: "continual.dev/run",
        handlers.PODS: "continual.dev/run",
    }


def test_kopf_builds_no_diff_base_and_no_change_handler_needs_one() -> None:
    """kopf deep-copied every event's body into a diff base only change handlers read: there are none."""
    registry = handlers.build_registry(handlers.OperatorOptions())
    assert not registry._changing.get_all_handlers(), (
        "a change handler needs kopf's diff base: use kopf.on.event"
    )
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    storage = settings.persistence.diffbase_storage
    body = kopf.Body({"metadata": {"name": "b", "labels": {"a": "b"}}, "spec": {"runName": "r"}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None
    with pytest.raises(RuntimeError, match=r"kopf\.on\.event"):
        storage.store(body=body, patch=kopf.Patch(), essence=storage.build(body=body))


# -- the kopf wiring ----------------------------------------------------------------------------------
async def test_the_operator_runs_under_kopf_and_starts_the_first_job(
    world: KubeWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kopf itself (login, startup, watches, the registered handlers) against the fake API server."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": world.url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}],
        "current-context": "kmock",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    # Both kopf's login and the operator's client read the kubeconfig; kopf's sets the client's global
    # default configuration, which is put back afterwards.
    monkeypatch.setattr(
        kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig")
    )
    monkeypatch.setattr(kubernetes.client.Configuration, "_default", None)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # The core resources kopf's own machinery looks for in the discovery documents.
    world.server.resources[kmock.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"list", "watch"}
    )
    world.server.resources[kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")] = (
        kmock.ResourceInfo(kind="CustomResourceDefinition", namespaced=False, verbs={"list", "watch"})
    )
    seed(world, "b1", "b2")
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # kmock serves no CustomResourceDefinitions
    stop = asyncio.Event()
    memo = kopf.Memo()
    operator = asyncio.create_task(
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
        for _ in range(100):
            if world.names(JOBS):
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(operator, timeout=10)

    assert world.names(JOBS) == [JOB_1]
    assert status_of(world, RUNS, RUN)["phase"] == "Training"
    # kopf wrote nothing to the run: no finalizer (a run stays deletable without a running operator), no
    # annotation of its own (every handler is an event handler), and only the API's fields in the status.
    run = world.get(RUNS, RUN)
    assert run is not None
    assert "finalizers" not in run["metadata"]
    assert not run["metadata"].get("annotations")
    assert [r for r in world.server if r.method == "PATCH" and r.resource == RUNS and not r.subresource] == []
    assert not set(run["status"]) - {
        "phase",
        "observedGeneration",
        "batchesCompleted",
        "batchesQueued",
        "batchesFailed",
        "currentJob",
        "currentBatch",
        "currentBatchProgress",
        "trainedWith",
        "conditions",
    }


@pytest.mark.parametrize(
    ("namespaces", "standalone", "clusterwide", "peering"),
    [
        pytest.param(None, False, True, "continual-training", id="cluster-wide-with-peering"),
        pytest.param(["ml", "ops"], True, False, None, id="namespaced-standalone"),
    ],
)
def test_run_operator_hands_kopf_the_registry_scope_peering_and_probes(
    monkeypatch: pytest.MonkeyPatch,
    namespaces: list[str] | None,
    standalone: bool,
    clusterwide: bool,
    peering: str | None,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.append(kwargs))

    run_operator(namespaces=namespaces, standalone=standalone, liveness="http://0.0.0.0:8081/healthz")
    run_operator(namespaces=namespaces, standalone=standalone)

    first, second = calls
    assert (first["clusterwide"], first["namespaces"]) == (clusterwide, namespaces or [])
    assert (first["standalone"], first["peering_name"]) == (standalone, peering)
    assert first["liveness_endpoint"] == "http://0.0.0.0:8081/healthz"
    assert isinstance(first["registry"], kopf.OperatorRegistry)
    # Replicas must not share a priority: kopf pauses all of them when the highest one is shared.
    assert first["priority"] != second["priority"]
