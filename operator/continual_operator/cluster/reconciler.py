"""Reconcile one run: read its world, parse it at the edge, plan, carry the plan out -- one run at a time.

Every trigger (a change of the run, of one of its batches or Jobs, a timer, a requeue) comes down to
:meth:`Reconciler.reconcile` with the run's namespace and name. It never trusts the object of the event
that triggered it; one code path serves all triggers.

**Reads from the watch.** Under kopf the reconciler reads the run, its batches, Jobs and pods and the
runs that may share its folder from :class:`~continual_operator.cluster.view.WatchView`, which kopf's
watches keep current: a reconcile lists nothing, its cost does not grow with the namespace's runs, and
an idle run's resync costs no request. Fresh reads remain only
where correctness needs them:

* the run's **own last writes**, where their answers did not tell: every object the run's reconciles
  created, patched or deleted is shown as the server answered the write until the watch delivers that
  version (:mod:`~continual_operator.cluster.view`), so no reconcile acts on a view older than its own
  last write (e.g. re-counting a preemption it already recorded); an answer without a body or a
  version (a 409, a 404), or a write the watch has not delivered after
  :data:`~continual_operator.cluster.view.OVERLAY_SECONDS`, is read afresh by name;
* the **writes of the other runs on the same folder** (their ``trainedWith``, patched under the folder
  lock a moment ago): who holds a folder is decided from them, so they are overlaid the same way;
* a **finished Job whose pod the view still shows running** (the Job and pod watches are two streams): its
  pods are listed afresh, by the run's label, before its result is read (:mod:`.executor`).

The S3 inbox's poll reads the run's batches from the view too (settled on the batches it created).

Conflicts with what the view does not yet show are caught by the server, not by re-reading everything:
Jobs and all other objects have deterministic names (a second create is a 409, the create-or-leave-alone
rule), and batch status patches carry the batch's ``resourceVersion`` as a precondition (a 409 makes the
run reconcile again from the newer view). A reconciler made without a view (the handler tests drive it
directly) reads everything afresh, as single GETs and LISTs by label and by run.

**One reconcile per run at a time.** An ``asyncio.Lock`` per run serialises reconciles of the same run
(within one operator; kopf peering makes sure only one operator acts). Together with the planner's
single-writer rule and deterministic Job names this is what keeps one active Job per run. Triggers that
arrive while a reconcile of the same run already *waits* for the lock are dropped: the waiting one has not
read anything yet, so it will see whatever those triggers were about (a burst of Job events costs one
reconcile, not one each). And a reconcile whose first write has not gone out yet when a newer one starts
waiting gives way to it (:func:`~continual_operator.cluster.k8s.giving_way`): under load a write waits
its turn for a second or more, and the run's next event (its first batch, right after the run) comes
meanwhile; the older plan had changed nothing, so only its writes that the newer plan makes again
(the run's status) are saved. The newer reconcile keeps the older one's place in the request queue and
does not give way in turn.

**Validation at the edge.** Raw dicts become models here; a run whose spec does not validate gets the
Degraded condition and a Warning Event naming the field (:func:`~continual_operator.planning.status.plan_invalid_spec`)
and raises :class:`InvalidSpecError`; the same happens when the API server refuses an object built from a
spec that passed (:class:`~continual_operator.errors.RejectedObjectError`), after which the run waits for a
new generation of its spec instead of being retried in a loop. An invalid batch is marked Failed on its
own and left out of the plan.

**One folder, one decision at a time.** Reconciles of runs whose spec points at the same folder (namespace,
claim, subPath) are serialised too, so that of two runs created together one holds the folder and the
other is refused (VolumeInUse), instead of both reading the other as not yet started.

**Requeues.** A plan's ``RequeueAfter`` (a retry's back-off ends) and a failed API call schedule the next
reconcile of that run in this process, and so does a slow periodic resync (``resync_seconds``), the safety
net against missed watch events. It is kept here rather than in a kopf timer because kopf puts a finalizer
on every object that has a timer: deleting a run would then need a running operator, and the run's
Jobs and checkpoints are meant to be cleaned up (or kept) by the garbage collector alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from continual_operator.api import (
    ContinualTrainingRun,
    ContinualTrainingRunSpec,
    ContinualTrainingRunStatus,
    ObjectMeta,
    TrainingBatch,
    TrainingBatchSpec,
    TrainingBatchStatus,
)
from continual_operator.cluster.engines import EngineDiscovery
from continual_operator.cluster.executor import ClusterExecutor
from continual_operator.cluster.gate import current_rank, ranked
from continual_operator.cluster.inbox_sync import InboxSync
from continual_operator.cluster.k8s import KubernetesStorage, Subject, Superseded, giving_way, writing_for
from continual_operator.cluster.view import RunWorld, WatchView, folders_of
from continual_operator.errors import KubernetesApiError, RejectedObjectError
from continual_operator.observe.metrics import Metrics, patched
from continual_operator.planning.actions import (
    Action,
    CreateWorkload,
    DeleteWorkload,
    Plan,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.planner import PlanContext
from continual_operator.planning.planner import plan as make_plan
from continual_operator.planning.refusals import volume_key
from continual_operator.planning.status import (
    describe_validation_error,
    one_patch_per_object,
    plan_batches_without_run,
    plan_invalid_batch,
    plan_invalid_spec,
)
from continual_operator.workloads.gang import Engines

logger = logging.getLogger(__name__)

#: A run, as ``(namespace, name)``.
RunKey = tuple[str, str]
#: The reason :func:`~continual_operator.planning.status.plan_invalid_spec` gives its conditions.
INVALID_SPEC = "InvalidSpec"
#: The reports of a plan (status patches and Events) after its last workload action, all of a plan
#: that only reports, rank in the request queue as a reconcile started this much later (cluster/gate.py):
#: under a burst, the writes that start training go first, and a report still waiting when its run's
#: next event comes is left out (the reconcile gives way,
#: :func:`~continual_operator.cluster.k8s.giving_way`). With an idle queue it changes nothing; under load
#: no report waits more than this longer than it would have. (A batch is marked as starting before its
#: workload is created: that patch goes with the workload.)
REPORT_RANK_DELAY_SECONDS = 5.0


def _split_reports(plan: Plan) -> tuple[Plan, Plan]:
    """The plan up to its last workload action (create or delete), and the reports after it."""
    last = max(
        (i for i, a in enumerate(plan.actions) if isinstance(a, CreateWorkload | DeleteWorkload)), default=-1
    )
    return Plan(plan.actions[: last + 1]), Plan(plan.actions[last + 1 :])


#: Retry delay after an error that is neither the API's nor the spec's (a bug).
UNEXPECTED_ERROR_RETRY_SECONDS = 60.0


class InvalidSpecError(Exception):
    """The run's spec is invalid (or produced an object the cluster refused); it is on the run's status."""


def utcnow() -> dt.datetime:
    """The reconcile clock."""
    return dt.datetime.now(dt.UTC)


def _status(model: type[BaseModel], raw: Mapping[str, Any], what: str) -> Any:
    """A status as a model; an unreadable one (written by something else) counts as empty, and is rewritten."""
    try:
        return model.model_validate(raw.get("status") or {})
    except ValidationError as error:
        logger.warning(
            f"the status of {what} is unreadable, recomputing it: {describe_validation_error(error)}"
        )
        return model()


def _other_runs(
    raw_runs: list[dict[str, Any]], name: str, folder: tuple[str, str] | None = None
) -> list[ContinualTrainingRun]:
    """The namespace's other runs that parse (one that does not cannot start Jobs, so it holds no folder);
    with ``folder``, only those that may write in it."""
    runs = []
    for raw in raw_runs:
        if (raw.get("metadata") or {}).get("name") == name or (
            folder is not None and folder not in folders_of(raw)  # a cheap test before parsing
        ):
            continue
        meta = ObjectMeta.model_validate(raw.get("metadata") or {})
        try:
            spec = ContinualTrainingRunSpec.model_validate(raw.get("spec") or {})
        except ValidationError:
            continue
        status = _status(ContinualTrainingRunStatus, raw, f"run {meta.namespace}/{meta.name}")
        runs.append(ContinualTrainingRun(metadata=meta, spec=spec, status=status))
    return runs


def _refused_at_this_generation(run: ContinualTrainingRun) -> bool:
    """The cluster refused an object built from the current spec: nothing changes until the spec does."""
    return run.status.phase == "Failed" and any(
        c.type == "Degraded"
        and c.status == "True"
        and c.reason == INVALID_SPEC
        and c.observed_generation == run.metadata.generation
        for c in run.status.conditions
    )


def _outcome(patch: Mapping[str, Any], before: TrainingBatchStatus) -> tuple[str, str] | None:
    """The end of an attempt a batch status patch records, as ``(outcome, reason)``, or None.

    Read from the counters as well as the phase: a preempted attempt is followed by the next one in the
    same plan, so its patch says Training again, with one preemption more.
    """
    phase = patch.get("phase")
    reason = str(patch.get("reason", before.reason) or "")
    if phase in {"Succeeded", "Failed"}:
        return str(phase), reason
    if (patch.get("preemptions") or 0) > (before.preemptions or 0):
        return "Preempted", "Preempted"
    if (patch.get("failures") or 0) > (before.failures or 0):
        return "Retried", reason
    return None


class Reconciler:
    """Reconciles runs: per-run serialisation, requeues and metrics around the planner."""

    def __init__(
        self,
        storage: KubernetesStorage,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        resync_seconds: float | None = None,
        inbox: InboxSync | None = None,
        view: WatchView | None = None,
    ) -> None:
        self.storage = storage
        #: The watch-fed view (None: every reconcile reads afresh).
        self.view = view
        if view is not None:
            view.attach(storage.journal)  # the view overlays the answers to this storage's writes
        self.inbox = inbox if inbox is not None else InboxSync(storage, batches=self._run_batches)
        self.resync_seconds = resync_seconds
        self.metrics = metrics if metrics is not None else Metrics()
        self._clock = clock
        #: One lock per run, kept while anyone holds or waits for it (``_users``), then dropped.
        self._locks: dict[RunKey, asyncio.Lock] = {}
        self._users: dict[RunKey, int] = {}
        self._waiting: set[RunKey] = set()
        #: Runs whose last reconcile gave way to the waiting one, with its rank (see :meth:`_measured`).
        self._gave_way: dict[RunKey, float] = {}
        self._timers: dict[RunKey, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: One lock per run folder (namespace, claim, subPath), kept while in use like the run locks.
        self._folder_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._folder_users: dict[tuple[str, str, str], int] = {}
        #: The multi-node engines the cluster offers (asked only for runs with nodes > 1).
        self.engines = EngineDiscovery(storage)

    # -- entry points -----------------------------------------------------------------------------------
    async def reconcile(self, key: RunKey) -> Plan | None:
        """Reconcile one run now; the plan carried out, or None when the trigger was folded into a waiting
        reconcile or this one gave way to it before its first write.

        Raises :class:`InvalidSpecError` or a :class:`~continual_operator.errors.KubernetesApiError`.
        """
        if key in self._waiting:
            return None
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        self._waiting.add(key)
        acquired = False
        try:
            async with lock:
                acquired = True
                self._waiting.discard(key)
                return await self._measured(key)
        finally:
            if not acquired:
                self._waiting.discard(key)
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    async def reconcile_or_retry(self, key: RunKey) -> None:
        """Reconcile in the background (events, timers): failures are logged and retried after a delay."""
        try:
            await self.reconcile(key)
        except InvalidSpecError:
            pass  # on the run's status and in an Event already; the next spec change is the next step
        except KubernetesApiError as error:
            logger.warning(
                f"reconcile of run {key[0]}/{key[1]} failed, retrying in {error.retry_after:.0f}s: {error}"
            )
            self.requeue(key, error.retry_after)
        except Exception:
            # A bug must not end the run's requeue chain (its resync included): log it, try again later.
            logger.exception(f"reconcile of run {key[0]}/{key[1]} failed unexpectedly")
            self.requeue(key, UNEXPECTED_ERROR_RETRY_SECONDS)

    async def run_deleted(self, key: RunKey, body: Mapping[str, Any]) -> None:
        """A run is gone: forget it, let its batches say they wait for it, and reconcile the runs that
        were refused its folder (VolumeInUse), so that the next one takes it over now, not at the resync."""
        self.forget(key)
        await self.reconcile_or_retry(key)
        try:
            (gone,) = _other_runs([dict(body)], name="")  # the run as it was (a status of its own)
            folder = volume_key(gone)
            raw_runs = (
                self.view.folder_runs(key[0], folder)
                if self.view is not None
                else await self.storage.list_runs(key[0])
            )
        except (ValueError, KubernetesApiError):
            return  # unparseable or unreadable: the periodic resync reconciles them anyway
        for run in _other_runs(raw_runs, key[1], folder):
            if volume_key(run) == folder:
                await self.reconcile_or_retry((key[0], run.metadata.name))

    def requeue(self, key: RunKey, delay: float) -> None:
        """Reconcile ``key`` again in ``delay`` seconds (the earliest pending requeue of a run wins)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= when:
                return
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def forget(self, key: RunKey) -> None:
        """The run was deleted: drop its requeue, its metrics and what the storage remembers of it."""
        if (pending := self._timers.pop(key, None)) is not None:
            pending[1].cancel()
        self._gave_way.pop(key, None)
        self.metrics.forget(key)
        self.storage.forget_run(*key)

    async def close(self) -> None:
        """Cancel pending requeues and background reconciles (operator shutdown)."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def trigger(self, key: RunKey) -> None:
        """A watch event concerns the run: reconcile it (failures are retried, as in the background).

        With a view the reconcile runs in the background and this returns at once: kopf handles one
        event of an object at a time and updates its index entry only between them, so a handler that
        awaited the reconcile would hold back the object's next events (and its index entry) for as
        long as the reconcile takes. Without a view it runs inline.
        """
        if self.view is None:
            await self.reconcile_or_retry(key)
        else:
            self._spawn(key)

    def _fire(self, key: RunKey) -> None:
        self._timers.pop(key, None)
        self._spawn(key)

    def _spawn(self, key: RunKey) -> None:
        task = asyncio.get_running_loop().create_task(self.reconcile_or_retry(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one reconcile ----------------------------------------------------------------------------------
    async def _measured(self, key: RunKey) -> Plan | None:
        started = time.monotonic()
        # A reconcile that gave way (below) hands its place in the request queue to the next one of the
        # run, which does not give way in turn: a stream of events cannot hold a run's writes back.
        inherited = self._gave_way.pop(key, None)
        rank = asyncio.get_running_loop().time() if inherited is None else inherited
        try:
            # The writes of this reconcile are this run's (the view overlays them); its requests rank by
            # when it started (an older reconcile's go first: cluster/gate.py); before its first write
            # it gives way to a newer reconcile of the run that waits meanwhile (k8s.giving_way).
            with (
                writing_for(*key),
                ranked(rank),
                giving_way(lambda: inherited is None and key in self._waiting),
            ):
                the_plan = await self._reconcile(key)
        except Superseded:
            self._gave_way[key] = rank
            self.metrics.reconciles.labels(result="superseded").inc()
            return None
        except InvalidSpecError:
            self.metrics.reconciles.labels(result="invalid").inc()
            raise
        except Exception:
            self.metrics.reconciles.labels(result="error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.labels(result="ok").inc()
        return the_plan

    async def _reconcile(self, key: RunKey) -> Plan:
        namespace, name = key
        now = self._clock()
        raw = await self._read_run(namespace, name)
        if raw is None:
            self.forget(key)
            return await self._without_run(namespace, name, now)
        meta = ObjectMeta.model_validate(raw.get("metadata") or {})
        status: ContinualTrainingRunStatus = _status(
            ContinualTrainingRunStatus, raw, f"run {namespace}/{name}"
        )
        try:
            spec = ContinualTrainingRunSpec.model_validate(raw.get("spec") or {})
        except ValidationError as error:
            await self._invalid(meta, status, error, now)
        run = ContinualTrainingRun(metadata=meta, spec=spec, status=status)
        if _refused_at_this_generation(run):
            self.metrics.run_phase(key, status.phase)
            return Plan()
        # The S3 inbox first: the batches it creates are planned in this same reconcile.
        inbox = await self.inbox.sync(run, now=now)
        run = inbox.run
        # Runs on one folder are reconciled one at a time: the second reads the first one's trainedWith
        # (patched with its first Job) before it decides who holds the folder.
        async with self._folder_lock((namespace, *volume_key(run))):
            the_plan = await self._plan_and_execute(key, run, now, inbox.actions)
        # The resync is spread over +-10 %: runs found together at startup do not come back together.
        resync = self.resync_seconds * random.uniform(0.9, 1.1) if self.resync_seconds else None  # noqa: S311
        delays = [d for d in (the_plan.requeue_after, resync, inbox.next_poll_seconds) if d is not None]
        if delays:
            self.requeue(key, min(delays))
        return the_plan

    async def _run_batches(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The run's batches: from the view (settled on the run's own writes), or afresh."""
        if self.view is None:
            return await self.storage.list_batches(namespace, name)
        return (await self.view.world(self.storage, namespace, name)).batches

    async def _read_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.view is None:
            return await self.storage.get_run(namespace, name)
        return (await self.view.world(self.storage, namespace, name)).run

    async def _read_world(self, namespace: str, name: str, *, jobsets: bool = False) -> RunWorld:
        """The run's batches, Jobs (and JobSets, where served) and pods: from the view, or afresh (with the
        namespace's runs then)."""
        if self.view is not None:
            return await self.view.world(self.storage, namespace, name)
        raw_batches, jobs, pods, raw_runs = await asyncio.gather(
            self.storage.list_batches(namespace, name),
            self.storage.list_jobs(namespace, name),
            self.storage.list_pods(namespace, name),
            self.storage.list_runs(namespace),
        )
        if jobsets:
            jobs += await self.storage.list_jobsets(namespace, name)
        return RunWorld(run=None, batches=raw_batches, jobs=jobs, pods=pods, runs=raw_runs)

    @contextlib.asynccontextmanager
    async def _folder_lock(self, folder: tuple[str, str, str]) -> AsyncIterator[None]:
        lock = self._folder_locks.setdefault(folder, asyncio.Lock())
        self._folder_users[folder] = self._folder_users.get(folder, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._folder_users[folder] -= 1
            if not self._folder_users[folder]:
                del self._folder_users[folder], self._folder_locks[folder]

    async def _plan_and_execute(
        self, key: RunKey, run: ContinualTrainingRun, now: dt.datetime, first: tuple[Action, ...] = ()
    ) -> Plan:
        """Plan the run and carry the plan out, after ``first`` (the inbox poll's Events and status):
        one status patch per object, the run's included."""
        namespace, name = key
        meta, status = run.metadata, run.status
        nodes = run.spec.resources.nodes
        engines = await self.engines.engines(namespace) if nodes > 1 else Engines()
        world = await self._read_world(namespace, name, jobsets=engines.jobset)
        executor = ClusterExecutor(self.storage, Subject(meta, run), seen=(world.jobs, world.pods))
        workloads = await executor.workloads()
        batches, batch_metas, invalid = self._parse_batches(world.batches, now)
        folder = volume_key(run)
        raw_runs = world.runs if self.view is None else self.view.folder_runs(namespace, folder)
        others = _other_runs(raw_runs, name, folder)
        if self.view is not None and (peers := [o.metadata.name for o in others if volume_key(o) == folder]):
            # Who holds the folder is decided from the peers' trainedWith, which their own reconciles
            # patched a moment ago (under the folder lock): the view must show those writes too.
            raw_runs = await self.view.settle_peers(self.storage, namespace, peers, raw_runs)
            others = _other_runs(raw_runs, name, folder)
        context = PlanContext(other_runs=others, check_paths=True, engines=engines)
        the_plan = make_plan(run, batches, workloads, now=now, context=context)
        the_plan = one_patch_per_object(Plan(first + invalid.actions + the_plan.actions))
        # The reports after the plan's last workload action (all of a plan that only reports: status
        # patches, Events) let the writes that start or stop workloads go first: REPORT_RANK_DELAY_SECONDS.
        executor = executor.with_batches(batch_metas)
        acts, reports = _split_reports(the_plan)
        try:
            executed = await executor.apply(acts, now=now)
            with ranked(current_rank() + REPORT_RANK_DELAY_SECONDS):
                await executor.apply(reports, now=now)
        except RejectedObjectError as error:
            await self._invalid(meta, status, error, now)

        self._record(key, run, batches, the_plan, len(executed.jobs_created))
        if executed.jobs_created:
            logger.info(f"run {namespace}/{name}: created Job {', '.join(executed.jobs_created)}")
        return the_plan

    async def _without_run(self, namespace: str, name: str, now: dt.datetime) -> Plan:
        """Batches naming a run that does not exist say that they wait for it."""
        metas: dict[str, ObjectMeta] = {}
        statuses = []
        for raw in await self._run_batches(namespace, name):
            meta = ObjectMeta.model_validate(raw.get("metadata") or {})
            metas[meta.name] = meta
            statuses.append((meta, _status(TrainingBatchStatus, raw, f"batch {namespace}/{meta.name}")))
        the_plan = plan_batches_without_run(namespace, name, statuses, now=now)
        if the_plan:
            run_meta = ObjectMeta(name=name, namespace=namespace)
            await self.storage.execute(the_plan, Subject(run_meta, batch_metas=metas), now=now)
        return the_plan

    async def _invalid(
        self,
        meta: ObjectMeta,
        status: ContinualTrainingRunStatus,
        error: ValidationError | RejectedObjectError,
        now: dt.datetime,
    ) -> NoReturn:
        """Record an invalid spec on the run (idempotent) and raise :class:`InvalidSpecError`."""
        reason = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
        await self.storage.execute(plan_invalid_spec(meta, status, reason, now=now), Subject(meta), now=now)
        self.metrics.run_phase((meta.namespace or "default", meta.name), "Failed")
        raise InvalidSpecError(f"run {meta.namespace}/{meta.name}: the spec is invalid: {reason}") from None

    @staticmethod
    def _parse_batches(
        raw_batches: list[dict[str, Any]], now: dt.datetime
    ) -> tuple[list[TrainingBatch], dict[str, ObjectMeta], Plan]:
        """Valid batches as models; invalid ones become a plan that marks them Failed."""
        batches: list[TrainingBatch] = []
        metas: dict[str, ObjectMeta] = {}
        actions: list[Any] = []
        for raw in raw_batches:
            meta = ObjectMeta.model_validate(raw.get("metadata") or {})
            metas[meta.name] = meta
            status: TrainingBatchStatus = _status(
                TrainingBatchStatus, raw, f"batch {meta.namespace}/{meta.name}"
            )
            try:
                spec = TrainingBatchSpec.model_validate(raw.get("spec") or {})
            except ValidationError as error:
                actions += plan_invalid_batch(meta, status, error, now=now).actions
                continue
            batches.append(TrainingBatch(metadata=meta, spec=spec, status=status))
        return batches, metas, Plan(tuple(actions))

    def _record(
        self,
        key: RunKey,
        run: ContinualTrainingRun,
        batches: list[TrainingBatch],
        the_plan: Plan,
        created: int,
    ) -> None:
        """Metrics of a carried-out plan."""
        self.metrics.jobs_created.inc(created)
        by_name = {b.metadata.name: b for b in batches}
        patches: dict[str, dict[str, Any]] = {}
        for update in the_plan.of(UpdateBatchStatus):
            batch = by_name.get(update.batch)
            if (
                outcome := _outcome(update.patch, batch.status if batch else TrainingBatchStatus())
            ) is not None:
                self.metrics.batch_outcomes.labels(outcome=outcome[0], reason=outcome[1]).inc()
            if batch is not None:
                self.metrics.batch_changed(key, batch, update.patch)
            patches.setdefault(update.batch, {}).update(update.patch)
        run_patch: dict[str, Any] = {}
        for run_update in the_plan.of(UpdateRunStatus):
            run_patch.update(run_update.patch)
        after = patched(run, run_patch)
        self.metrics.run_phase(key, after.status.phase)
        self.metrics.observe_run(key, after, [patched(b, patches.get(n)) for n, b in by_name.items()])
