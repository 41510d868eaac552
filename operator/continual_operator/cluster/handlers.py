"""The kopf handlers: thin adapters from kopf's events to :class:`~continual_operator.cluster.reconciler.Reconciler`.

Every handler does the same two things: find the run the event is about and hand it to the reconciler,
which reconciles it in the background and retries failures itself. None of them decides anything (the planner does), none
talks to the API server (:mod:`continual_operator.cluster.k8s` does), and none returns a value, so that kopf never
writes handler results into ``.status`` (that belongs to the planner and the trainer).

What triggers a reconcile of a run:

* the run is found when the operator starts, created, has its spec changed or is being deleted
  (:func:`spec_changed`: status patches, the operator's own and the trainer's progress, do not count;
  ``observedGeneration`` equals ``generation`` then). An API error is retried after its delay; an invalid
  spec is on the run's status and waits for the next change (no stack-trace loop);
* one of its TrainingBatches is added, deleted or has its spec changed (the same test);
* one of its Jobs changes (the Job watch is filtered by label on the server, so only trainer Jobs come),
  other than the watch delivering the run's own create (:func:`job_event_matters`);
* one of its pods waits to start (a container's waiting reason, or unschedulable: what the batch's status
  shows, :func:`pod_waits`); a Job reaches Complete or Failed only after its pod has terminated, so other
  pod events trigger nothing: the pod watch (filtered by the run label too) keeps the view's pods current;
* the reconciler's own requeues: a retry's back-off ends, an API call failed, or the slow periodic
  resync (``resync_seconds``) comes round. There is deliberately no kopf timer: kopf puts a finalizer on
  every object with a timer, and a run must stay deletable without a running operator.

The handlers get the parsed-and-validated objects from the reconciler's read, not from ``body``: the body
of an event may be older than the last status patch (see :mod:`continual_operator.cluster.reconciler`).

**The watch-fed view.** Four kopf indexes (``view_runs``, ``view_batches``, ``view_jobs``, ``view_pods``)
keep the slimmed objects (:func:`~continual_operator.cluster.view.slim`) by run: batches by their
``spec.runName`` (users create them without labels), Jobs and pods by the run annotation or label. The
startup handler hands them to the reconciler as its :class:`~continual_operator.cluster.view.WatchView`;
kopf fills every index from its initial LIST before it calls any other handler.

Operator-wide settings (:func:`configure`): every handler is an event handler or an index, so kopf
writes nothing to the objects (no finalizer, no diff-base or progress annotation) and keeps no diff base
in memory either (:class:`NoDiffBase`); were a handler with progress added, kopf would keep its progress
in annotations prefixed with ``continual.dev``, never in ``.status``, whose schema is the API's; kopf's own log records become Kubernetes Events from WARNING up (the planner
already posts the Events that tell the story).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from continual_operator.api import BATCH_INFO, GROUP, RUN_INFO, VERSION
from continual_operator.cluster.k8s import JOBS as JOB_KIND
from continual_operator.cluster.k8s import KubernetesStorage
from continual_operator.cluster.reconciler import Reconciler, RunKey
from continual_operator.cluster.view import WatchView, folder_key, folders_of, slim
from continual_operator.naming import ANNOTATION_RUN, LABEL_RUN, MANAGED_BY
from continual_operator.observe.metrics import Metrics
from continual_operator.workloads.gang import COMPLETION_INDEX_ANNOTATION, JOBSET_API_VERSION, JOBSET_GROUP
from continual_operator.workloads.views import STARTUP_PROBLEMS

RUNS = (GROUP, VERSION, RUN_INFO.plural)
BATCHES = (GROUP, VERSION, BATCH_INFO.plural)
JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
#: The kopf index ids (and the keyword arguments under which kopf hands the indexes to handlers).
VIEW_INDEXES = ("view_runs", "view_batches", "view_jobs", "view_pods")
#: Multi-node attempts where JobSet is installed. kopf watches a resource only while it is served (it
#: follows CRDs appearing and going): without JobSet's CRD this index stays empty and nothing waits for it.
JOBSETS = (JOBSET_GROUP, JOBSET_API_VERSION.rpartition("/")[2], "jobsets")
JOBSET_INDEX = "view_jobsets"


@dataclass(frozen=True)
class OperatorOptions:
    """How this operator process runs (set from the command line)."""

    #: Serve Prometheus metrics on this port (None: no endpoint).
    metrics_port: int | None = None
    #: Reconcile every run at least this often, whatever happens.
    resync_seconds: float = 300.0
    #: Concurrent Kubernetes API calls of the reconciler.
    api_workers: int = 8
    #: Serve the read-only status page on this port (None: no page; see continual_operator.cluster.page).
    status_page_port: int | None = None
    #: The address the status page binds.
    status_page_host: str = "127.0.0.1"
    #: The namespaces the operator watches (empty: all): the page shows their runs.
    namespaces: tuple[str, ...] = ()


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for an operator without change handlers: none is built, kept or read.

    kopf builds the "essence" of every object it is sent (a deep copy of the whole body, less its status)
    for every event, whatever its handlers, to tell change handlers what changed. This operator has only
    event handlers and indexes, which never look at it: during a burst, copying every Job, pod and batch
    body was a tenth of the event loop's time. Were a change handler registered, kopf would store its
    essence once handled: :meth:`store` refuses that loudly instead of letting the handler see every
    event as a creation (tests/operator/test_handlers.py checks that none is registered).
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        raise RuntimeError(
            "a kopf change handler (on.create/update/resume/delete/field) was registered, but this operator "
            "keeps no diff base (continual_operator.cluster.handlers.NoDiffBase): use kopf.on.event with a filter"
        )


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (see the module docstring)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = MANAGED_BY
    # Only trainer Jobs and their pods are sent by the API server: a cluster's others cost nothing.
    settings.watching.label_selectors[JOBS] = LABEL_RUN
    settings.watching.label_selectors[PODS] = LABEL_RUN


def reconciler_of(memo: kopf.Memo) -> Reconciler:
    """The process's reconciler, made by the startup handler."""
    reconciler = memo.get("reconciler")
    if not isinstance(reconciler, Reconciler):
        raise kopf.PermanentError("the operator's startup handler did not run")
    return reconciler


