"""The only module that talks to the Kubernetes API: reads a run's world, carries out plans.

Everything else in the operator sees plain dicts going in (objects as the API server stores them) and
:class:`~continual_operator.planning.actions.Plan` actions going out; the planner and the builders never touch the
network, and the handlers never see an ``ApiException``: failures come out of here as the project's own
errors (:mod:`continual_operator.errors`), each naming the call that failed and what to do about it.

How it talks. The official ``kubernetes`` client is used at its transport level (``param_serialize`` +
``call_api``): it brings authentication (in-cluster tokens that rotate, kubeconfig contexts, client
certificates) and TLS, while bodies stay plain JSON dicts both ways. The typed APIs would convert every
dict into generated models and back, with the client's own idea of each field; a manifest built by
:mod:`continual_operator.workloads.resources` goes out byte for byte as built, and what comes back is exactly what
:mod:`continual_operator.workloads.views` parses. The client is synchronous, so calls run on a small thread pool of
their own: the event loop (kopf's watches, other runs' reconciles) never waits on a socket, and the pool's
size bounds the operator's concurrent API calls.

What it guarantees:

* **reads are fresh**: single GETs and LISTs without ``resourceVersion`` are quorum reads (the operator
  reads from its watch-fed view, :mod:`continual_operator.cluster.view`, and comes here only where that
  view may be late);
* **writes are journalled**: every create, patch and delete notes the server's answer (the object as
  stored, with its ``resourceVersion``) in :class:`WriteJournal`, under the run it was made for
  (:func:`writing_for`), so that the next reconciles of that run see it instead of an older copy until
  the watch has delivered it;
* **creates are idempotent**: every object has a deterministic name and a 409 AlreadyExists is success
  (the create-or-leave-alone rule), so a repeated plan never makes a second Job;
* **plans run in order and stop at the first error** (the planner's contract): the next reconcile computes
  the rest from what did happen. Events are the one exception: they are informational, a lost one is
  logged and the plan goes on (as kopf does with its own events).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from continual_operator.api import (
    API_VERSION,
    BATCH_INFO,
    RUN_INFO,
    ContinualTrainingRun,
    ObjectMeta,
)
from continual_operator.cluster.gate import PriorityExecutor, current_rank
from continual_operator.errors import (
    ConflictError,
    InvalidObjectError,
    KubernetesApiError,
    NotFoundError,
    RejectedObjectError,
    TransientApiError,
    error_for_status,
)
from continual_operator.naming import ANNOTATION_RUN, LABEL_RUN, MANAGED_BY, label_value
from continual_operator.planning.actions import (
    CreateWorkload,
    DeleteWorkload,
    EmitEvent,
    Plan,
    RequeueAfter,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.executor import Executed
from continual_operator.planning.status import rfc3339
from continual_operator.workloads.gang import JOBSET_API_VERSION
from continual_operator.workloads.kinds import ObjectRef, Workload

logger = logging.getLogger(__name__)

T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
#: ``source.component`` and ``reportingComponent`` of the Events the operator posts.
EVENT_COMPONENT = MANAGED_BY
#: The API server refuses longer Event messages (events.k8s.io) and ``kubectl describe`` cuts them anyway.
EVENT_MESSAGE_MAX = 1024
#: Page size of LIST calls: bounded memory on the API server and here, even with thousands of batches.
LIST_PAGE_SIZE = 500
_DNS_SUBDOMAIN_MAX = 253
#: The objects a run's workloads share (built into every workload, created once per run).
PER_RUN_KINDS = frozenset({"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim"})
#: A per-run object is created again (a 409 confirms it) at most this often: one deleted by hand is back
#: within this time, or at once when the operator restarts or the run is recreated.
PER_RUN_RECHECK_SECONDS = 600.0


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    kind: str

    @property
    def resource(self) -> str:
        """``plural.group`` as RBAC rules and ``kubectl`` name it (``jobs.batch``)."""
        group = self.api_version.rpartition("/")[0]
        return f"{self.plural}.{group}" if group else self.plural

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The collection, object or subresource URL path in a namespace (None: every namespace's)."""
        root = f"/apis/{self.api_version}" if "/" in self.api_version else f"/api/{self.api_version}"
        parts = [root, "namespaces", namespace, self.plural] if namespace is not None else [root, self.plural]
        parts += [name] if name is not None else []
        parts += [subresource] if subresource is not None else []
        return "/".join(parts)


