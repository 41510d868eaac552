"""The planner's output: what to do next, as plain immutable data.

A :class:`Plan` is an ordered tuple of actions. The handler layer carries them out in order and stops at the
first error: the order is chosen so that stopping anywhere leaves a state the next reconcile completes
(a batch is marked Training before its workload is created, and a Job found without that mark is adopted; the
run's status is patched before finished Jobs are deleted, so that nothing is forgotten with them).

Status patches are JSON merge patches of the object's ``status`` (camelCase keys; ``None`` deletes a key),
to be sent to the status subresource as ``{"status": patch}``. They contain only what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from continual_operator.workloads.kinds import ObjectRef, Workload

EventType = Literal["Normal", "Warning"]
ObjectKind = Literal["ContinualTrainingRun", "TrainingBatch"]
Propagation = Literal["Foreground", "Background"]


@dataclass(frozen=True)
class CreateWorkload:
    """Create a workload its kind built (:class:`~continual_operator.workloads.kinds.Workload`): every
    manifest, in order. Executors apply it as it is; they build nothing themselves.

    Idempotent by name: a 409 AlreadyExists means an earlier reconcile created it, and is not an error.
    """

    workload: Workload
    #: For a train workload: the trainer batch ids of the run's Failed batches the trainer sets aside (the
    #: ConfigMap in ``workload`` already says so; kept here for the plan's readers and tests).
    abandon_batches: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.workload.kind

    @property
    def job_name(self) -> str:
        return self.workload.name

    @property
    def batch(self) -> str:
        return self.workload.batch

    @property
    def attempt(self) -> int:
        return self.workload.attempt


@dataclass(frozen=True)
class DeleteWorkload:
    """Delete a workload: its Job and the objects its kind owns with it (``objects``, the Job first).

    ``Foreground`` propagation keeps the Job object until its pod is gone: used to stop a running workload
    (it gets SIGTERM and ``terminationGracePeriodSeconds`` to checkpoint), so that the planner keeps seeing
    a writer on the volume until there is none. Finished Jobs are deleted in the ``Background``.
    """

    name: str
    reason: str
    propagation: Propagation = "Background"
    objects: tuple[ObjectRef, ...] = ()


@dataclass(frozen=True)
class UpdateBatchStatus:
    """Merge-patch one TrainingBatch's status."""

    batch: str
    patch: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateRunStatus:
    """Merge-patch the ContinualTrainingRun's status."""

    patch: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EmitEvent:
    """Record a Kubernetes Event on the run or on one of its batches."""

    kind: ObjectKind
    name: str
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class RequeueAfter:
    """Reconcile again after this many seconds even if nothing changes (a retry's back-off ends)."""

    seconds: float


Action = CreateWorkload | DeleteWorkload | UpdateBatchStatus | UpdateRunStatus | EmitEvent | RequeueAfter
_A = TypeVar(
    "_A", CreateWorkload, DeleteWorkload, UpdateBatchStatus, UpdateRunStatus, EmitEvent, RequeueAfter
)


@dataclass(frozen=True)
class Plan:
    """What the handler layer should do, in order."""

    actions: tuple[Action, ...] = ()

    def of(self, kind: type[_A]) -> list[_A]:
        """The actions of one type, in order."""
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def requeue_after(self) -> float | None:
        """Seconds until the next forced reconcile, if any."""
        delays = [a.seconds for a in self.of(RequeueAfter)]
        return min(delays) if delays else None

    def __bool__(self) -> bool:
        return bool(self.actions)
