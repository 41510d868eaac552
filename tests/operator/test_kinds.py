"""Workload kinds: the registry keyed by the kind label, the upgrade path, and the lease over every kind."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from tests.operator.operator_testkit import RUN, World, make_batch, make_run

from continual_operator.naming import LABEL_KIND
from continual_operator.planning.actions import CreateWorkload, DeleteWorkload
from continual_operator.workloads import registry, resources
from continual_operator.workloads.kinds import ObjectRef, Workload, WorkloadKind
from continual_operator.workloads.outcomes import Outcome
from continual_operator.workloads.registry import job_view, job_views, kind_of
from continual_operator.workloads.train import TRAIN, TrainRequest
from continual_operator.workloads.views import Identity, JobView, read_job


def _train_job(attempt: int = 1) -> dict[str, Any]:
    workload = TRAIN.build(TrainRequest(make_run(), make_batch("b1"), attempt))
    return copy.deepcopy(dict(workload.job))


def _without_kind_label(job: dict[str, Any]) -> dict[str, Any]:
    """A Job as operators before workload kinds created it."""
    del job["metadata"]["labels"][LABEL_KIND]
    del job["spec"]["template"]["metadata"]["labels"][LABEL_KIND]
    return job


def test_a_built_train_workload_is_labelled_and_owns_its_job_with_the_config_in_its_pod_template() -> None:
    workload = TRAIN.build(TrainRequest(make_run(), make_batch("b1"), 2, ("old",)))
    assert (workload.kind, workload.name, workload.batch, workload.attempt) == (
        "train",
        "demo-b1-a2",
        "b1",
        2,
    )
    assert [m["kind"] for m in workload.manifests] == ["ServiceAccount", "Role", "RoleBinding", "Job"]
    assert workload.job["metadata"]["labels"][LABEL_KIND] == "train"
    assert "abandonBatches:\n- old" in (resources.config_in_pod_annotation(workload.job) or "")
    assert workload.owned == (ObjectRef("Job", "demo-b1-a2"),)
    # Read back, the Job says it has no ConfigMap: deleting it sends no ConfigMap delete.
    view = job_view(workload.job)
    assert view is not None and registry.owned_objects(view) == (ObjectRef("Job", "demo-b1-a2"),)


def test_a_config_too_large_for_an_annotation_goes_in_a_configmap_at_the_same_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(resources, "INLINE_CONFIG_MAX_BYTES", 100)
    workload = TRAIN.build(TrainRequest(make_run(), make_batch("b1"), 2, ("old",)))
    assert [m["kind"] for m in workload.manifests][-2:] == ["ConfigMap", "Job"]
    assert workload.manifest("ConfigMap")["metadata"]["labels"][LABEL_KIND] == "train"
    assert "abandonBatches:\n- old" in workload.manifest("ConfigMap")["data"]["trainer.yaml"]
    assert resources.config_in_pod_annotation(workload.job) is None
    pod = workload.job["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": "demo-b1-a2"}} in pod["volumes"]
    assert pod["containers"][0]["command"] == ["continual-trainer", "--config", "/etc/continual/trainer.yaml"]
    assert workload.owned == (ObjectRef("Job", "demo-b1-a2"), ObjectRef("ConfigMap", "demo-b1-a2"))
    # An old operator's Job (a ConfigMap, no marker) is deleted with its ConfigMap after an upgrade too.
    view = job_view(workload.job)
    assert view is not None and registry.owned_objects(view) == workload.owned


def test_a_job_of_an_operator_before_kinds_is_read_as_a_train_job() -> None:
    old = _without_kind_label(_train_job())
    assert kind_of(old) is TRAIN
    view = job_view(old)
    assert view is not None
    assert (view.kind, view.batch, view.attempt, view.writing) == ("train", "b1", 1, True)


def test_after_an_upgrade_the_running_job_of_the_old_operator_is_adopted_not_duplicated() -> None:
    (view,) = job_views([_without_kind_label(_train_job())], [])
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [view])
    the_plan = world.step()
    assert the_plan.of(CreateWorkload) == []  # b1's Job is the writer; b2 waits
    assert world.batch("b1").status.phase == "Training"
    assert world.run.status.current_job == "demo-b1-a1"


def test_a_job_whose_kind_label_names_no_registered_kind_is_left_alone() -> None:
    job = _train_job()
    job["metadata"]["labels"][LABEL_KIND] = "from-a-newer-operator"
    assert kind_of(job) is None
    assert job_views([job], []) == []


class ProbeKind:
    """A kind of its own, to show that the planner's lease is about kinds, not about trainers."""

    name = "probe"
    writes_volume = True

    def build(self, request: Any) -> Workload:
        name = f"{RUN}-probe"
        return Workload(self.name, name, (_probe_job(),), self.owned_objects(name), writes_volume=True)

    def read(self, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
        return read_job(job, pods, Identity(self.name, "", 1, self.writes_volume))

    def classify(self, view: JobView) -> Outcome:
        return Outcome("Succeeded", "Done", "")

    def owned_objects(self, name: str) -> tuple[ObjectRef, ...]:
        return (ObjectRef("Job", name),)


def _probe_job(phase: str | None = None) -> dict[str, Any]:
    conditions = [{"type": phase, "status": "True"}] if phase else []
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{RUN}-probe", "labels": {LABEL_KIND: "probe"}},
        "status": {"conditions": conditions},
    }


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> WorkloadKind[Any]:
    kind = ProbeKind()
    monkeypatch.setitem(registry.KINDS, kind.name, kind)
    return kind


def test_any_kind_that_writes_the_volume_holds_the_writer_lease(probe: WorkloadKind[Any]) -> None:
    built = probe.build(None)
    (running,) = job_views([dict(built.job)], [])  # what a kind builds, the registry reads back as that kind
    assert (running.kind, running.writing) == ("probe", True)
    world = World(make_run(), [make_batch("b1")], [running])
    assert world.step().of(CreateWorkload) == []  # no trainer beside it
    training = next(c for c in world.run.status.conditions if c.type == "Training")
    assert (world.run.status.phase, training.reason) == ("Pending", "WorkloadRunning")  # batches wait for it
    assert world.run.status.current_job == "demo-probe" and world.run.status.current_batch is None
    (finished,) = job_views([_probe_job("Complete")], [])
    world = World(make_run(), [make_batch("b1")], [finished])
    assert [c.batch for c in world.plan().of(CreateWorkload)] == ["b1"]


def test_suspend_stops_a_writer_of_any_kind_with_the_objects_its_kind_owns(probe: WorkloadKind[Any]) -> None:
    (running,) = job_views([_probe_job()], [])
    world = World(make_run(suspend=True), [make_batch("b1")], [running])
    (stop,) = world.plan().of(DeleteWorkload)
    assert (stop.name, stop.propagation, stop.objects) == (
        "demo-probe",
        "Foreground",
        (ObjectRef("Job", "demo-probe"),),
    )
