"""The operator's view of its world, fed by the watches kopf holds: runs, batches, Jobs and pods per run.

A reconcile reads a run's batches, Jobs and pods, and the runs that may share its folder (for the
one-folder-per-run check; runs are indexed by folder, :func:`folders_of`), from here instead of listing
them: the API server's work, and the operator's, per reconcile no longer grows with the namespace, and an
idle run costs no request at all when it is resynced.

**What feeds it.** kopf indexes (:mod:`continual_operator.cluster.handlers` registers them): every watch
event of a run, a TrainingBatch (indexed by ``spec.runName``: users create batches with kubectl and no
labels), a trainer Job or a trainer pod (both by the run label, selected on the server) replaces the
object's entry; a DELETED event drops it. kopf fills every index from a full LIST before it calls any
handler, so a freshly started operator never reconciles from a half-filled view. The objects are kept
slim (:func:`slim`: no ``managedFields``, no pod spec, no Job pod template spec, no kopf diff-base
annotation, none of the pod status fields the cluster keeps for itself, and their strings shared).

**Never older than one's own writes.** The watch lags behind the writes a reconcile makes. Every write of
:class:`~continual_operator.cluster.k8s.KubernetesStorage` is noted in its
:class:`~continual_operator.cluster.k8s.WriteJournal` under the run it was made for, with the object as the
API server answered it (create and patch answers carry the whole object and its ``resourceVersion``),
slimmed like the view's own objects. The run's next reconciles see that answer *overlaid* on the view
(client-go's ``MutationCache``) instead of reading it again, until the index holds that version or a newer
one (the entry is dropped then: the view keeps no second copy for long), so a reconcile never acts on a
view older than its own last write, and never hides a newer version the watch delivered (the trainer's
progress, a user's edit, the Job controller). Versions are compared as etcd's revision numbers.

* An object the run **deleted** is hidden until the index drops it.
* An object the run only **patched** that the index no longer holds was deleted since: it stays gone
  (one it **created** and the index does not hold yet is shown: the watch has not told it yet).
* What an answer did not tell (no body or no numeric version: a 409 or 404 answer to a patch, a test
  double) is read afresh with one GET by name, and so is a write the watch has still not delivered after
  :data:`OVERLAY_SECONDS` (an overlay never outlives a watch that lost it).

A short sweep after the indexes change (:meth:`WatchView.touch`) drops the entries the index reflects, so
the bodies kept stay bounded by the writes the watch has not delivered yet, not by the number of runs.
"""

from __future__ import annotations

import asyncio
import posixpath
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from continual_operator.cluster.k8s import (
    BATCHES,
    JOBS,
    JOBSETS,
    RUNS,
    Kind,
    KubernetesStorage,
    WriteJournal,
    Written,
    version,
)
from continual_operator.naming import claim_name

#: How long a run's own write is overlaid on a view whose watch has not delivered it; then it is read afresh.
OVERLAY_SECONDS = 60.0
#: The journal's sweep runs this long after an index change (kopf updates an index just after its
#: handler returns, and a burst of events costs one sweep).
_SWEEP_DELAY_SECONDS = 1.0
#: kopf's diff-base annotation (the whole last-handled spec): the view does not need it.
_DIFF_BASE = "continual.dev/last-handled-configuration"

#: The index keys: ``(namespace, run)`` for batches, Jobs and pods; runs under ``(namespace, name)`` and
#: under each folder they may write in (:func:`folder_key`).
Indexes = Mapping[Any, Iterable[Mapping[str, Any]]]


