"""The registry of workload kinds, keyed by the kind label on their Jobs, and reading a run's Jobs back.

A Job without the kind label was created by an operator before kinds existed: it is a train Job, so an
upgraded operator goes on with the Jobs its predecessor left. A Job whose label names no registered kind
(a newer operator's, or someone else's) is not the planner's business and is left out, as foreign Jobs are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from continual_operator.naming import LABEL_KIND
from continual_operator.workloads.consolidate import CONSOLIDATE
from continual_operator.workloads.kinds import ObjectRef, WorkloadKind
from continual_operator.workloads.restore import RESTORE
from continual_operator.workloads.snapshot import SNAPSHOT
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView, get, pods_by_job

#: Every kind, by its label value.
KINDS: dict[str, WorkloadKind[Any]] = {kind.name: kind for kind in (TRAIN, SNAPSHOT, RESTORE, CONSOLIDATE)}
#: The kind of a Job that has no kind label.
DEFAULT_KIND = TRAIN.name


def kind_named(name: str) -> WorkloadKind[Any]:
    """A registered kind (KeyError for an unknown one: the planner only plans registered kinds)."""
    return KINDS[name]


def kind_of(job: Mapping[str, Any]) -> WorkloadKind[Any] | None:
    """The kind of a Job: its label, the default without one, None for an unknown one."""
    label = (get(job, "metadata", "labels") or {}).get(LABEL_KIND)
    return KINDS.get(str(label) if label is not None else DEFAULT_KIND)


def job_view(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobView | None:
    """A view of one Job, read by its kind (None for a Job of no registered kind, or not one of ours)."""
    kind = kind_of(job)
    return kind.read(job, pods) if kind is not None else None


def job_views(jobs: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> list[JobView]:
    """Views of a run's Jobs, each with its own pods. Foreign Jobs are skipped."""
    by_owner = pods_by_job(pods)
    views = (job_view(job, by_owner.get(str(get(job, "metadata", "uid")), [])) for job in jobs)
    return [view for view in views if view is not None]


def owned_objects(view: JobView) -> tuple[ObjectRef, ...]:
    """What is deleted with a workload (its Job, or a gang's JobSet, first): not the ConfigMap of a workload
    that carries its config in its pod template (it has none; a delete would only be answered 404)."""
    if view.owned:
        owned = tuple(ObjectRef(kind, name) for kind, name in view.owned)
    else:
        owned = kind_named(view.kind).owned_objects(view.name)
    return owned if view.config_map else tuple(ref for ref in owned if ref.kind != "ConfigMap")
