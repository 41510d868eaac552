"""The executor protocol: what carries a plan out -- the cluster (:mod:`continual_operator.cluster.executor`)
and local mode (:mod:`continual_operator.local.executor`).

A plan says everything (built manifests, explicit deletions with the objects a kind owns, status merge
patches, Events), so an executor only *applies* it, in order, stopping at the first error; and it reads the
run's workloads back as :class:`~continual_operator.workloads.views.JobView` for the next plan. Both
executors pass one conformance test (tests/operator/test_executor_conformance.py): the same plan has the
same effect on either.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from continual_operator.planning.actions import Plan
from continual_operator.workloads.views import JobView


@dataclass(frozen=True)
class Executed:
    """What applying a plan actually changed (for metrics and logs)."""

    jobs_created: tuple[str, ...] = ()


class Executor(Protocol):
    """Applies one run's plans and reads its workloads back."""

    async def apply(self, plan: Plan, *, now: dt.datetime) -> Executed:
        """Carry out the plan's actions in order; ``RequeueAfter`` is the caller's (it is about scheduling).

        Creating a workload that exists already and deleting one that is gone are not errors: a plan
        applied twice has the effect of applying it once.
        """
        ...

    async def workloads(self) -> list[JobView]:
        """The run's workloads as they are now (finished ones with their exit code and result)."""
        ...