def slim(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of an object: what the reconciler and the workload kinds read, its strings shared.

    Dropped: ``managedFields``, ``generateName`` and ``selfLink`` of every object, kopf's diff-base
    annotation, the spec of a pod and the pod template of a Job, and of a pod's status what the cluster
    keeps for itself (:data:`_POD_STATUS_DROPPED`, :data:`_CONTAINER_STATUS_DROPPED`). Runs and batches keep
    their whole spec and status: the API models parse all of it. tests/operator/test_operator_memory.py
    fails when a workload kind reads a field dropped here.
    """
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in _METADATA_DROPPED}
    if isinstance(meta.get("annotations"), Mapping) and _DIFF_BASE in meta["annotations"]:
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != _DIFF_BASE}
    kept: dict[str, Any] = {k: v for k, v in body.items() if k not in {"metadata", "spec"}}
    kept["metadata"] = meta
    spec = body.get("spec")
    if kind == "Job" and isinstance(spec, Mapping):
        kept["spec"] = {k: v for k, v in spec.items() if k != "template"}
    elif kind != "Pod" and spec is not None:
        kept["spec"] = spec
    if kind == "Pod" and isinstance(kept.get("status"), Mapping):
        kept["status"] = _pod_status(kept["status"])
    return _shared(kept)  # type: ignore[no-any-return]


#: A pod's status fields no workload kind reads: the node's and the pod's addresses, the QoS class.
_POD_STATUS_DROPPED = frozenset({"hostIP", "hostIPs", "podIP", "podIPs", "qosClass"})
#: A container status's fields no workload kind reads: the image and the runtime's container id.
_CONTAINER_STATUS_DROPPED = frozenset({"image", "imageID", "containerID"})
_METADATA_DROPPED = frozenset({"managedFields", "generateName", "selfLink"})
#: Strings up to this long are interned (label and annotation keys and values, condition types, field
#: names): the view holds thousands of objects whose keys and most values repeat.
_SHARED_MAX = 64


def _pod_status(status: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in status.items() if k not in _POD_STATUS_DROPPED}
    for key in ("containerStatuses", "initContainerStatuses"):
        if isinstance(kept.get(key), list):
            kept[key] = [
                {k: v for k, v in c.items() if k not in _CONTAINER_STATUS_DROPPED}
                if isinstance(c, Mapping)
                else c
                for c in kept[key]
            ]
    return kept


def _shared(value: Any) -> Any:
    """A copy of ``value`` whose dict keys and short strings are interned (one object per distinct
    string, shared by every object that holds it): about a third of the memory of a freshly parsed
    pod or Job (the JSON parser makes new string objects for every event)."""
    if isinstance(value, Mapping):
        return {sys.intern(str(k)): _shared(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= _SHARED_MAX:
        return sys.intern(value)
    return value


def _normal_sub_path(value: object) -> object:
    """A raw ``subPath`` as the API model normalises it ("" for the volume's root); not a string: as is."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    normal = posixpath.normpath(value) if value else "."
    return "" if normal == "." else normal


def folders_of(raw: Mapping[str, Any]) -> frozenset[tuple[Any, Any]]:
    """The folders (claim, subPath) a stored run may write in, from the raw object, without parsing it.

    A namespace may hold hundreds of runs and reconciles run concurrently: parsing every run on a shared
    claim (8 KiB of models each) in every reconcile made the operator's memory and CPU grow with the
    square of the runs. Both the spec's folder and the one recorded in ``status.trainedWith`` count, each
    spelt as the model normalises it and as written (a superset of what the models say: never fewer).
    A claim from a template is the run's own. Unhashable values (not what the CRD schema allows) are left
    out: such a run does not parse, so it holds no folder.
    """
    storage = (raw.get("spec") or {}).get("storage") or {}
    recorded = (((raw.get("status") or {}).get("trainedWith") or {}).get("storage")) or {}
    name = str((raw.get("metadata") or {}).get("name"))
    if not isinstance(storage, Mapping) or not isinstance(recorded, Mapping):
        return frozenset()
    claim = claim_name(name) if "claimTemplate" in storage else storage.get("existingClaim")
    spec_path, recorded_path = storage.get("subPath"), recorded.get("subPath")
    candidates = [
        (claim, _normal_sub_path(spec_path)),
        (claim, spec_path or ""),
        (recorded.get("claim"), _normal_sub_path(recorded_path)),
        (recorded.get("claim"), recorded_path or ""),
    ]
    return frozenset(c for c in candidates if all(isinstance(v, str | None) for v in c))


def folder_key(namespace: str | None, folder: tuple[Any, Any]) -> tuple[str, str | None, Any, Any]:
    """The runs index key of the runs that may write in ``folder`` of ``namespace``."""
    return ("folder", namespace, *folder)


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name", ""))


@dataclass
class RunWorld:
    """One run's world as a reconcile sees it: the run, its batches, Jobs and pods (and, read afresh
    without a view, the namespace's runs; the view answers :meth:`WatchView.folder_runs` instead)."""

    run: dict[str, Any] | None
    batches: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: Objects read afresh because the watch had not delivered this run's own writes in time.
    fresh_reads: int = 0


#: What a journalled write means for the view (:meth:`WatchView._resolve`): the index reflects it (the
#: entry is dropped), the overlaid answer (a body, or None: gone) is shown, or the object is read afresh.
_REFLECTED, _READ = "reflected", "read"


@dataclass
class WatchView:
    """The watch-fed indexes, and how a reconcile reads them (see the module docstring)."""

    runs: Indexes
    batches: Indexes
    jobs: Indexes
    pods: Indexes
    overlay_seconds: float = OVERLAY_SECONDS
    #: Multi-node attempts on JobSet, by run (empty where JobSet's CRD is not installed: nothing is watched).
    jobsets: Indexes = field(default_factory=dict)
    #: How many objects reconciles had to read afresh (no usable answer, or a watch late by more than
    #: :attr:`overlay_seconds`): a measure, for tests and logs.
    fresh_reads: int = field(default=0, init=False)
    #: Objects a fresh read found gone while the index still held them, with the version it held: kopf
    #: re-lists after a peering pause without dropping what was deleted meanwhile. Hidden until the index
    #: drops them or holds a newer version (a new object of that name).
    _gone: dict[tuple[str, str, str, str], int | None] = field(default_factory=dict, init=False)
    #: The journal whose bodies are overlaid here (:meth:`attach`), swept after index changes.
    _journal: WriteJournal | None = field(default=None, init=False)
    _sweep: asyncio.TimerHandle | None = field(default=None, init=False)

    def attach(self, journal: WriteJournal) -> None:
        """Overlay ``journal``'s answers: it keeps them slimmed as the view keeps its objects."""
        journal.keep = slim
        self._journal = journal

    def _index(self, kind: Kind) -> Indexes:
        indexes = {RUNS.kind: self.runs, BATCHES.kind: self.batches, JOBS.kind: self.jobs}
        return self.jobsets if kind is JOBSETS else indexes[kind.kind]

    def _cached(self, kind: Kind, namespace: str, run: str, name: str) -> dict[str, Any] | None:
        key = (namespace, name) if kind is RUNS else (namespace, run)
        return next((dict(b) for b in self._index(kind).get(key, ()) if _name(b) == name), None)

    def _resolve(self, kind: Kind, namespace: str, run: str, name: str, written: Written) -> Any:
        """What the view shows for a journalled write: :data:`_REFLECTED` (the index holds it, at that
        version or newer, or no longer holds what was deleted or patched), :data:`_READ` (read it afresh),
        or the overlay: the answered body, or None (gone)."""
        cached = self._cached(kind, namespace, run, name)
        if cached is None:
            if written.deleted or not written.created:
                return _REFLECTED  # deleted by this run, or by someone else since this run patched it
        elif not written.deleted and _at_least(version(cached), written.version):
            return _REFLECTED
        if time.monotonic() - written.at > self.overlay_seconds:
            return _READ  # the watch is very late (or lost it): ask the server
        if written.deleted:
            return None
        return written.body if written.body is not None else _READ

    async def settle(
        self, storage: KubernetesStorage, namespace: str, run: str
    ) -> dict[tuple[str, str], Any]:
        """The run's own writes the view does not reflect yet, from their answers or read afresh.

        Returns ``{(kind, name): body or None (gone)}``, to overlay on the view; updates the journal.
        """
        fresh: dict[tuple[str, str], Any] = {}
        left: dict[tuple[Kind, str], Written] = {}
        reads = 0
        for (kind, name), written in storage.journal.pending(namespace, run).items():
            shown = self._resolve(kind, namespace, run, name, written)
            if shown is _REFLECTED:
                continue
            if shown is not _READ:
                fresh[kind.kind, name] = shown
                left[kind, name] = written
                continue
            reads += 1
            body = await storage.get(kind, namespace, name)
            cached = self._cached(kind, namespace, run, name)
            if body is None:
                if cached is not None:
                    self._gone[kind.kind, namespace, run, name] = version(cached)
                fresh[kind.kind, name] = None
                continue
            kept = slim(kind.kind, body)
            fresh[kind.kind, name] = kept
            left[kind, name] = Written(version(body), body=kept, created=written.created)
        storage.journal.settled(namespace, run, left)
        self.fresh_reads += reads
        return fresh

    def touch(self) -> None:
        """An index has changed (called by the index handlers): sweep the journal a moment later."""
        if self._journal is None or self._sweep is not None:
            return
        self._sweep = asyncio.get_running_loop().call_later(_SWEEP_DELAY_SECONDS, self.sweep)

    def sweep(self) -> None:
        """Drop the journal entries the indexes reflect (no request: what is left waits for its run)."""
        self._sweep = None
        journal = self._journal
        if journal is None:
            return
        for namespace, run in journal.runs():
            pending = journal.pending(namespace, run)
            left = {
                ref: w
                for ref, w in pending.items()
                if self._resolve(ref[0], namespace, run, ref[1], w) is not _REFLECTED
            }
            if len(left) < len(pending):
                journal.settled(namespace, run, left)

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
        """The run's world: the indexes, with the run's own writes the watch has not delivered overlaid."""
        reads = self.fresh_reads
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
                    by_name[name] = dict(body)
            return list(by_name.values())

        runs = merged(RUNS, self.runs.get((namespace, run), ()))
        return RunWorld(
            run=next((r for r in runs if _name(r) == run), None),
            batches=[
                b for b in merged(BATCHES, self.batches.get((namespace, run), ())) if _batch_run(b) == run
            ],
            # the run's workloads: its Jobs, and its JobSets where JobSet is installed
            jobs=merged(JOBS, self.jobs.get((namespace, run), ()))
            + merged(JOBSETS, self.jobsets.get((namespace, run), ())),
            pods=[dict(p) for p in self.pods.get((namespace, run), ())],
            fresh_reads=self.fresh_reads - reads,
        )

    async def settle_peers(
        self, storage: KubernetesStorage, namespace: str, names: Iterable[str], runs: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """``runs`` with the runs ``names`` as their own last writes left them (their reconciles' status
        patches, e.g. ``trainedWith``): what the folder decision of a run on the same folder must see.

        The writes stay in their runs' journal (their own next reconcile settles on them); what their
        answers did not tell is read afresh.
        """
        shown: dict[str, Any] = {}
        for name in names:
            written = storage.journal.pending(namespace, name).get((RUNS, name))
            if written is None:
                continue
            answer = self._resolve(RUNS, namespace, name, name, written)
            if answer is _READ:
                self.fresh_reads += 1
                body = await storage.get(RUNS, namespace, name)
                answer = slim(RUNS.kind, body) if body is not None else None
            if answer is not _REFLECTED:
                shown[name] = answer
        if not shown:
            return runs
        kept = [r for r in runs if _name(r) not in shown]
        return kept + [dict(body) for body in shown.values() if body is not None]

    def folder_runs(self, namespace: str, folder: tuple[str, str]) -> list[dict[str, Any]]:
        """The namespace's runs that may write in ``folder`` (:func:`folders_of`), as the view holds them:
        a reconcile's folder check reads these, not every run of the namespace."""
        return [dict(r) for r in self.runs.get(folder_key(namespace, folder), ())]


def _at_least(have: int | None, wanted: int | None) -> bool:
    """Whether a version is known to be ``wanted`` or later."""
    return have is not None and wanted is not None and have >= wanted


def _batch_run(body: Mapping[str, Any]) -> str | None:
    spec = body.get("spec")
    return spec.get("runName") if isinstance(spec, Mapping) else None
