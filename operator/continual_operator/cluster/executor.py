"""The cluster executor: applies one run's plans through :mod:`.k8s` and reads its Jobs back.

A thin binding of :class:`~continual_operator.cluster.k8s.KubernetesStorage` to one run (its
:class:`~continual_operator.cluster.k8s.Subject`), implementing
:class:`~continual_operator.planning.executor.Executor`. Its workloads are Jobs and, for multi-node
attempts, JobSets or Indexed Jobs, read by :func:`~continual_operator.workloads.gang_views.workload_views`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from continual_operator.api import ObjectMeta
from continual_operator.cluster.k8s import KubernetesStorage, Subject
from continual_operator.planning.actions import Plan
from continual_operator.planning.executor import Executed
from continual_operator.workloads.gang_views import gang_outcome_not_seen, workload_views
from continual_operator.workloads.views import JobView


class ClusterExecutor:
    """Applies plans for the run of ``subject`` on the cluster ``storage`` talks to."""

    def __init__(
        self,
        storage: KubernetesStorage,
        subject: Subject,
        *,
        seen: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
        jobsets: bool = False,
    ) -> None:
        self.storage = storage
        self.subject = subject
        #: The run's workloads (Jobs, JobSets) and pods as the watch-fed view holds them (None: list them
        #: afresh).
        self.seen = seen
        #: JobSet is served: listing afresh lists the run's JobSets too.
        self.jobsets = jobsets

    def with_batches(self, batch_metas: Mapping[str, ObjectMeta]) -> ClusterExecutor:
        """The same executor, knowing the run's batches (so that their Events name their uids)."""
        return ClusterExecutor(
            self.storage,
            dataclasses.replace(self.subject, batch_metas=batch_metas),
            seen=self.seen,
            jobsets=self.jobsets,
        )

    async def apply(self, plan: Plan, *, now: dt.datetime) -> Executed:
        return await self.storage.execute(plan, self.subject, now=now)

    async def workloads(self) -> list[JobView]:
        namespace, run = self.subject.namespace, self.subject.run_meta.name
        if self.seen is None:
            jobs, pods, jobsets = await asyncio.gather(
                self.storage.list_jobs(namespace, run),
                self.storage.list_pods(namespace, run),
                self.storage.list_jobsets(namespace, run) if self.jobsets else _nothing(),
            )
            return workload_views(jobs + jobsets, pods)
        jobs, pods = self.seen
        views = workload_views(jobs, pods)
        if any(_outcome_not_seen(view, pods) for view in views) or gang_outcome_not_seen(jobs, pods):
            # The Job's watch said it finished, the pod's watch has not yet delivered how its container
            # ended (two streams): the result must not be read from a stale pod. One LIST by label.
            views = workload_views(jobs, await self.storage.list_pods(namespace, run))
        return views


async def _nothing() -> list[dict[str, Any]]:
    return []


def _outcome_not_seen(view: JobView, pods: list[dict[str, Any]]) -> bool:
    """A finished Job whose pod the view still holds as not ended (no terminated container), or does not
    hold at all: under load the pod watch lags the Job watch by seconds, and a Job read without its pod
    has no result (it was retried as NoResult: a second Job for a batch already trained)."""
    if not view.finished or view.exit_code is not None:
        return False
    owned = [
        pod
        for pod in pods
        if any(o.get("name") == view.name for o in (pod.get("metadata") or {}).get("ownerReferences") or [])
    ]
    return not owned or not all(_ended(pod) for pod in owned)


def _ended(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") in {"Succeeded", "Failed"} or any(
        "terminated" in (c.get("state") or {}) for c in status.get("containerStatuses") or []
    )
