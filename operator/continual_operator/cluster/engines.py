"""Which multi-node engines the cluster offers, discovered from its API server and cached.

A run with ``spec.resources.nodes`` > 1 trains each batch as a gang (:mod:`continual_operator.workloads.gang`):
a JobSet where JobSet is installed, else an Indexed Job with a headless Service, else it is refused
(``MultiNodeUnavailable``, naming what to install or the Kubernetes version needed). What decides:

* **JobSet**: the API group ``jobset.x-k8s.io`` serves ``v1alpha2`` (discovery: JobSet's CRD is installed;
  its controller comes with it in JobSet's release manifests);
* **Indexed Jobs**: the server's version (1.24+: GA; before 1.21: absent), and from 1.21 to 1.23, where a
  feature gate decides, whether a server-side dry-run create of an Indexed Job keeps ``completionMode``
  (a server without the gate silently drops the field: the Job would run N unrelated pods).

The answer is cached for :data:`RECHECK_SECONDS` (:data:`RECHECK_MISSING_SECONDS` while a run waits for an
engine, so that a JobSet installed meanwhile is used within a minute or two), and dropped at once when a
JobSet shows up in the watch (:meth:`EngineDiscovery.forget`). Only runs with ``nodes`` > 1 ask, so a
cluster without multi-node runs never sees these requests. A discovery that fails keeps the last answer;
with none yet, the error propagates and the reconcile is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from continual_operator.cluster.k8s import KubernetesStorage
from continual_operator.errors import KubernetesApiError
from continual_operator.workloads.gang import (
    JOBSET_API_VERSION,
    JOBSET_GROUP,
    Engines,
    indexed_jobs_by_version,
)

logger = logging.getLogger(__name__)

#: How long an answer that offers an engine is kept.
RECHECK_SECONDS = 600.0
#: How long an answer that offers none is kept (a run is refused until it changes).
RECHECK_MISSING_SECONDS = 120.0


class EngineDiscovery:
    """The cluster's :class:`~continual_operator.workloads.gang.Engines`, asked of the API server when the
    cached answer is too old (see the module docstring)."""

    def __init__(self, storage: KubernetesStorage, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.clock = clock
        self._known: Engines | None = None
        self._until = 0.0

    async def engines(self, namespace: str) -> Engines:
        """What the cluster offers (``namespace``: where the Indexed Job probe is dry-run, the run's own)."""
        if self._known is not None and self.clock() < self._until:
            return self._known
        try:
            found = await self.discover(namespace)
        except KubernetesApiError as error:
            if self._known is None:
                raise
            logger.warning(f"engine discovery failed, keeping the last answer ({self._known}): {error}")
            return self._known
        if found != self._known:
            logger.info(f"multi-node engines: {found}")
        self._known = found
        usable = found.jobset or found.indexed_job
        self._until = self.clock() + (RECHECK_SECONDS if usable else RECHECK_MISSING_SECONDS)
        return found

    async def discover(self, namespace: str) -> Engines:
        """Ask the API server (three requests at most; see the module docstring)."""
        jobset = JOBSET_API_VERSION.rpartition("/")[2] in await self.storage.served_versions(JOBSET_GROUP)
        version = await self.storage.server_version()
        indexed = indexed_jobs_by_version(*version) if version is not None else None
        if indexed is None:
            indexed = await self.storage.keeps_completion_mode(namespace)
        shown = f"{version[0]}.{version[1]}" if version is not None else ""
        return Engines(jobset=jobset, indexed_job=indexed, server_version=shown)

    def forget(self) -> None:
        """Ask again at the next question (a JobSet appeared: its CRD is installed now)."""
        self._until = 0.0