def run_key(namespace: str | None, name: str) -> RunKey:
    """The reconciler's key of a run (every kind served here is namespaced)."""
    if namespace is None:
        raise kopf.PermanentError(f"{name} has no namespace: only namespaced objects are served")
    return (namespace, name)


# -- operator lifecycle -------------------------------------------------------------------------------
async def startup(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, options: OperatorOptions, **kwargs: Any
) -> None:
    """Configure kopf, connect to the API server, start the metrics endpoint, build the watch-fed view."""
    configure(settings)
    metrics = Metrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port)
    storage = KubernetesStorage.from_environment(max_workers=options.api_workers)
    runs, batches, jobs, pods = (kwargs[name] for name in VIEW_INDEXES)
    view = WatchView(runs, batches, jobs, pods, jobsets=kwargs[JOBSET_INDEX])
    memo["reconciler"] = Reconciler(
        storage, metrics=metrics, resync_seconds=options.resync_seconds, view=view
    )
    if options.status_page_port is not None:
        from continual_operator.cluster.page import start_page  # the page's modules only when asked for

        page = start_page(
            storage,
            asyncio.get_running_loop(),
            options.status_page_port,
            host=options.status_page_host,
            namespaces=options.namespaces,
        )
        memo["status_page"] = page
        logging.getLogger(__name__).info(f"status page (read-only) at {page.url}")


async def cleanup(*, memo: kopf.Memo, **_: Any) -> None:
    """Stop the status page and pending requeues, and release the API client."""
    if (page := memo.get("status_page")) is not None:
        page.close()
    reconciler = memo.get("reconciler")
    if isinstance(reconciler, Reconciler):
        await reconciler.close()
        reconciler.storage.close()


# -- runs ---------------------------------------------------------------------------------------------
def spec_changed(event_type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a run or TrainingBatch event can change a plan: it was listed (the operator starts),
    added, deleted or is being deleted, or its spec changed since the operator last reconciled it
    (``generation`` ahead of ``status.observedGeneration``). Not when it is a status patch: the operator's
    own, or the trainer's progress."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return (
        event_type in {None, "ADDED", "DELETED"}
        or meta.get("deletionTimestamp") is not None
        or meta.get("generation") != status.get("observedGeneration")
    )


def run_event_matters(event: Mapping[str, Any], memo: kopf.Memo | None = None, **_: Any) -> bool:
    """kopf's filter of the run-event handler (:func:`spec_changed`).

    A filter rather than a check inside the handler: kopf logs every handler call at INFO ("Handler
    'run-event' succeeded."), and the trainer patches the run's status with every progress update.
    Those updates feed the run's progress metrics here, from the event's body (no reconcile, no API call):
    between reconciles the step, loss and learning rate would otherwise lag (docs/observability.md).
    """
    body = event.get("object")
    if event.get("type") == "DELETED":
        return True
    reconciler = memo.get("reconciler") if memo is not None else None
    if isinstance(reconciler, Reconciler) and isinstance(body, Mapping):
        meta = body.get("metadata") or {}
        key = run_key(meta.get("namespace"), str(meta.get("name", "")))
        reconciler.metrics.progress(key, body.get("status") or {})
    return isinstance(body, Mapping) and spec_changed(event.get("type"), body)


