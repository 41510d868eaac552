"""What the planner needs to know about a workload's Job, distilled from the Job and its pod.

The planner never sees raw Kubernetes objects: the handler layer lists a run's Jobs and their pods, and
each Job's kind (:mod:`continual_operator.workloads.registry`) turns it into a :class:`JobView` with
:func:`read_job` (the kind says who the Job is for; this module reads how it is doing, the same for every
kind). Everything the planner decides on is here:
whether the Job may still write to the volume, how its container ended (exit code, the trainer's result
record in the termination message), what the cluster said about it (eviction, preemption, Kueue), and,
while its container has not started, why it waits (``waiting_reason``: a missing Secret, an image that
cannot be pulled, an unschedulable pod) and since when (``pending_since``, for the start deadline).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from continual_operator.naming import ANNOTATION_CONFIG_SOURCE, CONFIG_IN_POD_ANNOTATION

JobPhase = Literal["Active", "Succeeded", "Failed"]
#: The container that runs the trainer image in every Job pod (of every kind).
TRAINER_CONTAINER = "trainer"
#: Waiting reasons (a container's, or the pod's ``PodScheduled`` condition's) that mean the pod cannot start
#: until someone fixes something: a Secret or ConfigMap named in env/envFrom is missing, the image cannot be
#: pulled, no node fits. The others (ContainerCreating, PodInitializing) are the normal way to start.
STARTUP_PROBLEMS = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "RegistryUnavailable",
        "Unschedulable",
    }
)


@dataclass(frozen=True)
class JobView:
    """One workload Job of a run: its kind, who it is for (a train Job: batch and attempt), how it is doing.

    ``phase`` follows the Job's terminal conditions (Complete, Failed); everything else is Active, including
    a Job that Kueue keeps suspended (``suspended``) and one being deleted whose pod still runs
    (``deleting``): both may still write to the volume.
    """

    name: str
    batch: str
    attempt: int
    phase: JobPhase = "Active"
    #: The workload kind (the Job's kind label; none: ``train``, as every Job of earlier operators).
    kind: str = "train"
    #: The kind writes the run's volume (or must never run beside a writer): it holds the writer lease.
    writes_volume: bool = True
    #: What an artifact Job is about (``s<step>``, or a hash of its source); empty for train Jobs.
    key: str = ""
    exit_code: int | None = None
    termination_message: str | None = None
    #: Why the pod or container ended, as the cluster says: Evicted, Preempted, DeadlineExceeded, OOMKilled,
    #: or the reason of a DisruptionTarget condition.
    pod_reason: str | None = None
    #: The pod had a ``DisruptionTarget`` condition (Kubernetes >= 1.26: preemption, eviction, node drain).
    disruption_target: bool = False
    suspended: bool = False
    deleting: bool = False
    created: dt.datetime | None = None
    #: Why the trainer container has not started yet (its waiting reason, or Unschedulable), and the
    #: cluster's message about it (e.g. 'secret "hf-token" not found').
    waiting_reason: str | None = None
    waiting_message: str | None = None
    #: Since when the attempt waits for its container to start (None: it started, or Kueue holds the Job,
    #: or the executor cannot tell, as in local mode): the start deadline counts from here.
    pending_since: dt.datetime | None = None
    #: A coalesced train Job: the batches it trains after ``batch``, in order (their attempts are their own).
    next_batches: tuple[str, ...] = ()
    #: A ConfigMap of the Job's name holds its config (deleted with it); False: its pod template does.
    config_map: bool = True
    #: ``(kind, name)`` of the objects deleted with the workload, its own first, when they are not what its
    #: kind names after ``name`` (a gang's JobSet, or Indexed Job and Service; empty: the kind's default).
    owned: tuple[tuple[str, str], ...] = ()
    #: Trainer processes of the attempt (nodes x processes per node), from the workload's annotation.
    world_size: int | None = None

    @property
    def batches(self) -> tuple[str, ...]:
        """Every batch the Job trains, in order (a train Job of one batch: just ``batch``)."""
        return (self.batch, *self.next_batches)

    @property
    def finished(self) -> bool:
        """The Job reached Complete or Failed."""
        return self.phase != "Active"

    @property
    def writing(self) -> bool:
        """The Job may still write to the run's volume: the single-writer rule counts it."""
        return self.writes_volume and not self.finished

    @property
    def cannot_start(self) -> bool:
        """The pod waits for something that will not happen by itself (see :data:`STARTUP_PROBLEMS`)."""
        return not self.finished and self.waiting_reason in STARTUP_PROBLEMS


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)  # type: ignore[assignment]
    return obj


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    return dt.datetime.fromisoformat(value)


