"""Reading a gang attempt back: which pod's result counts, which pod a failure is classified by, and the
attempt as the planner's :class:`~continual_operator.workloads.views.JobView`.

The semantics (docs/scaling.md, "Results and status"): the trainer's result record is the coordinator's
(completion index 0, of the newest JobSet restart); a failed attempt is classified by the pod that failed
first, because one failed pod makes the Job controller stop the others, whose trainers then report
``Preempted``; under torchrun the container's exit code is torchrun's, and the trainer's own is the
``exitCode`` of the coordinator's record. Pure: pods and workloads are the API's plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from continual_operator.naming import LABEL_ATTEMPT, LABEL_BATCH, LABEL_COMPONENT, LABEL_RUN
from continual_operator.workloads.gang import ANNOTATION_WORLD_SIZE, COMPLETION_INDEX_ANNOTATION
from continual_operator.workloads.outcomes import parse_result, trainer_exit_code
from continual_operator.workloads.registry import job_view, job_views
from continual_operator.workloads.train import is_gang
from continual_operator.workloads.views import TRAINER_CONTAINER, JobView, get

#: Labels JobSet puts on its pods: which Job of the replicated job, and which gang restart they belong to.
JOBSET_JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
JOBSET_RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"


def workload_views(
    workloads: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> list[JobView]:
    """Views of a run's workloads, Jobs and JobSets alike, each with its own pods; foreign ones skipped.

    A gang (a JobSet, an Indexed Job) is read with :func:`gang_view` from the pods of its attempt; the
    Jobs a JobSet makes (they carry the run label too, and the Job watch sees them) are its parts, not
    workloads of their own.
    """
    gangs = [w for w in workloads if is_gang(w)]
    jobs = [w for w in workloads if not is_gang(w) and w.get("kind", "Job") == "Job" and not _jobset_child(w)]
    views = job_views(jobs, pods)
    for workload in gangs:
        view = gang_view(workload, attempt_pods(workload, pods))
        if view is not None:
            views.append(view)
    return views


def gang_outcome_not_seen(workloads: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> bool:
    """A gang whose workload has finished while a pod of its attempt still runs, as far as ``pods`` say:
    either a trainer still saves (the gang waits for it) or the pod watch has not delivered how it ended
    yet, and nothing else would trigger a reconcile then (the executor lists the pods afresh)."""
    return any(
        _terminal(_as_job(w)) is not None and any(_running(pod) for pod in attempt_pods(w, pods))
        for w in workloads
        if is_gang(w)
    )


def _jobset_child(job: Mapping[str, Any]) -> bool:
    return any(o.get("kind") == "JobSet" for o in get(job, "metadata", "ownerReferences") or [])


def attempt_pods(workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods of a gang's attempt, found by its labels (run, batch, attempt, component): a JobSet's pods
    belong to its child Jobs, which a gang restart replaces, not to the JobSet."""
    labels = _meta(workload, "labels")
    wanted = {key: labels.get(key) for key in (LABEL_RUN, LABEL_BATCH, LABEL_ATTEMPT, LABEL_COMPONENT)}
    if any(value is None for value in wanted.values()):
        return []
    return [pod for pod in pods if all(_meta(pod, "labels").get(k) == v for k, v in wanted.items())]


def coordinator_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod whose termination message is the attempt's result: completion index 0 (of Job 0 of the
    newest JobSet restart). The other pods' messages are ignored; their failures fail the gang anyway."""
    candidates = [
        pod
        for pod in pods
        if _meta(pod, "annotations").get(COMPLETION_INDEX_ANNOTATION) == "0"
        and _meta(pod, "labels").get(JOBSET_JOB_INDEX_LABEL, "0") == "0"
    ]

    def newest(pod: Mapping[str, Any]) -> tuple[int, str, str]:
        restart = str(_meta(pod, "labels").get(JOBSET_RESTART_LABEL, "0"))
        created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
        return (int(restart) if restart.isdigit() else 0, created, str(pod["metadata"].get("name", "")))

    return max(candidates, key=newest, default=None)