async def on_run_event(
    *, event: Mapping[str, Any], namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A run was found when the operator started, created, changed or is being deleted: reconcile it
    (in the background, retried on failures; an invalid spec waits for the next change).

    A deleted run is forgotten (its Jobs go with it through their owner references), its unfinished
    batches say that they wait for it, and runs refused its folder are looked at again.

    An event handler, not kopf's create/update/resume handlers: those keep a diff-base and progress
    annotations on every run (a patch of each new run, a deep copy of every event's body) for what
    ``observedGeneration`` tells already.
    """
    reconciler = reconciler_of(memo)
    if event.get("type") == "DELETED":
        body = event.get("object")
        await reconciler.run_deleted(run_key(namespace, name), body if isinstance(body, Mapping) else {})
    else:
        await reconciler.trigger(run_key(namespace, name))


# -- batches and Jobs ---------------------------------------------------------------------------------
def batch_event_matters(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> bool:
    """kopf's filter of the batch-event handler (see :func:`spec_changed`; filtered events log nothing)."""
    run = (body.get("spec") or {}).get("runName")
    return isinstance(run, str) and bool(run) and spec_changed(event.get("type"), body)


async def on_batch_event(
    *, event: Mapping[str, Any], body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Reconcile the batch's run (``spec.runName``; the CRD schema makes it a non-empty string)."""
    run = (body.get("spec") or {}).get("runName")
    if isinstance(run, str) and run and spec_changed(event.get("type"), body):
        await reconciler_of(memo).trigger(run_key(namespace, run))


def run_of_job(body: Mapping[str, Any]) -> str | None:
    """The run a trainer Job belongs to: the full name from the annotation, else the label."""
    meta = body.get("metadata") or {}
    run = (meta.get("annotations") or {}).get(ANNOTATION_RUN) or (meta.get("labels") or {}).get(LABEL_RUN)
    return str(run) if run else None


def job_event_matters(body: Mapping[str, Any], memo: kopf.Memo | None = None, **_: Any) -> bool:
    """kopf's filter of the Job-event handler: not the watch delivering a Job as the run's own write left
    it (its create's answer, which the run's view shows already); every change by the Job controller."""
    reconciler = memo.get("reconciler") if memo is not None else None
    run, namespace = run_of_job(body), (body.get("metadata") or {}).get("namespace")
    if not isinstance(reconciler, Reconciler) or run is None or not isinstance(namespace, str):
        return True
    return not reconciler.storage.journal.echoes(JOB_KIND, namespace, run, body)


async def on_job_event(*, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile the Job's run: it started, progressed, finished or went away."""
    if (run := run_of_job(body)) is not None:
        await reconciler_of(memo).trigger(run_key(namespace, run))


def pod_waits(body: Mapping[str, Any], **_: Any) -> bool:
    """kopf's filter of the pod-event handler: a trainer pod that cannot start and says why (a missing
    Secret, an image that cannot be pulled, no node fits: :data:`STARTUP_PROBLEMS`), not the normal
    ContainerCreating of every start."""
    status = body.get("status") or {}
    if status.get("phase") not in {None, "Pending"}:
        return False
    reasons = {
        ((c.get("state") or {}).get("waiting") or {}).get("reason")
        for c in status.get("containerStatuses") or []
    }
    reasons |= {
        c.get("reason") or "Unschedulable"
        for c in status.get("conditions") or []
        if c.get("type") == "PodScheduled" and c.get("status") == "False"
    }
    return bool(reasons & STARTUP_PROBLEMS)


def gang_pod_ended(event: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """A pod of a multi-node gang (it has a completion index) ended or went away: the gang's workload
    may have finished before it (a JobSet or Indexed Job fails at its first failed pod while the other
    pods still checkpoint), and the attempt is over only once every trainer has ended."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    if COMPLETION_INDEX_ANNOTATION not in annotations:
        return False
    return event.get("type") == "DELETED" or (body.get("status") or {}).get("phase") in {
        "Succeeded",
        "Failed",
    }


def pod_event_matters(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> bool:
    """kopf's filter of the pod-event handler: :func:`pod_waits` or :func:`gang_pod_ended`."""
    return pod_waits(body) or gang_pod_ended(event, body)


async def on_pod_event(*, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile the pod's run: the batch says why its pod waits (and the start deadline counts)."""
    if (run := run_of_job(body)) is not None:
        await reconciler_of(memo).trigger(run_key(namespace, run))


# -- the watch-fed view (kopf indexes) ----------------------------------------------------------------
def _touch(memo: kopf.Memo) -> None:
    """An index changed: the view sweeps the write journal of what the indexes now reflect."""
    reconciler = memo.get("reconciler")
    if isinstance(reconciler, Reconciler) and reconciler.view is not None:
        reconciler.view.touch()


async def index_run(
    *, body: Mapping[str, Any], namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    """A run, under ``(namespace, name)`` and under each folder it may write in
    (:func:`~continual_operator.cluster.view.folder_key`: a reconcile's folder check reads only the runs
    on its folder, not every run of the namespace)."""
    kept = slim(RUN_INFO.kind, body)
    _touch(memo)
    keys: dict[Any, Any] = {(namespace, name): kept}
    keys.update((folder_key(namespace, folder), kept) for folder in folders_of(body))
    return keys


async def index_batch(
    *, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    """A TrainingBatch under ``(namespace, spec.runName)``."""
    run = (body.get("spec") or {}).get("runName")
    _touch(memo)
    return {(namespace, run): slim(BATCH_INFO.kind, body)} if isinstance(run, str) and run else {}


async def index_job(
    *, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    """A trainer Job under ``(namespace, run)``."""
    run = run_of_job(body)
    _touch(memo)
    return {(namespace, run): slim("Job", body)} if run else {}


async def index_pod(*, body: Mapping[str, Any], namespace: str | None, **_: Any) -> dict[Any, Any]:
    """A trainer pod (it carries its Job template's run label and annotation) under ``(namespace, run)``."""
    run = run_of_job(body)
    return {(namespace, run): slim("Pod", body)} if run else {}


async def index_jobset(
    *, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any
) -> dict[Any, Any]:
    """A multi-node attempt's JobSet under ``(namespace, run)``: its metadata, ``suspend`` and status (what
    :func:`~continual_operator.workloads.gang_views.gang_view` reads), not its pod templates."""
    run = run_of_job(body)
    _touch(memo)
    if not run:
        return {}
    kept = slim("JobSet", body)
    kept["spec"] = {"suspend": bool((body.get("spec") or {}).get("suspend"))}
    return {(namespace, run): kept}


async def on_jobset_event(
    *, body: Mapping[str, Any], namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Reconcile the JobSet's run: it was admitted, restarted its gang, completed or failed."""
    if (run := run_of_job(body)) is not None:
        await reconciler_of(memo).trigger(run_key(namespace, run))


# -- registration -------------------------------------------------------------------------------------
def build_registry(options: OperatorOptions) -> kopf.OperatorRegistry:
    """A kopf registry with this operator's handlers (explicit, so that nothing else sneaks in)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(id="login", registry=registry)(kopf.login_via_client)

    async def on_startup(**kwargs: Any) -> None:
        await startup(options=options, **kwargs)

    kopf.on.startup(id="startup", registry=registry)(on_startup)
    runs, batches, jobs, pods = VIEW_INDEXES
    kopf.index(*RUNS, id=runs, registry=registry)(index_run)
    kopf.index(*BATCHES, id=batches, registry=registry)(index_batch)
    kopf.index(*JOBS, id=jobs, labels={LABEL_RUN: kopf.PRESENT}, registry=registry)(index_job)
    kopf.index(*PODS, id=pods, labels={LABEL_RUN: kopf.PRESENT}, registry=registry)(index_pod)
    has_run = {LABEL_RUN: kopf.PRESENT}
    kopf.index(*JOBSETS, id=JOBSET_INDEX, labels=has_run, registry=registry)(index_jobset)
    kopf.on.event(*JOBSETS, id="jobset-event", labels=has_run, registry=registry)(on_jobset_event)
    kopf.on.cleanup(id="cleanup", registry=registry)(cleanup)
    kopf.on.event(*RUNS, id="run-event", when=run_event_matters, registry=registry)(on_run_event)
    kopf.on.event(*BATCHES, id="batch-event", when=batch_event_matters, registry=registry)(on_batch_event)
    kopf.on.event(
        *JOBS, id="job-event", labels={LABEL_RUN: kopf.PRESENT}, when=job_event_matters, registry=registry
    )(on_job_event)
    kopf.on.event(
        *PODS, id="pod-event", labels={LABEL_RUN: kopf.PRESENT}, when=pod_event_matters, registry=registry
    )(on_pod_event)
    return registry