def _phase(job: Mapping[str, Any]) -> JobPhase:
    for condition in _get(job, "status", "conditions") or []:
        if condition.get("status") == "True" and condition.get("type") == "Complete":
            return "Succeeded"
        if condition.get("status") == "True" and condition.get("type") == "Failed":
            return "Failed"
    return "Active"


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in _get(pod, "status", "containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return _get(status, "state", "terminated") or _get(status, "lastState", "terminated") or {}
    return {}


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in _get(pod, "status", "containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return status  # type: ignore[no-any-return]
    return {}


def _waiting(pod: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Why the trainer container waits: its own waiting state, else an unschedulable pod."""
    waiting = _get(_trainer_status(pod), "state", "waiting") or {}
    if waiting.get("reason"):
        return str(waiting["reason"]), (str(waiting["message"]) if waiting.get("message") else None)
    for condition in _get(pod, "status", "conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = condition.get("message")
            return str(condition.get("reason") or "Unschedulable"), (str(message) if message else None)
    return None, None


def _started(pod: Mapping[str, Any]) -> bool:
    """The trainer container ran (it runs, or ended): from then on it is the trainer's to report."""
    status = _trainer_status(pod)
    state = status.get("state") or {}
    return bool(state.get("running") or state.get("terminated") or _get(status, "lastState", "terminated"))


def _pending_since(job: Mapping[str, Any], pod: Mapping[str, Any], phase: JobPhase) -> dt.datetime | None:
    """When the attempt began to wait for its container: the pod's creation, else the Job's start."""
    if phase != "Active" or _get(job, "spec", "suspend") or (pod and _started(pod)):
        return None
    if pod:
        return _time(_get(pod, "metadata", "creationTimestamp"))
    # No pod yet (a quota, a missing ServiceAccount): the Job controller's start time, or its creation.
    return _time(_get(job, "status", "startTime")) or _time(_get(job, "metadata", "creationTimestamp"))


def _pod_reason(job: Mapping[str, Any], pod: Mapping[str, Any], terminated: Mapping[str, Any]) -> str | None:
    if reason := _get(pod, "status", "reason"):
        return str(reason)
    if terminated.get("reason") == "OOMKilled":
        return "OOMKilled"
    for condition in _get(pod, "status", "conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return str(condition.get("reason") or "DisruptionTarget")
    for condition in _get(job, "status", "conditions") or []:
        if condition.get("type") == "Failed" and condition.get("reason") == "DeadlineExceeded":
            return "DeadlineExceeded"
    return None


@dataclass(frozen=True)
class Identity:
    """Who a Job is for, as its kind reads it from the Job's labels and annotations."""

    kind: str
    batch: str
    attempt: int
    writes_volume: bool = True
    key: str = ""
    next_batches: tuple[str, ...] = ()


def read_job(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], identity: Identity) -> JobView:
    """The view of a Job of a known kind; ``pods`` are the Job's pods (any order): the newest one tells how
    its container ended."""
    newest = max(
        pods,
        key=lambda p: (_get(p, "metadata", "creationTimestamp") or "", _get(p, "metadata", "name") or ""),
        default={},
    )
    terminated = _terminated(newest)
    exit_code = terminated.get("exitCode")
    phase = _phase(job)
    waiting_reason, waiting_message = _waiting(newest) if newest and not _started(newest) else (None, None)
    disruption = any(
        c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        for c in _get(newest, "status", "conditions") or []
    )
    return JobView(
        name=str(_get(job, "metadata", "name")),
        batch=identity.batch,
        attempt=identity.attempt,
        kind=identity.kind,
        writes_volume=identity.writes_volume,
        key=identity.key,
        next_batches=identity.next_batches,
        phase=phase,
        exit_code=int(exit_code) if exit_code is not None else None,
        termination_message=terminated.get("message") or None,
        pod_reason=_pod_reason(job, newest, terminated),
        disruption_target=disruption,
        suspended=bool(_get(job, "spec", "suspend")),
        deleting=_get(job, "metadata", "deletionTimestamp") is not None,
        created=_time(_get(job, "metadata", "creationTimestamp")),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        pending_since=_pending_since(job, newest, phase),
        config_map=(_get(job, "metadata", "annotations") or {}).get(ANNOTATION_CONFIG_SOURCE)
        != CONFIG_IN_POD_ANNOTATION,
    )


def get(obj: Mapping[str, Any], *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, None where a step is missing (for kinds reading their labels)."""
    return _get(obj, *path)


def pods_by_job(pods: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Pods grouped by the uid of the Job that owns them (matched by owner reference, which every Kubernetes
    version sets, unlike the ``job-name``/``batch.kubernetes.io/job-name`` labels)."""
    by_owner: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        for owner in _get(pod, "metadata", "ownerReferences") or []:
            if owner.get("kind") == "Job" and owner.get("uid"):
                by_owner.setdefault(str(owner["uid"]), []).append(pod)
    return by_owner