def first_failure(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The gang pod that failed first: what a failed attempt is classified by, when it is not the
    coordinator (None when no pod failed).

    One failed pod fails the whole gang: the Job controller (``backoffLimit: 0``) then stops the others,
    and their trainers, SIGTERMed, checkpoint and report ``Preempted``. So the coordinator's result alone
    would turn a rank that keeps crashing (an OOM on one GPU) into endless uncounted "preemptions": the
    cause is the pod whose trainer ended first with a failure, or that the cluster disrupted. On a tie
    (same second) the coordinator wins, as its result record explains itself.
    """
    failed: list[tuple[str, int, str, Mapping[str, Any]]] = []
    for pod in pods:
        when = _failed_at(pod)
        if when is not None:
            not_coordinator = int(_meta(pod, "annotations").get(COMPLETION_INDEX_ANNOTATION) != "0")
            failed.append((when, not_coordinator, str(_meta_name(pod)), pod))
    return min(failed, key=lambda f: f[:3])[3] if failed else None


def _failed_at(pod: Mapping[str, Any]) -> str | None:
    """When the pod's trainer failed (RFC 3339, which sorts as text), or None when it did not."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            return str(condition.get("lastTransitionTime") or "")
    for container in status.get("containerStatuses") or []:
        if container.get("name") == TRAINER_CONTAINER:
            state = container.get("state") or {}
            terminated = state.get("terminated") or {}
            if terminated and terminated.get("exitCode") != 0:
                return str(terminated.get("finishedAt") or "")
    return "" if status.get("phase") == "Failed" else None


def _meta_name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def gang_view(workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
    """What the planner needs to know about a gang attempt, as :func:`~continual_operator.workloads.views.job_view`
    says it of a Job: ``workload`` is the Indexed Job or the JobSet, ``pods`` all the attempt's pods (find
    them by the attempt's labels: a JobSet's pods belong to its child Job, not to the JobSet).

    * Only the pods of the newest JobSet restart count (older ones are on their way out).
    * The attempt is finished only when the workload is and no pod's trainer still runs: the Job
      controller marks a gang Failed at the first failed pod while the others still checkpoint, and the
      single-writer rule counts them until they end.
    * Which pod speaks: while running, one that cannot start (if any) so that its reason shows; once
      failed, :func:`first_failure`; otherwise the coordinator, whose exit code is read through
      :func:`trainer_exit_code`.
    """
    current = _current_restart(pods)
    job = _as_job(workload)
    coordinator = coordinator_pod(current)
    terminal = _terminal(job)
    if terminal is not None and any(_running(pod) for pod in current):
        job = {**job, "status": {}}  # not over until every trainer has ended
        terminal = None
    if terminal == "Failed":
        speaker = first_failure(current) or coordinator
    elif terminal is None:
        speaker = next((pod for pod in current if not _started(pod)), coordinator)
    else:
        speaker = coordinator
    view = job_view(job, [speaker] if speaker is not None else [])
    if view is None or speaker is None or speaker is not coordinator:
        return view
    return replace(view, exit_code=trainer_exit_code(view.exit_code, parse_result(view.termination_message)))


def _current_restart(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def restart(pod: Mapping[str, Any]) -> int:
        value = str(_meta(pod, "labels").get(JOBSET_RESTART_LABEL, "0"))
        return int(value) if value.isdigit() else 0

    newest = max((restart(pod) for pod in pods), default=0)
    return [pod for pod in pods if restart(pod) == newest]


def _as_job(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    """A JobSet as far as :func:`~continual_operator.workloads.views.job_view` reads a Job: its metadata, whether it
    is suspended (by Kueue) and its terminal conditions (JobSet's ``Completed`` is a Job's ``Complete``)."""
    if workload.get("kind") != "JobSet":
        return workload
    names = {"Completed": "Complete", "Failed": "Failed"}
    conditions = [
        {**condition, "type": names[condition["type"]]}
        for condition in (workload.get("status") or {}).get("conditions") or []
        if condition.get("type") in names
    ]
    suspend = bool((workload.get("spec") or {}).get("suspend"))
    return {
        "kind": "JobSet",
        "metadata": workload["metadata"],
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions},
    }


def _terminal(job: Mapping[str, Any]) -> str | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in {"Complete", "Failed"}:
            return str(condition["type"])
    return None


def _trainer_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == TRAINER_CONTAINER:
            return container.get("state") or {}
    return {}


def _running(pod: Mapping[str, Any]) -> bool:
    """The pod's trainer runs (it may still write the volume)."""
    return "running" in _trainer_state(pod)


def _started(pod: Mapping[str, Any]) -> bool:
    state = _trainer_state(pod)
    return "running" in state or "terminated" in state


def world_size(obj: Mapping[str, Any]) -> int | None:
    """The world size a built workload (or one of its pods) was made for, from its annotation."""
    value = str(_meta(obj, "annotations").get(ANNOTATION_WORLD_SIZE, ""))
    return int(value) if value.isdigit() else None


def _meta(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return (obj.get("metadata") or {}).get(key) or {}
