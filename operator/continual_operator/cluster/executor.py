"""The cluster executor: applies one run's plans through :mod:`.k8s` and reads its Jobs back.

A thin binding of :class:`~continual_operator.cluster.k8s.KubernetesStorage` to one run (its
:class:`~continual_operator.cluster.k8s.Subject`), implementing
:class:`~continual_operator.planning.executor.Executor`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Mapping

from continual_operator.api import ObjectMeta
from continual_operator.cluster.k8s import KubernetesStorage, Subject
from continual_operator.planning.actions import Plan
from continual_operator.planning.executor import Executed
from continual_operator.workloads.registry import job_views
from continual_operator.workloads.views import JobView


class ClusterExecutor:
    """Applies plans for the run of ``subject`` on the cluster ``storage`` talks to."""

    def __init__(self, storage: KubernetesStorage, subject: Subject) -> None:
        self.storage = storage
        self.subject = subject

    def with_batches(self, batch_metas: Mapping[str, ObjectMeta]) -> ClusterExecutor:
        """The same executor, knowing the run's batches (so that their Events name their uids)."""
        return ClusterExecutor(self.storage, dataclasses.replace(self.subject, batch_metas=batch_metas))

    async def apply(self, plan: Plan, *, now: dt.datetime) -> Executed:
        return await self.storage.execute(plan, self.subject, now=now)

    async def workloads(self) -> list[JobView]:
        namespace, run = self.subject.namespace, self.subject.run_meta.name
        jobs, pods = await asyncio.gather(
            self.storage.list_jobs(namespace, run), self.storage.list_pods(namespace, run)
        )
        return job_views(jobs, pods)
