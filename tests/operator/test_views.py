"""JobView: what the planner learns from a Job and its pods."""

from __future__ import annotations

import pytest

from continual_operator.workloads.registry import job_view, job_views


def job_manifest(**status: object) -> dict:
    return {
        "metadata": {
            "name": "demo-b1-a2",
            "labels": {"continual.dev/batch": "b1", "continual.dev/attempt": "2"},
            "annotations": {"continual.dev/batch": "b1"},
            "creationTimestamp": "2025-03-01T10:00:00Z",
        },
        "spec": {},
        "status": status,
    }


def pod(name: str, created: str, terminated: dict | None = None, **status: object) -> dict:
    container: dict = {
        "name": "trainer",
        "state": {"terminated": terminated} if terminated else {"running": {}},
    }
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"containerStatuses": [container], **status},
    }


def test_running_job() -> None:
    view = job_view(job_manifest(active=1), [pod("p", "2025-03-01T10:00:01Z")])
    assert view is not None
    assert (view.name, view.batch, view.attempt, view.phase) == ("demo-b1-a2", "b1", 2, "Active")
    assert view.writing
    assert view.exit_code is None


def test_finished_job_reads_the_newest_pod() -> None:
    old = pod("p1", "2025-03-01T10:00:01Z", {"exitCode": 1, "message": "old"})
    new = pod("p2", "2025-03-01T10:05:00Z", {"exitCode": 64, "message": '{"batchId":"b1"}'})
    view = job_view(job_manifest(conditions=[{"type": "Failed", "status": "True"}]), [new, old])
    assert view is not None
    assert (view.phase, view.exit_code, view.termination_message) == ("Failed", 64, '{"batchId":"b1"}')
    assert not view.writing


@pytest.mark.parametrize(
    ("pod_status", "terminated", "reason", "disrupted"),
    [
        ({"reason": "Evicted"}, None, "Evicted", False),
        ({}, {"exitCode": 137, "reason": "OOMKilled"}, "OOMKilled", False),
        (
            {
                "conditions": [
                    {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
                ]
            },
            {"exitCode": 143},
            "PreemptionByScheduler",
            True,
        ),
        ({}, {"exitCode": 2, "reason": "Error"}, None, False),
    ],
)
def test_pod_reasons(pod_status: dict, terminated: dict | None, reason: str | None, disrupted: bool) -> None:
    failed = job_manifest(conditions=[{"type": "Failed", "status": "True"}])
    view = job_view(failed, [pod("p", "2025-03-01T10:00:01Z", terminated, **pod_status)])
    assert view is not None
    assert (view.pod_reason, view.disruption_target) == (reason, disrupted)


def test_kueue_suspended_and_deleting_jobs_still_count_as_writers() -> None:
    manifest = job_manifest()
    manifest["spec"]["suspend"] = True
    manifest["metadata"]["deletionTimestamp"] = "2025-03-01T11:00:00Z"
    view = job_view(manifest)
    assert view is not None
    assert view.suspended
    assert view.deleting
    assert view.writing


def test_complete_job() -> None:
    view = job_view(job_manifest(conditions=[{"type": "Complete", "status": "True"}]))
    assert view is not None
    assert view.phase == "Succeeded"


def test_deadline_exceeded_job() -> None:
    conditions = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    view = job_view(job_manifest(conditions=conditions))
    assert view is not None
    assert view.pod_reason == "DeadlineExceeded"


def test_foreign_jobs_are_not_viewed() -> None:
    assert job_view({"metadata": {"name": "x", "labels": {}}}) is None


def test_job_views_match_pods_by_owner() -> None:
    first, second = job_manifest(), job_manifest(conditions=[{"type": "Failed", "status": "True"}])
    first["metadata"]["uid"], second["metadata"]["uid"] = "u1", "u2"
    second["metadata"]["name"] = "demo-b1-a3"
    second["metadata"]["labels"] = {"continual.dev/batch": "b1", "continual.dev/attempt": "3"}
    crashed = pod("p2", "2025-03-01T10:05:00Z", {"exitCode": 75})
    crashed["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "u2"}]
    running = pod("p1", "2025-03-01T10:00:00Z")
    running["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "u1"}]
    views = job_views([first, second, {"metadata": {"name": "foreign"}}], [crashed, running])
    assert [(v.attempt, v.phase, v.exit_code) for v in views] == [(2, "Active", None), (3, "Failed", 75)]
