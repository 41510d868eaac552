"""Reading a gang attempt back: the coordinator's result, the first failure, torchrun's exit code, and the
attempt as the planner's JobView (classified by the operator's own classify())."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_gang import gang_job, produced

from continual_operator.workloads import gang, gang_views, outcomes
from continual_operator.workloads.outcomes import classify
from continual_operator.workloads.registry import job_view
from continual_operator.workloads.views import JobView
from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult


# -- reading the result back ----------------------------------------------------------------------------
def pod(name: str, index: str, *, restart: str | None = None, job_index: str | None = None) -> dict[str, Any]:
    labels = {
        k: v
        for k, v in (
            (gang_views.JOBSET_RESTART_LABEL, restart),
            (gang_views.JOBSET_JOB_INDEX_LABEL, job_index),
        )
        if v
    }
    return {
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {gang.COMPLETION_INDEX_ANNOTATION: index},
            "creationTimestamp": "2026-12-01T10:00:00Z",
        }
    }


def test_coordinator_pod_is_index_zero_of_the_newest_gang_restart() -> None:
    assert gang_views.coordinator_pod([pod("j-1", "1"), pod("j-0", "0")]) == pod("j-0", "0")
    restarted = [pod("a-0", "0", restart="0", job_index="0"), pod("b-0", "0", restart="1", job_index="0")]
    assert gang_views.coordinator_pod([*restarted, pod("b-1", "1", restart="1")])["metadata"]["name"] == "b-0"
    assert gang_views.coordinator_pod([pod("j-1", "1")]) is None


def ended(
    name: str, index: str, at: str, code: int, *, reason: str = "Error", message: str = ""
) -> dict[str, Any]:
    """A gang pod whose trainer container terminated at ``at`` (seconds) with ``code``."""
    terminated = {
        "exitCode": code,
        "reason": reason,
        "finishedAt": f"2026-12-01T10:00:{at}Z",
        "message": message,
    }
    out = pod(name, index)
    out["status"] = {
        "phase": "Failed" if code else "Succeeded",
        "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
    }
    return out


PREEMPTED = BatchResult.model_validate({"batchId": "b", "outcome": "Preempted", "exitCode": 85})


def test_the_first_pod_to_fail_is_the_cause_not_the_coordinator_stopped_after_it() -> None:
    # Rank 8 (pod 1) runs out of memory; the Job controller then stops pod 0, whose trainer checkpoints on
    # SIGTERM and reports Preempted: classified from the coordinator alone, the attempt would be an
    # uncounted preemption, again and again.
    oom = ended("j-1", "1", "10", 137, reason="OOMKilled")
    stopped = ended("j-0", "0", "41", 1, message=PREEMPTED.to_termination_message())
    cause = gang_views.first_failure([stopped, oom])
    assert cause is oom
    job, shape = gang_job()
    (indexed, _service) = gang.build(job, shape, "indexed-job")
    indexed["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    }
    indexed["spec"]["suspend"] = False  # Kueue admitted it
    by_cause = job_view(indexed, [cause])
    by_coordinator = job_view(indexed, [gang_views.coordinator_pod([stopped, oom]) or {}])
    assert by_cause is not None and by_coordinator is not None
    assert classify(by_cause).kind == "Retry" and classify(by_cause).reason == "OOMKilled"
    assert classify(by_coordinator).kind == "Preempted"


def test_first_failure_prefers_the_coordinator_on_a_tie_and_sees_disruptions() -> None:
    own = ended("j-0", "0", "10", 1)
    other = ended("j-1", "1", "10", 1)
    assert gang_views.first_failure([other, own]) is own
    evicted = pod("j-1", "1")
    evicted["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": "DisruptionTarget", "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"}
        ],
    }
    assert gang_views.first_failure([own, evicted]) is evicted
    assert gang_views.first_failure([ended("j-0", "0", "10", 0), pod("j-1", "1")]) is None


def view(exit_code: int | None, result: BatchResult) -> JobView:
    return JobView(
        name="j",
        batch="b",
        attempt=1,
        phase="Failed",
        exit_code=exit_code,
        termination_message=result.to_termination_message(),
    )


@pytest.mark.parametrize(
    ("code", "outcome", "kind"),
    [
        (ExitCode.PERMANENT, "Failed", "Permanent"),
        (ExitCode.PREEMPTED, "Preempted", "Preempted"),
        (ExitCode.TRANSIENT, "Failed", "Retry"),
    ],
)
def test_trainer_exit_code_behind_torchrun_keeps_the_classification(
    code: int, outcome: str, kind: str
) -> None:
    result = BatchResult.model_validate({"batchId": "b", "outcome": outcome, "exitCode": int(code)})
    # torchrun exits 1 for all three; the coordinator's result record keeps the trainer's code.
    assert outcomes.trainer_exit_code(outcomes.TORCHRUN_FAILED, result) == code
    assert classify(view(outcomes.trainer_exit_code(outcomes.TORCHRUN_FAILED, result), result)).kind == kind
    assert outcomes.trainer_exit_code(137, result) == 137  # a killed container is the container's truth
    assert outcomes.trainer_exit_code(outcomes.TORCHRUN_FAILED, None) == outcomes.TORCHRUN_FAILED


# -- gang_view: a gang attempt as the planner's JobView --------------------------------------------------
SUCCEEDED = BatchResult.model_validate(
    {"batchId": "week-07", "outcome": "Succeeded", "startStep": 0, "endStep": 40, "exitCode": 0}
)
PERMANENT = BatchResult.model_validate(
    {"batchId": "week-07", "outcome": "Failed", "exitCode": 64, "reason": "BadData", "message": "line 3"}
)


def running(name: str, index: str, *, restart: str | None = None) -> dict[str, Any]:
    out = pod(name, index, restart=restart)
    out["status"] = {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}
    return out


def finished(workload: dict[str, Any], condition: str) -> dict[str, Any]:
    out = copy.deepcopy(workload)
    out["spec"]["suspend"] = False  # admitted by Kueue
    out["status"] = {"conditions": [{"type": condition, "status": "True"}]}
    return out


def indexed() -> dict[str, Any]:
    return produced()["gang-indexed-job.yaml"]


def test_gang_view_of_a_finished_gang_is_the_coordinators_result() -> None:
    pods = [
        ended("j-1", "1", "30", 0),
        ended("j-0", "0", "31", 0, message=SUCCEEDED.to_termination_message()),
    ]
    view = gang_views.gang_view(finished(indexed(), "Complete"), pods)
    assert view is not None and (view.batch, view.attempt) == ("week-07", 1)
    assert classify(view).kind == "Succeeded" and classify(view).result == SUCCEEDED


def test_gang_view_reads_the_trainers_exit_code_behind_torchrun() -> None:
    pods = [
        ended("j-0", "0", "10", outcomes.TORCHRUN_FAILED, message=PERMANENT.to_termination_message()),
        ended("j-1", "1", "25", outcomes.TORCHRUN_FAILED),  # stopped by the Job controller afterwards
    ]
    view = gang_views.gang_view(finished(indexed(), "Failed"), pods)
    assert view is not None and view.exit_code == ExitCode.PERMANENT
    assert classify(view).kind == "Permanent" and classify(view).reason == "BadData"


def test_gang_view_classifies_by_the_pod_that_failed_first() -> None:
    pods = [
        ended("j-0", "0", "41", outcomes.TORCHRUN_FAILED, message=PREEMPTED.to_termination_message()),
        ended("j-1", "1", "10", 137, reason="OOMKilled"),
    ]
    view = gang_views.gang_view(finished(indexed(), "Failed"), pods)
    assert view is not None
    assert (classify(view).kind, classify(view).reason) == ("Retry", "OOMKilled")


def test_a_failed_gang_still_writes_while_one_of_its_trainers_runs() -> None:
    pods = [running("j-0", "0"), ended("j-1", "1", "10", 137, reason="OOMKilled")]
    view = gang_views.gang_view(finished(indexed(), "Failed"), pods)
    assert view is not None and view.phase == "Active" and view.writing


def test_gang_view_shows_why_a_pod_cannot_start() -> None:
    pending = pod("j-1", "1")
    pending["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/9 nodes: 8 GPUs",
            }
        ],
    }
    job = copy.deepcopy(indexed())
    job["spec"]["suspend"] = False
    view = gang_views.gang_view(job, [running("j-0", "0"), pending])
    assert view is not None and view.waiting_reason == "Unschedulable" and view.cannot_start


def test_gang_view_of_a_jobset_counts_only_the_newest_restart() -> None:
    jobset = produced()["gang-jobset.yaml"]
    assert (
        gang_views.gang_view(jobset, []) is not None and gang_views.gang_view(jobset, []).suspended
    )  # Kueue holds it
    old = ended(
        "js-node-0-0-a", "0", "10", outcomes.TORCHRUN_FAILED, message=PREEMPTED.to_termination_message()
    )
    old["metadata"]["labels"][gang_views.JOBSET_RESTART_LABEL] = "0"
    new = ended("js-node-0-0-b", "0", "50", 0, message=SUCCEEDED.to_termination_message())
    new["metadata"]["labels"][gang_views.JOBSET_RESTART_LABEL] = "1"
    view = gang_views.gang_view(finished(jobset, "Completed"), [old, new])
    assert view is not None and classify(view).kind == "Succeeded"
    restarting = gang_views.gang_view(
        finished(jobset, "Failed") | {"status": {}}, [old, running("js-node-0-0-c", "0", restart="1")]
    )
    assert restarting is not None and restarting.phase == "Active"
