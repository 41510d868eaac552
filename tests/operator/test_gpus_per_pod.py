"""M GPUs on one node, wired into the train kind: the Job runs torchrun with one process per GPU, its
outcome is read from the coordinator's result record (torchrun exits 1 for every failure), and a run asking
for several nodes is refused with the field and the fix until multi-node gangs are started."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tests.operator.operator_testkit import NOW, make_batch, make_run

from continual_operator.planning.actions import CreateWorkload, EmitEvent, UpdateRunStatus
from continual_operator.planning.planner import plan
from continual_operator.workloads.gang import ANNOTATION_WORLD_SIZE
from continual_operator.workloads.outcomes import TORCHRUN_FAILED, classify
from continual_operator.workloads.registry import job_view
from continual_operator.workloads.train import TRAIN, TrainRequest
from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult


def _job(gpus: int) -> dict[str, Any]:
    workload = TRAIN.build(TrainRequest(make_run(resources={"gpus": gpus}), make_batch("b1"), 1))
    return copy.deepcopy(dict(workload.job))


def _finished(job: dict[str, Any], exit_code: int, result: BatchResult) -> Any:
    job["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2025-03-01T10:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {"exitCode": exit_code, "message": result.to_termination_message()}
                    },
                }
            ]
        },
    }
    view = job_view(job, [pod])
    assert view is not None
    return view


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_process_is_todays_job(gpus: int) -> None:
    job = _job(gpus)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == "continual-trainer"
    assert ANNOTATION_WORLD_SIZE not in (job["metadata"].get("annotations") or {})


def test_gpus_on_one_node_run_torchrun_with_a_process_per_gpu() -> None:
    job = _job(4)
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["torchrun", "--nproc-per-node", "4"]
    assert "--standalone" in command and command[command.index("-m") + 1] == "continual_trainer.cli"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert job["metadata"]["annotations"][ANNOTATION_WORLD_SIZE] == "4"


@pytest.mark.parametrize(
    ("code", "outcome", "kind"),
    [
        (ExitCode.PERMANENT, "Failed", "Permanent"),
        (ExitCode.TRANSIENT, "Failed", "Retry"),
        (ExitCode.PREEMPTED, "Preempted", "Preempted"),
    ],
)
def test_a_torchrun_job_is_classified_by_the_coordinators_exit_code(
    code: int, outcome: str, kind: str
) -> None:
    result = BatchResult(batch_id="b1", outcome=outcome, exit_code=int(code), reason="X", message="m")
    view = _finished(_job(2), TORCHRUN_FAILED, result)
    assert view.exit_code == code
    assert classify(view).kind == kind


def test_a_one_process_job_keeps_its_container_exit_code() -> None:
    result = BatchResult(
        batch_id="b1", outcome="Failed", exit_code=int(ExitCode.PERMANENT), reason="X", message="m"
    )
    view = _finished(_job(1), 1, result)
    assert view.exit_code == 1  # no torchrun: the container's code is the trainer's


def test_several_nodes_are_refused_naming_the_field_and_the_fix() -> None:
    run = make_run(resources={"gpus": 8, "nodes": 2})
    p = plan(run, [make_batch("b1")], [], now=NOW)
    assert p.of(CreateWorkload) == []
    (patch,) = [a.patch for a in p.of(UpdateRunStatus)]
    degraded = next(c for c in patch["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "MultiNodeUnavailable"
    assert "spec.resources.nodes: 1" in degraded["message"] and "spec.resources.gpus" in degraded["message"]
    assert patch["phase"] == "Halted"
    assert [e.type for e in p.of(EmitEvent) if e.reason == "MultiNodeUnavailable"] == ["Warning"]