RUNS = Kind(API_VERSION, RUN_INFO.plural, RUN_INFO.kind)
BATCHES = Kind(API_VERSION, BATCH_INFO.plural, BATCH_INFO.kind)
JOBS = Kind("batch/v1", "jobs", "Job")
PODS = Kind("v1", "pods", "Pod")
CONFIG_MAPS = Kind("v1", "configmaps", "ConfigMap")
EVENTS = Kind("v1", "events", "Event")
SECRETS = Kind("v1", "secrets", "Secret")
#: A multi-node attempt where JobSet is installed, and the headless Service of one without it.
JOBSETS = Kind(JOBSET_API_VERSION, "jobsets", "JobSet")
SERVICES = Kind("v1", "services", "Service")
#: The name of the server-side dry-run Job that tells whether the API server keeps ``completionMode``.
INDEXED_JOB_PROBE = "continual-indexed-job-probe"
_KINDS = {
    (k.api_version, k.kind): k
    for k in (
        RUNS,
        BATCHES,
        JOBS,
        PODS,
        CONFIG_MAPS,
        EVENTS,
        JOBSETS,
        SERVICES,
        Kind("v1", "serviceaccounts", "ServiceAccount"),
        Kind("v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
        Kind("rbac.authorization.k8s.io/v1", "roles", "Role"),
        Kind("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    )
}
#: Kinds by their Kubernetes kind name: what a workload's owned objects (:class:`ObjectRef`) name.
_BY_KIND = {k.kind: k for k in _KINDS.values()}
_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    """The :class:`Kind` of a manifest built by :mod:`continual_operator.workloads.resources`."""
    return _KINDS[(manifest["apiVersion"], manifest["kind"])]


# -- errors -------------------------------------------------------------------------------------------
def translate_api_exception(exc: ApiException, doing: str) -> KubernetesApiError:
    """An ``ApiException`` of the Kubernetes client as the project's error."""
    return error_for_status(exc.status, exc.reason, exc.body, doing)


# -- configuration ------------------------------------------------------------------------------------
def load_configuration() -> kubernetes.client.Configuration:
    """The API server and credentials: the pod's ServiceAccount in a cluster, else the kubeconfig.

    The same order kopf uses for its own connection (``login_via_client``), so both talk to one server.
    """
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


# -- what a plan is about -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """The run and batches a plan was made from: what its actions need besides their own fields.

    ``run`` is None when the run's spec did not validate; ``batch_metas`` holds every listed batch of the
    run, valid or not, so that Events find their object.
    """

    run_meta: ObjectMeta
    run: ContinualTrainingRun | None = None
    batch_metas: Mapping[str, ObjectMeta] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.run_meta.namespace or "default"


# -- the write journal --------------------------------------------------------------------------------
#: What the journal keeps of an answered object (the view's ``slim``): set by the view that overlays it.
Keep = Callable[[str, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Written:
    """A write the watch must deliver before the run's view may show the object from its index alone."""

    #: The ``resourceVersion`` the server answered, as a number (None: none, or not a number).
    version: int | None
    #: The write deleted the object (and the server answered no object still being deleted).
    deleted: bool = False
    #: The object as the server answered it, slimmed as the view keeps objects (None: not kept, or no
    #: usable answer): the view shows it instead of an older indexed copy until the watch delivers it.
    body: Mapping[str, Any] | None = None
    #: The run's writes created the object: an index that does not hold it yet has not been told (an
    #: object only patched and absent from the index was deleted since).
    created: bool = False
    #: When it was noted (``time.monotonic()``): a write the watch has not delivered for long is read afresh.
    at: float = field(default_factory=time.monotonic)


def version(body: Mapping[str, Any] | None) -> int | None:
    """An object's ``resourceVersion`` as a number (None: absent or not a number): etcd's revision, which
    the journal and the view compare."""
    value = ((body or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(value))
    except ValueError:
        return None


#: The run whose reconcile makes the current writes (a context variable: reconciles run concurrently).
_WRITING_FOR: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "continual_writing_for", default=None
)
#: The kinds a reconcile reads back from its view (the others are write-only for it).
_JOURNALLED = {"ContinualTrainingRun", "TrainingBatch", "Job", "JobSet"}


class Superseded(Exception):  # noqa: N818 (not an error: a reconcile gave way to a newer one)
    """A reconcile gave way before its first write: a newer reconcile of the same run waits to plan from
    a newer view (see :func:`giving_way`)."""


class _GiveWay:
    """Whether the writes of one reconcile have begun, and whether it should give way before they do."""

    def __init__(self, superseded: Callable[[], bool]) -> None:
        self._superseded = superseded
        self._lock = threading.Lock()
        self.written = False

    def guard(self, call: Callable[[], T]) -> Callable[[], T]:
        """``call`` (a write, run in a pool thread), or :class:`Superseded` when it would be the
        reconcile's first write and a newer reconcile of the run already waits."""

        def guarded() -> T:
            with self._lock:
                if not self.written:
                    if self._superseded():
                        raise Superseded("a newer reconcile of the run waits")
                    self.written = True
            return call()

        return guarded


_GIVE_WAY: contextvars.ContextVar[_GiveWay | None] = contextvars.ContextVar(
    "continual_give_way", default=None
)


@contextlib.contextmanager
def giving_way(superseded: Callable[[], bool]) -> Iterator[None]:
    """Let the reconcile inside the block give way before its first write, when ``superseded()`` (asked
    in the pool thread at the moment that write would go out) says a newer reconcile of the run waits.

    Under load a write waits its turn in the request queue for a second or more, and a run's next event
    (its first batch right after the run itself) often comes meanwhile: the waiting reconcile will read
    the newer view and write everything the older plan would have, so the older plan's writes (a status
    patch that the next one writes again) are left out. Up to its first write a reconcile has changed
    nothing, so giving way is the same as never having started; once one write went out, the plan runs
    to its end (or its first error) as before. :class:`Superseded` is raised in the reconcile.
    """
    token = _GIVE_WAY.set(_GiveWay(superseded))
    try:
        yield
    finally:
        _GIVE_WAY.reset(token)


@contextlib.contextmanager
def writing_for(namespace: str, run: str) -> Iterator[None]:
    """Note the writes made inside the block under the run ``namespace/run`` (see :class:`WriteJournal`)."""
    token = _WRITING_FOR.set((namespace, run))
    try:
        yield
    finally:
        _WRITING_FOR.reset(token)


class WriteJournal:
    """Each run's writes not yet confirmed by the watch: ``(kind, name) -> Written`` per run.

    Every write's answer is the object as the server stored it (create and patch answers carry the full
    body and its ``resourceVersion``): with :attr:`keep` set (by the watch-fed view) the journal keeps it,
    slimmed, so that the view can show it at once instead of reading it again (client-go's
    ``MutationCache``). The view drops an entry as soon as its index holds that version or a newer one.
    """

    def __init__(self, keep: Keep | None = None) -> None:
        self._runs: dict[tuple[str, str], dict[tuple[Kind, str], Written]] = {}
        #: How an answered object is kept (None: versions only, no bodies).
        self.keep = keep

    def note(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        answer: Mapping[str, Any] | None,
        *,
        created: bool = False,
    ) -> None:
        """A write of the current run (:func:`writing_for`) was answered with ``answer`` (None: gone).

        ``created``: the write created the object (a later patch of it in the same run keeps that).
        """
        run = _WRITING_FOR.get()
        if run is None or kind.kind not in _JOURNALLED or run[0] != namespace:
            return
        is_object = answer is not None and answer.get("kind") == kind.kind
        number = version(answer) if is_object else None
        entries = self._runs.setdefault(run, {})
        before = entries.get((kind, name))
        created = created or (before is not None and before.created and not before.deleted)
        body = None
        if answer is not None and is_object and number is not None and self.keep is not None:
            body = self.keep(kind.kind, answer)
        entries[kind, name] = Written(number, deleted=not is_object, body=body, created=created)

    def pending(self, namespace: str, run: str) -> dict[tuple[Kind, str], Written]:
        """The run's unconfirmed writes."""
        return dict(self._runs.get((namespace, run), {}))

    def settled(self, namespace: str, run: str, left: Mapping[tuple[Kind, str], Written]) -> None:
        """The view reflects all of the run's writes but ``left``: those stay here (at the versions and
        with the bodies ``left`` gives) until the view reflects them too (a lagging watch must not show
        the next reconcile an older object again). An entry without a version is dropped."""
        kept = {ref: w for ref, w in left.items() if w.version is not None or w.deleted}
        if kept:
            self._runs[namespace, run] = kept
        else:
            self._runs.pop((namespace, run), None)

    def echoes(self, kind: Kind, namespace: str, run: str, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` (a watch event's) is the object exactly as one of the run's own writes left it:
        the watch delivering that write, which the run's view shows already (nothing new to reconcile)."""
        name = str((body.get("metadata") or {}).get("name"))
        written = self._runs.get((namespace, run), {}).get((kind, name))
        if written is None or written.deleted or written.version is None:
            return False
        return version(body) == written.version

    def runs(self) -> list[tuple[str, str]]:
        """The runs with unconfirmed writes, as ``(namespace, run)``."""
        return list(self._runs)

    def __len__(self) -> int:
        """How many writes wait for the watch, over all runs."""
        return sum(len(entries) for entries in self._runs.values())

    def forget(self, namespace: str, run: str) -> None:
        self._runs.pop((namespace, run), None)


# -- the storage --------------------------------------------------------------------------------------
class KubernetesStorage:
    """Async access to the objects of continual training runs."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        max_workers: int = 8,
        request_timeout: float = 30.0,
        instance: str | None = None,
    ) -> None:
        self._client = api_client
        self._timeout = request_timeout
        #: ``max_workers`` requests in flight; the waiting ones go oldest reconcile first (cluster/gate.py).
        self._executor = PriorityExecutor(max_workers, name="k8s-api")
        #: ``reportingInstance`` of Events: the pod's name (its hostname) tells replicas apart.
        self.instance = instance or os.environ.get("HOSTNAME") or socket.gethostname()
        self.journal = WriteJournal()
        #: Per-run objects (ServiceAccount, Role, RoleBinding, claim) known to exist, with when they were
        #: last confirmed: created once per run, not before every Job (see :meth:`create_workload`).
        self._per_run: dict[tuple[str, str, str], float] = {}

    @classmethod
    def from_environment(cls, **kwargs: Any) -> KubernetesStorage:
        """A storage for the cluster the operator runs in (or the kubeconfig's current context)."""
        return cls(kubernetes.client.ApiClient(load_configuration()), **kwargs)

    def close(self) -> None:
        """Release the thread pool and the connection pool."""
        self._executor.shutdown()
        self._client.close()  # type: ignore[no-untyped-call]

    # -- transport ------------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: Any,
        content_type: str,
    ) -> tuple[int, str | None, bytes]:
        """One HTTP request (in a pool thread): status, reason and body, whatever the status."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or None,
            header_params=headers,
            body=body,
            auth_settings=list(self._client.configuration.auth_settings()),
        )
        response = self._client.call_api(*request, _request_timeout=self._timeout)
        data = response.read()  # type: ignore[no-untyped-call]
        return int(response.status), response.reason, data or b""

    async def _request(
        self,
        method: str,
        path: str,
        *,
        doing: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send a request and return the JSON answer; raise the project's error for anything but 2xx."""
        call: Callable[[], tuple[int, str | None, bytes]] = functools.partial(
            self._call, method, path, list((query or {}).items()), body, content_type
        )
        if method != "GET" and (way := _GIVE_WAY.get()) is not None:
            call = way.guard(call)
        try:
            status, reason, data = await self._executor.run(current_rank(), call)
        except ApiException as exc:
            raise translate_api_exception(exc, doing) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise error_for_status(None, type(exc).__name__, str(exc), doing) from exc
        if not 200 <= status < 300:
            raise error_for_status(status, reason, data, doing)
        try:
            answer = json.loads(data) if data else {}
        except ValueError as exc:
            raise TransientApiError(
                doing, status, "InvalidResponse", f"the answer is not JSON: {exc}"
            ) from exc
        return answer if isinstance(answer, dict) else {}

    @staticmethod
    def _doing(
        method: str, kind: Kind, namespace: str | None, name: str | None = None, sub: str | None = None
    ) -> str:
        resource = f"{kind.resource}/{sub}" if sub else kind.resource
        if namespace is None:
            where = "in all namespaces"
        else:
            where = f"{namespace}/{name}" if name else f"in namespace {namespace}"
        verb = "list" if method == "GET" and name is None else _VERBS[method]
        return f"{verb} {resource} {where}"

    # -- reads ----------------------------------------------------------------------------------------
    async def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The run as stored now (None when it does not exist)."""
        try:
            return await self._request(
                "GET", RUNS.path(namespace, name), doing=self._doing("GET", RUNS, namespace, name)
            )
        except NotFoundError:
            return None

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """One object as stored now (None when it does not exist): the view's fallback."""
        try:
            return await self._request(
                "GET", kind.path(namespace, name), doing=self._doing("GET", kind, namespace, name)
            )
        except NotFoundError:
            return None

    # -- discovery (which engines the cluster offers: continual_operator.cluster.engines) --------------
    async def served_versions(self, group: str) -> list[str]:
        """The versions the API server serves of an API group (empty: the group is not served)."""
        try:
            answer = await self._request("GET", f"/apis/{group}", doing=f"discover the API group {group}")
        except NotFoundError:
            return []
        return [str(v.get("version")) for v in answer.get("versions") or [] if isinstance(v, dict)]

    async def server_version(self) -> tuple[int, int] | None:
        """The API server's ``(major, minor)`` (None: it does not say; ``minor`` may read ``"27+"``)."""
        answer = await self._request("GET", "/version", doing="read the API server's version")
        major = str(answer.get("major") or "").rstrip("+")
        minor = str(answer.get("minor") or "").rstrip("+")
        return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None

    async def keeps_completion_mode(self, namespace: str) -> bool:
        """Whether the API server keeps a Job's ``completionMode: Indexed``: a server-side dry-run create
        (nothing is stored, no controller sees it), whose answer drops the field where the server does not
        know it (before 1.21, or 1.21 without the IndexedJob feature gate)."""
        probe = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": INDEXED_JOB_PROBE, "namespace": namespace},
            "spec": {
                "completionMode": "Indexed",
                "completions": 1,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "probe", "image": "probe.invalid/probe:1"}],
                    }
                },
            },
        }
        try:
            answer = await self._request(
                "POST",
                JOBS.path(namespace),
                query={"dryRun": "All"},
                body=probe,
                doing=self._doing("POST", JOBS, namespace, INDEXED_JOB_PROBE) + " (dry run)",
            )
        except ConflictError:
            return False  # a Job of that name exists for real: leave it alone, and ask again later
        return (answer.get("spec") or {}).get("completionMode") == "Indexed"

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret (None when it does not exist): the S3 inbox's credentials. Never logged or stored."""
        try:
            return await self._request(
                "GET", SECRETS.path(namespace, name), doing=self._doing("GET", SECRETS, namespace, name)
            )
        except NotFoundError:
            return None

    async def _list(
        self,
        kind: Kind,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """All objects of a kind in a namespace (None: in every namespace), page by page."""
        items: list[dict[str, Any]] = []
        query = {"limit": str(LIST_PAGE_SIZE)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        while True:
            page = await self._request(
                "GET", kind.path(namespace), query=query, doing=self._doing("GET", kind, namespace)
            )
            items += [item for item in page.get("items") or [] if isinstance(item, dict)]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            query = {**query, "continue": str(token)}

    async def list_runs(self, namespace: str | None) -> list[dict[str, Any]]:
        """The namespace's runs (one folder per run: the planner checks that no two share one).

        ``None``: the runs of every namespace (the status page of an operator watching the cluster).
        """
        return await self._list(RUNS, namespace)

    async def list_all_batches(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every TrainingBatch of a namespace (None: of every namespace), whichever run it names.

        One LIST for a page that shows all runs, rather than one per run (:meth:`list_batches`).
        """
        return await self._list(BATCHES, namespace)

    async def list_events(
        self, namespace: str | None, kind: Kind, name: str | None = None
    ) -> list[dict[str, Any]]:
        """The core/v1 Events about an object of ``kind`` named ``name`` (None: about any of that kind),
        in a namespace (None: in every namespace).

        Selected on the server by ``involvedObject`` fields and checked again here, so that a server
        (or a test double) that ignores field selectors still answers only what was asked.
        """
        selector = f"involvedObject.kind={kind.kind}"
        if name is not None:
            selector += f",involvedObject.name={name}"
        items = await self._list(EVENTS, namespace, field_selector=selector)
        return [
            e
            for e in items
            if (e.get("involvedObject") or {}).get("kind") == kind.kind
            and (name is None or (e.get("involvedObject") or {}).get("name") == name)
        ]

    async def list_batches(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """The run's TrainingBatches (``spec.runName``), as stored.

        Batches are the users' objects and carry no label of the run, so the namespace's batches are listed
        and filtered here.
        """
        items = await self._list(BATCHES, namespace)
        return [b for b in items if isinstance(b.get("spec"), dict) and b["spec"].get("runName") == run]

    async def list_jobs(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """The run's Jobs (selected by label, then checked against the full name in the annotation)."""
        return _owned_by(await self._list(JOBS, namespace, f"{LABEL_RUN}={label_value(run)}"), run)

    async def list_jobsets(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """The run's JobSets (multi-node attempts where JobSet is installed), selected like its Jobs."""
        return _owned_by(await self._list(JOBSETS, namespace, f"{LABEL_RUN}={label_value(run)}"), run)

    async def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        """The pods of the run's Jobs (they carry the Job template's labels and annotations)."""
        return _owned_by(await self._list(PODS, namespace, f"{LABEL_RUN}={label_value(run)}"), run)

    # -- writes ---------------------------------------------------------------------------------------
    async def create(self, manifest: Mapping[str, Any]) -> bool:
        """Create an object; False when it exists already (409 is not an error: create-or-leave-alone)."""
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            answer = await self._request(
                "POST",
                kind.path(namespace),
                body=dict(manifest),
                doing=self._doing("POST", kind, namespace, name),
            )
        except ConflictError:
            return False
        self.journal.note(kind, namespace, name, answer, created=True)
        return True

    async def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        propagation: Literal["Foreground", "Background", "Orphan"] = "Background",
    ) -> bool:
        """Delete an object; False when it was gone already."""
        try:
            answer = await self._request(
                "DELETE",
                kind.path(namespace, name),
                query={"propagationPolicy": propagation},
                doing=self._doing("DELETE", kind, namespace, name),
            )
        except NotFoundError:
            self.journal.note(kind, namespace, name, None)
            return False
        # A foreground deletion answers the object, still there with its deletionTimestamp; else a Status.
        self.journal.note(kind, namespace, name, answer)
        return True

    async def patch_metadata(self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch an object's metadata (the S3 inbox notes on its batches; ``None`` deletes a key)."""
        answer = await self._request(
            "PATCH",
            kind.path(namespace, name),
            body={"metadata": dict(patch)},
            content_type=MERGE_PATCH,
            doing=self._doing("PATCH", kind, namespace, name),
        )
        self.journal.note(kind, namespace, name, answer)

    async def patch_status(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        resource_version: str | None = None,
    ) -> str | None:
        """Merge-patch an object's status through the status subresource (``None`` deletes a key).

        ``resource_version``: a precondition; the server answers 409 (:class:`ConflictError`) when the
        object has changed since (the patch was planned from an older view of it). Returns the object's
        new ``resourceVersion``.
        """
        body: dict[str, Any] = {"status": dict(patch)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            answer = await self._request(
                "PATCH",
                kind.path(namespace, name, "status"),
                body=body,
                content_type=MERGE_PATCH,
                doing=self._doing("PATCH", kind, namespace, name, "status"),
            )
        except (ConflictError, NotFoundError):
            # The view's copy is older than the stored object (or the object is gone, which a watch
            # restarted after a pause may never say): the next reconcile reads it afresh.
            self.journal.note(kind, namespace, name, {"kind": kind.kind, "metadata": {}})
            raise
        self.journal.note(kind, namespace, name, answer)
        return (answer.get("metadata") or {}).get("resourceVersion")

    async def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *, now: dt.datetime
    ) -> None:
        """Record a core/v1 Event about ``involved`` (an object reference with namespace and name).

        Named ``<object>.<hex>`` like client-go's recorder; the legacy fields (first/lastTimestamp, count,
        source) are what ``kubectl describe`` shows on every Kubernetes version.
        """
        namespace, name = involved["namespace"], involved["name"]
        suffix = f".{time.time_ns():x}{secrets.token_hex(2)}"
        if len(message) > EVENT_MESSAGE_MAX:
            message = message[: EVENT_MESSAGE_MAX - 3] + "..."
        stamp = rfc3339(now)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name[: _DNS_SUBDOMAIN_MAX - len(suffix)] + suffix, "namespace": namespace},
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": EVENT_COMPONENT},
            "reportingComponent": EVENT_COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.create(event)

    # -- plans ----------------------------------------------------------------------------------------
    async def execute(self, plan: Plan, subject: Subject, *, now: dt.datetime) -> Executed:
        """Carry out a plan's actions in order; stop at the first error (it propagates).

        ``RequeueAfter`` is left to the caller (it is about scheduling, not the API). The per-run objects
        the plan's first workload needs and that are not known to exist are created while the writes
        before it (the batch marked as starting) go out, not after them: they are create-or-leave-alone
        and belong to the run, so a plan stopped before its workload leaves nothing wrong behind, and a
        run's first Job waits for one round of writes fewer.
        """
        created: list[str] = []
        # Batch status patches are preconditioned on the version the plan was made from: only the
        # operator writes them, so a conflict means the batch changed (its spec, or another operator)
        # after the view was read, and the plan is made again from the new one.
        versions = {name: meta.resource_version for name, meta in subject.batch_metas.items()}
        first = next((a.workload for a in plan.actions if isinstance(a, CreateWorkload)), None)
        ready = asyncio.ensure_future(self.create_run_objects(first)) if first is not None else None
        namespace = subject.namespace
        try:
            for action in plan.actions:
                if isinstance(action, CreateWorkload):
                    if ready is not None:
                        await ready  # the per-run objects (their error, if any, stops the plan here)
                    if await self.create_workload(action.workload):
                        created.append(action.job_name)
                elif isinstance(action, DeleteWorkload):
                    await self.delete_workload(namespace, action)
                elif isinstance(action, UpdateBatchStatus):
                    versions[action.batch] = await self.patch_status(
                        BATCHES,
                        namespace,
                        action.batch,
                        action.patch,
                        resource_version=versions.get(action.batch),
                    )
                elif isinstance(action, UpdateRunStatus):
                    await self.patch_status(RUNS, namespace, subject.run_meta.name, action.patch)
                elif isinstance(action, EmitEvent):
                    await self._emit(action, subject, now)
                else:
                    assert isinstance(action, RequeueAfter)
        finally:
            if ready is not None and not ready.done():  # the plan stopped before its workload
                await asyncio.gather(ready, return_exceptions=True)
        return Executed(tuple(created))

    async def create_workload(self, workload: Workload) -> bool:
        """Create a built workload's manifests, each create-or-leave-alone; True when its Job is new.

        The per-run objects not known to exist come first, in two rounds of concurrent creates (the
        ServiceAccount, Role and claim; then the RoleBinding, which the API server refuses before its
        Role exists unless the operator may ``bind``), then the workload's own objects in order (the
        Job, or a gang's Service and Job, last).

        An object the API server refuses as invalid (422) was built from a spec that passed validation: it
        is a :class:`~continual_operator.errors.RejectedObjectError`, put on the run's status by the reconciler.
        """
        new = False
        await self.create_run_objects(workload)
        try:
            for manifest in workload.manifests:
                if manifest["kind"] not in PER_RUN_KINDS:
                    new = await self.create(manifest)
        except InvalidObjectError as error:
            raise RejectedObjectError(error.doing, error.status, error.reason, error.message) from error
        return new

    async def create_run_objects(self, workload: Workload) -> None:
        """Create the per-run objects of ``workload`` not known to exist (see :meth:`create_workload`)."""
        missing = [
            m
            for m in workload.manifests
            if m["kind"] in PER_RUN_KINDS
            and time.monotonic() - self._per_run.get(_ref(m), -PER_RUN_RECHECK_SECONDS)
            >= PER_RUN_RECHECK_SECONDS  # else created (or found) for an earlier Job of the run
        ]
        try:
            await self._create_per_run([m for m in missing if m["kind"] != "RoleBinding"], workload.name)
            await self._create_per_run([m for m in missing if m["kind"] == "RoleBinding"], workload.name)
        except InvalidObjectError as error:
            raise RejectedObjectError(error.doing, error.status, error.reason, error.message) from error

    async def _create_per_run(self, manifests: list[Mapping[str, Any]], workload: str) -> None:
        """Create per-run objects concurrently; every create ends before the first error is raised."""
        answers = await asyncio.gather(*(self.create(m) for m in manifests), return_exceptions=True)
        for manifest, answer in zip(manifests, answers, strict=True):
            if isinstance(answer, BaseException):
                continue
            self._per_run[_ref(manifest)] = time.monotonic()
            if answer:
                logger.info(f"created {manifest['kind']} {manifest['metadata']['name']} for {workload}")
        if errors := [a for a in answers if isinstance(a, BaseException)]:
            raise errors[0]

    def forget_run(self, namespace: str, run: str) -> None:
        """The run was deleted (its per-run objects with it, by owner reference): create them anew."""
        self.journal.forget(namespace, run)
        self._per_run = {k: t for k, t in self._per_run.items() if k[0] != namespace or k[2] != run}

    async def delete_workload(self, namespace: str, action: DeleteWorkload) -> bool:
        """Delete a workload's own object (its Job, or a gang's JobSet, with the action's propagation) and
        the other objects it owns (in the background); False when its own object was gone already."""
        objects = action.objects or (ObjectRef("Job", action.name),)
        gone = True
        for index, ref in enumerate(objects):
            propagation = action.propagation if index == 0 else "Background"
            deleted = await self.delete(_BY_KIND[ref.kind], namespace, ref.name, propagation)
            if index == 0:
                gone = deleted
        return gone

    async def _emit(self, action: EmitEvent, subject: Subject, now: dt.datetime) -> None:
        """Post a plan's Event; a failure is logged, not raised (Events are informational)."""
        if action.kind == RUN_INFO.kind:
            meta: ObjectMeta | None = subject.run_meta
        else:
            meta = subject.batch_metas.get(action.name)
        involved: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": action.kind,
            "name": action.name,
            "namespace": subject.namespace,
        }
        if meta is not None and meta.uid is not None:
            involved["uid"] = meta.uid
        try:
            await self.post_event(involved, action.type, action.reason, action.message, now=now)
        except KubernetesApiError as error:
            logger.warning(f"Event {action.reason} on {action.kind} {action.name} was not recorded: {error}")


def _ref(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    """A per-run object as ``(namespace, kind/name@owner uid, run)``: a recreated run (new uid) gets its
    own; the run from its run annotation or label."""
    meta = manifest["metadata"]
    run = (meta.get("annotations") or {}).get(ANNOTATION_RUN) or (meta.get("labels") or {}).get(LABEL_RUN, "")
    owner = next((str(o.get("uid")) for o in meta.get("ownerReferences") or []), "")
    return (meta["namespace"], f"{manifest['kind']}/{meta['name']}@{owner}", str(run))


def _owned_by(items: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    """Objects whose run label or annotation names ``run`` (a shortened label may be shared by two runs)."""
    wanted = label_value(run)
    owned = []
    for item in items:
        meta = item.get("metadata") or {}
        annotation = (meta.get("annotations") or {}).get(ANNOTATION_RUN)
        label = (meta.get("labels") or {}).get(LABEL_RUN)
        if annotation == run or (annotation is None and label == wanted):
            owned.append(item)
    return owned
