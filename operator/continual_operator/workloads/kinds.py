"""The workload kind protocol: what every kind of Job the operator runs must say about itself.

A *workload* is what the operator runs for a run on its volume: one trainer attempt of one batch
(:mod:`.train`), a snapshot, a restore or a consolidation (:mod:`.artifact`). Each kind is one small module
of the same shape, registered once in :mod:`.registry` (like PEFT's tuner packages, or kopf's handler
registries), and provides:

* **naming** -- deterministic object names, so that creating a workload is idempotent;
* **building** -- :meth:`WorkloadKind.build` returns a :class:`Workload`: every manifest to create, in order.
  The pure planner asks the kind to build it and the plan carries it, so that both executors (the cluster,
  local mode) only *apply* what the plan says (docs/architecture.md, "Executors");
* **reading back** -- :meth:`WorkloadKind.read` turns its Job (and pods) into a
  :class:`~continual_operator.workloads.views.JobView`, or None when the Job is not one of its own;
* **classifying** -- :meth:`WorkloadKind.classify` says how a finished Job ended
  (:class:`~continual_operator.workloads.outcomes.Outcome`);
* **the volume** -- :attr:`WorkloadKind.writes_volume`: a kind that writes the run's volume (or must never run
  beside a writer) holds the writer lease while its Job has not finished, so the single-writer rule covers
  every kind at once.

The kind of a Job is its ``continual.dev/kind`` label (:data:`~continual_operator.naming.LABEL_KIND`); Jobs
created before kinds existed carry none and are train Jobs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from continual_operator.workloads.outcomes import Outcome
from continual_operator.workloads.views import JobView

RequestT_contra = TypeVar("RequestT_contra", contravariant=True)


@dataclass(frozen=True)
class ObjectRef:
    """An object an executor deletes with its workload (``kind`` is the Kubernetes kind)."""

    kind: str
    name: str


@dataclass(frozen=True)
class Workload:
    """A workload as its kind built it: everything to create, in order, and who it is for.

    ``manifests`` are complete Kubernetes objects; the per-run objects come first (create-or-leave-alone:
    an existing one is kept as it is), then those of this workload, its Job last. ``owned`` are the
    objects deleted with it (its Job first).
    """

    kind: str
    name: str
    manifests: tuple[Mapping[str, Any], ...]
    owned: tuple[ObjectRef, ...]
    batch: str = ""
    attempt: int = 1
    writes_volume: bool = True
    #: What an artifact workload is about (see :mod:`.artifact`); empty for a train workload.
    key: str = ""
    #: A coalesced train workload: the batches it trains after ``batch``, in order.
    next_batches: tuple[str, ...] = ()

    def manifest(self, kind: str) -> Mapping[str, Any]:
        """The workload's own object of a Kubernetes kind (its Job, its ConfigMap)."""
        own = [m for m in self.manifests if m.get("kind") == kind and m["metadata"]["name"] == self.name]
        if own:
            return own[-1]
        raise KeyError(f"workload {self.name} ({self.kind}) has no {kind} of its own")

    @property
    def job(self) -> Mapping[str, Any]:
        """The Job that runs it (one node: a gang's is a JobSet, or an Indexed Job of its own name)."""
        return self.manifest("Job")

    def view(self, created: dt.datetime | None = None) -> JobView:
        """How the workload looks the moment it is created (an Active Job that has not reported)."""
        return JobView(
            name=self.name,
            batch=self.batch,
            attempt=self.attempt,
            kind=self.kind,
            writes_volume=self.writes_volume,
            key=self.key,
            next_batches=self.next_batches,
            created=created,
            owned=tuple((ref.kind, ref.name) for ref in self.owned),
        )


class WorkloadKind(Protocol[RequestT_contra]):
    """One kind of workload (see the module docstring); implementations are stateless singletons."""

    #: The value of the kind label on its Jobs.
    name: str
    #: Its Jobs hold the writer lease while they have not finished.
    writes_volume: bool

    def build(self, request: RequestT_contra) -> Workload:
        """Every manifest of one workload, from the parsed run and what the planner decided."""
        ...

    def read(self, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
        """The view of one of its Jobs (None: the Job lacks what this kind labels its Jobs with)."""
        ...

    def classify(self, view: JobView) -> Outcome:
        """How a finished Job of this kind ended."""
        ...

    def owned_objects(self, name: str) -> tuple[ObjectRef, ...]:
        """The objects deleted with the workload named ``name``."""
        ...
