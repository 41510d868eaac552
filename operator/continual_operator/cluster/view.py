"""The operator's view of its world, fed by the watches kopf holds: runs, batches, Jobs and pods per run.

A reconcile reads a run's batches, Jobs and pods, and the namespace's runs (for the one-folder-per-run
check), from here instead of listing them: the API server's work per reconcile no longer grows with the
namespace, and an idle run costs no request at all when it is resynced.

**What feeds it.** kopf indexes (:mod:`continual_operator.cluster.handlers` registers them): every watch
event of a run, a TrainingBatch (indexed by ``spec.runName``: users create batches with kubectl and no
labels), a trainer Job or a trainer pod (both by the run label, selected on the server) replaces the
object's entry; a DELETED event drops it. kopf fills every index from a full LIST before it calls any
handler, so a freshly started operator never reconciles from a half-filled view. The objects are kept
slim (no ``managedFields``, no pod spec, no Job pod template spec, no kopf diff-base annotation).

**Never older than one's own writes.** The watch lags behind the writes a reconcile makes. Every write of
:class:`~continual_operator.cluster.k8s.KubernetesStorage` is noted in its
:class:`~continual_operator.cluster.k8s.WriteJournal` under the run it was made for, with the
``resourceVersion`` the API server answered. Before the next reconcile of that run reads the view,
:meth:`WatchView.settle` waits (briefly) until the view holds each written object at that version or later
(or no longer holds a deleted one); what the watch has not delivered by then is read afresh with one GET
per object and overlaid on the view for that reconcile. Versions are compared as etcd's revision numbers;
an object whose version is not a number is always read afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from continual_operator.cluster.k8s import BATCHES, JOBS, JOBSETS, RUNS, Kind, KubernetesStorage, Written

#: How long a reconcile waits for the watch to deliver its own last writes before reading them afresh.
SETTLE_SECONDS = 2.0
_POLL_SECONDS = 0.1
#: kopf's diff-base annotation (the whole last-handled spec): the view does not need it.
_DIFF_BASE = "continual.dev/last-handled-configuration"

#: The index keys: ``(namespace, run)`` for batches, Jobs and pods; runs under both ``namespace`` (all
#: the namespace's runs) and ``(namespace, name)``.
Indexes = Mapping[Any, Iterable[Mapping[str, Any]]]


def slim(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of an object: what the reconciler and the workload kinds read."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    if isinstance(meta.get("annotations"), Mapping) and _DIFF_BASE in meta["annotations"]:
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != _DIFF_BASE}
    kept: dict[str, Any] = {k: v for k, v in body.items() if k not in {"metadata", "spec"}}
    kept["metadata"] = meta
    spec = body.get("spec")
    if kind == "Job" and isinstance(spec, Mapping):
        kept["spec"] = {k: v for k, v in spec.items() if k != "template"}
    elif kind != "Pod" and spec is not None:
        kept["spec"] = spec
    return kept


def version(body: Mapping[str, Any] | None) -> int | None:
    """An object's ``resourceVersion`` as a number (None: absent or not a number)."""
    value = ((body or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(value))
    except ValueError:
        return None


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name", ""))


@dataclass
class RunWorld:
    """One run's world as a reconcile sees it: the run, its batches, Jobs and pods, the namespace's runs."""

    run: dict[str, Any] | None
    batches: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    #: Objects read afresh because the watch had not delivered this run's own writes in time.
    fresh_reads: int = 0


@dataclass
class WatchView:
    """The watch-fed indexes, and how a reconcile reads them (see the module docstring)."""

    runs: Indexes
    batches: Indexes
    jobs: Indexes
    pods: Indexes
    settle_seconds: float = SETTLE_SECONDS
    #: Multi-node attempts on JobSet, by run (empty where JobSet's CRD is not installed: nothing is watched).
    jobsets: Indexes = field(default_factory=dict)
    #: How many objects reconciles had to read afresh (the watch was late): a measure, for tests and logs.
    fresh_reads: int = field(default=0, init=False)
    #: Objects a fresh read found gone while the index still held them, with the version it held: kopf
    #: re-lists after a peering pause without dropping what was deleted meanwhile. Hidden until the index
    #: drops them or holds a newer version (a new object of that name).
    _gone: dict[tuple[str, str, str, str], int | None] = field(default_factory=dict, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def _index(self, kind: Kind) -> Indexes:
        indexes = {RUNS.kind: self.runs, BATCHES.kind: self.batches, JOBS.kind: self.jobs}
        return self.jobsets if kind is JOBSETS else indexes[kind.kind]

    def _cached(self, kind: Kind, namespace: str, run: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name) if kind is RUNS else (namespace, run)
        return next((dict(b) for b in self._index(kind).get(key, ()) if _name(b) == name), None)

    def _reflects(self, kind: Kind, namespace: str, run: str, name: str, written: Written) -> bool:
        """Whether the view holds the object at the written version or later (a deleted one: gone)."""
        cached = self._cached(kind, namespace, run, name)
        if cached is None:
            return written.deleted
        have = version(cached)
        return have is not None and written.version is not None and have >= written.version

    async def settle(
        self, storage: KubernetesStorage, namespace: str, run: str
    ) -> dict[tuple[str, str], Any]:
        """Wait until the view reflects the run's own writes; read afresh what it still does not.

        Returns the fresh reads as ``{(kind, name): body or None (gone)}``, to overlay on the view.
        """
        pending = storage.journal.pending(namespace, run)
        deadline = time.monotonic() + self.settle_seconds
        # A write answered with no version to compare is read afresh at once: waiting cannot tell.
        while any(w.version is not None or w.deleted for w in pending.values()):
            pending = {
                ref: w for ref, w in pending.items() if not self._reflects(ref[0], namespace, run, ref[1], w)
            }
            if not pending or time.monotonic() >= deadline:
                break
            await self._changed(deadline)
        fresh: dict[tuple[str, str], Any] = {}
        left: dict[tuple[Kind, str], Written] = {}
        for kind, name in pending:
            body = fresh[kind.kind, name] = await storage.get(kind, namespace, name)
            cached = self._cached(kind, namespace, run, name)
            if body is None and cached is not None:
                self._gone[kind.kind, namespace, run, name] = version(cached)
            if body is not None:
                left[kind, name] = Written(version(body))
        storage.journal.settled(namespace, run, left)
        self.fresh_reads += len(fresh)
        return fresh

    def touch(self) -> None:
        """An index has changed (called by the index handlers): wake the reconciles that wait for it."""
        self._wake.set()
        self._wake = asyncio.Event()

    async def _changed(self, deadline: float) -> None:
        """Until an index changes, at most :data:`_POLL_SECONDS` (kopf updates an index just after its
        handler returns: the waiter checks again a little later) or until ``deadline``."""
        wait = max(0.0, min(_POLL_SECONDS, deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)
        await asyncio.sleep(0)

    def _hidden(self, kind: str, namespace: str, run: str, body: Mapping[str, Any]) -> bool:
        """Whether the index's ``body`` is an object a fresh read found gone."""
        key = (kind, namespace, run, _name(body))
        if key not in self._gone:
            return False
        have, gone_at = version(body), self._gone[key]
        if have is not None and gone_at is not None and have > gone_at:
            del self._gone[key]  # created again since
            return False
        return True

    async def world(self, storage: KubernetesStorage, namespace: str, run: str) -> RunWorld:
        """The run's world: settled on its own writes, then read from the indexes."""
        fresh = await self.settle(storage, namespace, run)

        def merged(kind: Kind, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
            items = list(items)
            held = {_name(b) for b in items}
            for key in [k for k in self._gone if k[:3] == (kind.kind, namespace, run) and k[3] not in held]:
                del self._gone[key]  # the index has dropped it too
            by_name = {_name(b): dict(b) for b in items if not self._hidden(kind.kind, namespace, run, b)}
            for (kind_name, name), body in fresh.items():
                if kind_name != kind.kind:
                    continue
                if body is None:
                    by_name.pop(name, None)
                else:
                    by_name[name] = slim(kind.kind, body)
            return list(by_name.values())

        runs = merged(RUNS, self.runs.get(namespace, ()))
        return RunWorld(
            run=next((r for r in runs if _name(r) == run), None),
            batches=[
                b for b in merged(BATCHES, self.batches.get((namespace, run), ())) if _batch_run(b) == run
            ],
            # the run's workloads: its Jobs, and its JobSets where JobSet is installed
            jobs=merged(JOBS, self.jobs.get((namespace, run), ()))
            + merged(JOBSETS, self.jobsets.get((namespace, run), ())),
            pods=[dict(p) for p in self.pods.get((namespace, run), ())],
            runs=runs,
            fresh_reads=len(fresh),
        )

    async def settle_peers(
        self, storage: KubernetesStorage, namespace: str, names: Iterable[str], runs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``runs`` with the runs ``names`` settled on their own last writes (their reconciles' status
        patches, e.g. ``trainedWith``): what the folder decision of a run on the same folder must see.

        The writes stay in their runs' journal (their own next reconcile settles on them).
        """
        pending = {
            name: written
            for name in names
            if (written := storage.journal.pending(namespace, name).get((RUNS, name))) is not None
        }
        deadline = time.monotonic() + self.settle_seconds
        while pending:
            pending = {n: w for n, w in pending.items() if not self._reflects(RUNS, namespace, n, n, w)}
            if (
                not pending
                or time.monotonic() >= deadline
                or all(w.version is None for w in pending.values())
            ):
                break
            await self._changed(deadline)
        if not pending:
            return runs
        fresh = {n: await storage.get(RUNS, namespace, n) for n in pending}
        self.fresh_reads += len(fresh)
        kept = [r for r in runs if _name(r) not in fresh]
        return kept + [slim(RUNS.kind, body) for body in fresh.values() if body is not None]

    def namespace_runs(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's runs as the view holds them (a deleted run's folder neighbours)."""
        return [dict(r) for r in self.runs.get(namespace, ())]


def _batch_run(body: Mapping[str, Any]) -> str | None:
    spec = body.get("spec")
    return spec.get("runName") if isinstance(spec, Mapping) else None
