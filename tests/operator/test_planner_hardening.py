"""The planner's refusals and its watch on Jobs that do not start (decisions 12 and 13), as tables of cases.

Issue 6, "on a cluster": paths outside the volume, spec changes the run cannot follow, two runs on one
folder, trainer pods that cannot start, deleted failed batches, and the cosmetics users saw.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from operator_testkit import NOW, World, failed, job, make_batch, make_run, training

from continual_operator.api import ContinualTrainingRun
from continual_operator.planning.actions import (
    CreateWorkload,
    DeleteWorkload,
    EmitEvent,
    Plan,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.planner import PlanContext, plan, round_loss
from continual_operator.workloads.registry import job_views
from continual_operator.workloads.views import JobView
from continual_trainer.progress import status_patch
from continual_trainer.records import BatchResult, ProgressEvent

CLUSTER = PlanContext(check_paths=True)


def batch_patch(p: Plan, name: str) -> dict[str, Any]:
    patches = [a.patch for a in p.of(UpdateBatchStatus) if a.batch == name]
    assert len(patches) <= 1
    return dict(patches[0]) if patches else {}


def run_patch(p: Plan) -> dict[str, Any]:
    patches = p.of(UpdateRunStatus)
    return dict(patches[0].patch) if patches else {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def events(p: Plan, reason: str) -> list[EmitEvent]:
    return [e for e in p.of(EmitEvent) if e.reason == reason]


def with_spec(run: ContinualTrainingRun, **changes: Any) -> ContinualTrainingRun:
    """The run after a ``kubectl apply`` that changed spec fields (camelCase, as in YAML)."""
    body = run.spec.model_dump(mode="json", by_alias=True, exclude_none=True) | changes
    generation = (run.metadata.generation or 1) + 1
    return ContinualTrainingRun.model_validate(
        {
            "metadata": run.metadata.model_dump(mode="json", by_alias=True) | {"generation": generation},
            "spec": body,
            "status": run.status.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )


def cluster_step(world: World) -> Plan:
    the_plan = plan(world.run, world.batches, world.jobs, now=world.now, context=CLUSTER)
    world.apply(the_plan)
    return the_plan


# -- 1: paths outside the volume ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "sub_path", "refused"),
    [
        pytest.param("inbox/b1.jsonl", None, False, id="relative-inside"),
        pytest.param("/data/inbox/b1.jsonl", None, False, id="absolute-inside"),
        pytest.param("../shared/b1.jsonl", "runs/a", False, id="up-but-still-inside"),
        pytest.param("../../../../etc/passwd", None, True, id="dot-dot-out"),
        pytest.param("../../../etc/passwd", "runs/a", True, id="dot-dot-out-of-subpath"),
        pytest.param("/etc/passwd", None, True, id="absolute-outside"),
        pytest.param("/database/x.jsonl", None, True, id="prefix-is-not-inside"),
        pytest.param("/data/../etc/passwd", None, True, id="absolute-dot-dot"),
    ],
)
def test_a_batch_reading_outside_the_volume_fails_without_a_job(
    path: str, sub_path: str | None, refused: bool
) -> None:
    storage = {"existingClaim": "demo-data", **({"subPath": sub_path} if sub_path else {})}
    batch = make_batch("b1")
    batch = batch.model_copy(
        update={
            "spec": batch.spec.model_copy(update={"data": batch.spec.data.model_copy(update={"path": path})})
        }
    )
    world = World(make_run(storage=storage), [batch, make_batch("b2", created=1)], [])
    p = cluster_step(world)
    if not refused:
        assert [a.batch for a in p.of(CreateWorkload)] == ["b1"]
        return
    assert p.of(CreateWorkload) == []
    patch = batch_patch(p, "b1")
    assert (patch["phase"], patch["reason"]) == ("Failed", "DataPathOutsideVolume")
    assert "spec.data.path" in patch["message"] and path in patch["message"]
    (event,) = events(p, "DataPathOutsideVolume")
    assert event.type == "Warning" and event.name == "b1"
    # The default policy (Halt) halts the run, naming the batch and the fix; nothing else starts.
    status = run_patch(p)
    assert status["phase"] == "Halted"
    assert "DataPathOutsideVolume" in condition(status, "Degraded")["message"]
    assert cluster_step(world).of(CreateWorkload) == []


def test_with_skip_batch_the_next_batch_trains_after_a_refused_path() -> None:
    batch = make_batch("b1")
    batch = batch.model_copy(
        update={
            "spec": batch.spec.model_copy(
                update={"data": batch.spec.data.model_copy(update={"path": "/etc"})}
            )
        }
    )
    world = World(
        make_run(failurePolicy={"onPermanentFailure": "SkipBatch"}), [batch, make_batch("b2", created=1)], []
    )
    p = cluster_step(world)
    assert [(a.batch, a.abandon_batches) for a in p.of(CreateWorkload)] == [("b2", ("b1",))]


@pytest.mark.parametrize(
    ("base_model", "refused"),
    [
        pytest.param({"path": "models/tiny"}, False, id="relative-to-the-volume-root"),
        pytest.param({"path": "/data/models/tiny"}, False, id="absolute-inside"),
        pytest.param({"id": "org/model"}, False, id="hub-model"),
        pytest.param({"path": "/opt/models/tiny"}, True, id="absolute-outside"),
        pytest.param({"path": "../../root/model"}, True, id="dot-dot-out"),
    ],
)
def test_a_run_whose_base_model_is_outside_the_volume_is_refused(
    base_model: dict[str, str], refused: bool
) -> None:
    world = World(make_run(baseModel=base_model), [make_batch("b1")], [])
    p = cluster_step(world)
    if not refused:
        assert len(p.of(CreateWorkload)) == 1
        return
    assert p.of(CreateWorkload) == []
    status = run_patch(p)
    assert status["phase"] == "Halted"
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "BaseModelPathOutsideVolume")
    assert "spec.baseModel.path" in degraded["message"] and base_model["path"] in degraded["message"]
    assert condition(status, "Ready")["status"] == "False"
    assert [e.type for e in events(p, "BaseModelPathOutsideVolume")] == ["Warning"]
    assert cluster_step(world) == Plan()  # refused once: no Event storm


def test_local_mode_leaves_path_checks_to_the_trainer() -> None:
    # Local mode maps /data to a local folder and inbox batches carry host paths: no PlanContext there.
    batch = make_batch("b1")
    batch = batch.model_copy(
        update={
            "spec": batch.spec.model_copy(
                update={"data": batch.spec.data.model_copy(update={"path": "/home/u/x"})}
            )
        }
    )
    assert len(World(make_run(), [batch], []).plan().of(CreateWorkload)) == 1


# -- 3: spec changes after training ------------------------------------------------------------------------
def trained_world() -> World:
    """b1 trained (its Job created with trainedWith recorded); b2 waits."""
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [])
    p = cluster_step(world)
    assert run_patch(p)["trainedWith"] == {
        "baseModel": {"path": "models/tiny"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"], "bias": "none"},
        "storage": {"claim": "demo-data", "subPath": None},
    }
    world.finish_active()
    cluster_step(world)  # b2 starts; trainedWith stays as it was
    world.finish_active()
    return world


@pytest.mark.parametrize(
    ("change", "field", "old", "new"),
    [
        pytest.param({"lora": {"r": 16}}, "spec.lora.r", "8", "16", id="lora-r"),
        pytest.param(
            {"lora": {"targetModules": ["q_proj"]}},
            "spec.lora.targetModules",
            '["q_proj", "v_proj"]',
            '["q_proj"]',
            id="lora-target-modules",
        ),
        pytest.param(
            {"baseModel": {"path": "models/other"}},
            "spec.baseModel.path",
            '"models/tiny"',
            '"models/other"',
            id="base-model-path",
        ),
        pytest.param(
            {"baseModel": {"id": "org/m"}}, "spec.baseModel.id", "(unset)", '"org/m"', id="path-to-id"
        ),
        pytest.param(
            {"storage": {"existingClaim": "demo-data", "subPath": "runs/x"}},
            "spec.storage.subPath",
            "(unset)",
            '"runs/x"',
            id="storage-sub-path",
        ),
        pytest.param(
            {"storage": {"existingClaim": "other"}},
            "spec.storage (the volume claim)",
            '"demo-data"',
            '"other"',
            id="storage-claim",
        ),
    ],
)
def test_a_spec_change_after_training_is_refused_at_once(
    change: dict, field: str, old: str, new: str
) -> None:
    world = trained_world()
    recorded = world.run.status.trained_with
    world.run = with_spec(world.run, **change)
    world.batches.append(make_batch("b3", created=2))
    p = cluster_step(world)
    assert p.of(CreateWorkload) == []  # b2's result is recorded, but nothing new starts
    assert world.batch("b2").status.phase == "Succeeded"
    status = run_patch(p)
    assert status["phase"] == "Halted"
    assert "trainedWith" not in status and world.run.status.trained_with == recorded  # kept
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "SpecChangeRefused"
    assert f"{field}: {old} -> {new}" in degraded["message"]
    assert (
        "Set the field(s) back" in degraded["message"] and "new ContinualTrainingRun" in degraded["message"]
    )
    (event,) = events(p, "SpecChangeRefused")
    assert event.type == "Warning" and field in event.message
    assert cluster_step(world) == Plan()
    # Set back: the run goes on with b3, and says it is no longer halted.
    world.run = with_spec(world.run, **trained_world().run.spec.model_dump(mode="json", by_alias=True))
    p = cluster_step(world)
    assert [a.batch for a in p.of(CreateWorkload)] == ["b3"]
    assert condition(run_patch(p), "Degraded")["status"] == "False"
    assert events(p, "Resumed")


def test_settings_that_may_change_between_batches_are_not_refused() -> None:
    world = trained_world()
    world.run = with_spec(world.run, training={"learningRate": 1e-3}, suspend=False)
    world.batches.append(make_batch("b3", created=2))
    assert [a.batch for a in cluster_step(world).of(CreateWorkload)] == ["b3"]


def test_a_running_job_is_recorded_while_the_run_is_refused() -> None:
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [])
    cluster_step(world)
    world.run = with_spec(world.run, lora={"r": 4})
    p = cluster_step(world)
    assert p.of(DeleteWorkload) == []  # b1's Job trains on with the config it started with
    assert world.run.status.phase == "Training"
    assert condition(run_patch(p), "Degraded")["reason"] == "SpecChangeRefused"
    world.finish_active()
    p = cluster_step(world)
    assert world.batch("b1").status.phase == "Succeeded"
    assert p.of(CreateWorkload) == [] and world.run.status.phase == "Halted"


# -- 4: one run per volume ---------------------------------------------------------------------------------
def other_run(name: str, *, created: str, trained: bool = False, **storage: Any) -> ContinualTrainingRun:
    run = make_run(storage=storage or {"existingClaim": "demo-data"})
    meta = run.metadata.model_copy(
        update={"name": name, "uid": f"uid-{name}", "creation_timestamp": dt.datetime.fromisoformat(created)}
    )
    status: dict[str, Any] = {}
    if trained:
        status["trainedWith"] = {
            "baseModel": {},
            "lora": {},
            "storage": {
                "claim": storage.get("existingClaim", "demo-data"),
                "subPath": storage.get("subPath"),
            },
        }
    return run.model_copy(update={"metadata": meta, "status": type(run.status).model_validate(status)})


def demo_created(when: str) -> ContinualTrainingRun:
    run = make_run()
    return run.model_copy(
        update={
            "metadata": run.metadata.model_copy(
                update={"creation_timestamp": dt.datetime.fromisoformat(when)}
            )
        }
    )


@pytest.mark.parametrize(
    ("others", "holder"),
    [
        pytest.param(
            [other_run("older", created="2025-03-01T08:00:00+00:00")], "older", id="older-run-holds-it"
        ),
        pytest.param(
            [other_run("newer", created="2025-03-01T10:00:00+00:00")], None, id="newer-run-is-refused-not-us"
        ),
        pytest.param(
            [other_run("newer", created="2025-03-01T10:00:00+00:00", trained=True)],
            "newer",
            id="a-run-that-trained-holds-it",
        ),
        pytest.param(
            [
                other_run(
                    "x", created="2025-03-01T08:00:00+00:00", existingClaim="demo-data", subPath="runs/x"
                )
            ],
            None,
            id="other-sub-path",
        ),
        pytest.param(
            [other_run("x", created="2025-03-01T08:00:00+00:00", existingClaim="other")],
            None,
            id="other-claim",
        ),
    ],
)
def test_one_run_per_folder(others: list[ContinualTrainingRun], holder: str | None) -> None:
    run = demo_created("2025-03-01T09:00:00+00:00")
    p = plan(run, [make_batch("b1")], [], now=NOW, context=PlanContext(other_runs=others, check_paths=True))
    if holder is None:
        assert len(p.of(CreateWorkload)) == 1
        return
    assert p.of(CreateWorkload) == []
    degraded = condition(run_patch(p), "Degraded")
    assert degraded["reason"] == "VolumeInUse"
    assert (
        f"ContinualTrainingRun {holder}" in degraded["message"] and "claim demo-data" in degraded["message"]
    )
    assert "spec.storage.subPath" in degraded["message"]
    assert run_patch(p)["phase"] == "Halted"
    assert [e.type for e in events(p, "VolumeInUse")] == ["Warning"]


def test_the_trainers_refusal_of_another_runs_folder_is_shown() -> None:
    # The trainer re-checks with the run record on the volume (exit 64): its reason reaches the user.
    message = BatchResult(
        batch_id="b1",
        outcome="Failed",
        reason="VolumeBelongsToAnotherRun",
        message="the run folder belongs to run ml/first (uid 1): use another storage.subPath or claim",
    ).to_termination_message()
    world = World(
        make_run(),
        [make_batch("b1", status=training(1, job="demo-b1-a1"))],
        [failed("b1", 1, 64, termination_message=message)],
    )
    p = cluster_step(world)
    assert batch_patch(p, "b1")["reason"] == "VolumeBelongsToAnotherRun"
    degraded = condition(run_patch(p), "Degraded")
    assert "VolumeBelongsToAnotherRun" in degraded["message"] and "ml/first" in degraded["message"]


# -- 2: trainer pods that cannot start ---------------------------------------------------------------------
def starting(batch: str = "b1", attempt: int = 1, *, since: dt.datetime = NOW, **kw: Any) -> JobView:
    return job(batch, attempt, pending_since=since, **kw)


SECRET_MISSING = {
    "waiting_reason": "CreateContainerConfigError",
    "waiting_message": 'secret "hf-token" not found',
}


@pytest.mark.parametrize(
    ("waiting", "named"),
    [
        pytest.param(SECRET_MISSING, 'secret "hf-token" not found', id="missing-secret"),
        pytest.param(
            {"waiting_reason": "ErrImagePull", "waiting_message": 'failed to pull image "nope:1"'},
            '"nope:1"',
            id="image-pull",
        ),
        pytest.param(
            {"waiting_reason": "Unschedulable", "waiting_message": "0/3 nodes are available"},
            "0/3 nodes",
            id="unschedulable",
        ),
    ],
)
def test_a_pod_that_cannot_start_is_surfaced_then_stopped_at_the_deadline(waiting: dict, named: str) -> None:
    world = World(
        make_run(failurePolicy={"startDeadlineSeconds": 120}),
        [make_batch("b1", status=training(1, job="demo-b1-a1"))],
        [starting(since=NOW - dt.timedelta(seconds=30), **waiting)],
    )
    p = cluster_step(world)
    patch = batch_patch(p, "b1")
    assert patch["reason"] == waiting["waiting_reason"] and named in patch["message"]
    assert "2025-03-01T12:01:30Z" in patch["message"] and "startDeadlineSeconds" in patch["message"]
    assert "phase" not in patch  # still the current attempt
    (event,) = events(p, waiting["waiting_reason"])
    assert event.type == "Warning" and named in event.message
    status = run_patch(p)
    assert status["phase"] == "Pending"
    assert condition(status, "Training")["reason"] == waiting["waiting_reason"]
    assert p.requeue_after == 10.0  # pods have no watch: look again soon
    assert cluster_step(world) == Plan(actions=(p.actions[-1],))  # nothing new to say: only the requeue
    # The deadline passes: the Job is stopped, the attempt is a transient failure with back-off.
    world.now = NOW + dt.timedelta(seconds=90)
    p = cluster_step(world)
    assert [(d.name, d.reason, d.propagation) for d in p.of(DeleteWorkload)] == [
        ("demo-b1-a1", "StartDeadlineExceeded", "Foreground")
    ]
    patch = batch_patch(p, "b1")
    assert (patch["phase"], patch["failures"], patch["reason"]) == ("Queued", 1, "StartDeadlineExceeded")
    assert named in patch["message"] and "retry 1 of 3" in patch["message"]
    assert events(p, "Retrying")
    # Still listed (being deleted): not counted twice; after the back-off attempt 2 starts.
    world.jobs = [dataclasses.replace(world.jobs[0], deleting=True)]
    assert batch_patch(cluster_step(world), "b1") == {}
    world.jobs = []
    world.now += dt.timedelta(seconds=30)
    p = cluster_step(world)
    assert [(a.batch, a.attempt) for a in p.of(CreateWorkload)] == [("b1", 2)]
    assert batch_patch(p, "b1")["nextAttemptTime"] is None  # cosmetic 7: cleared once the retry started


def test_the_start_deadline_gives_up_after_the_retries_like_any_transient_failure() -> None:
    world = World(
        make_run(failurePolicy={"startDeadlineSeconds": 60, "maxRetriesPerBatch": 1}),
        [make_batch("b1", status=training(2, job="demo-b1-a2", failures=1))],
        [starting(attempt=2, since=NOW - dt.timedelta(seconds=61), **SECRET_MISSING)],
    )
    patch = batch_patch(cluster_step(world), "b1")
    assert (patch["phase"], patch["reason"]) == ("Failed", "RetriesExhausted")
    assert "StartDeadlineExceeded" in patch["message"] and "hf-token" in patch["message"]


def test_a_job_that_is_started_or_held_by_kueue_has_no_start_deadline() -> None:
    running = job("b1")  # pending_since None: its container started
    held = job("b1", suspended=True)
    for view in (running, held):
        world = World(make_run(), [make_batch("b1", status=training(1, job="demo-b1-a1"))], [view])
        world.now = NOW + dt.timedelta(days=1)
        assert cluster_step(world).of(DeleteWorkload) == []


def test_a_stopped_job_whose_deletion_failed_is_deleted_again_without_a_second_failure() -> None:
    status = {
        "phase": "Queued",
        "attempts": 1,
        "failures": 1,
        "reason": "StartDeadlineExceeded",
        "nextAttemptTime": "2025-03-01T12:00:30Z",
        "job": "demo-b1-a1",
    }
    world = World(
        make_run(failurePolicy={"startDeadlineSeconds": 60}),
        [make_batch("b1", status=status)],
        [starting(since=NOW - dt.timedelta(seconds=100), **SECRET_MISSING)],
    )
    p = cluster_step(world)
    assert [d.name for d in p.of(DeleteWorkload)] == ["demo-b1-a1"]
    assert batch_patch(p, "b1") == {}


# -- 5: a failed batch deleted as advised ------------------------------------------------------------------
def test_deleting_a_recorded_failed_batch_is_reported_as_such_and_the_run_goes_on() -> None:
    failed_status = {
        "phase": "Failed",
        "attempts": 1,
        "reason": "InvalidData",
        "message": "bad line 3",
        "lastTransitionTime": "2025-03-01T11:00:00Z",
    }
    world = World(
        make_run(),
        [make_batch("b1", status=failed_status), make_batch("b2", created=1)],
        [failed("b1", 1, 64)],
    )
    cluster_step(world)
    assert world.run.status.phase == "Halted"
    world.batches = [b for b in world.batches if b.metadata.name != "b1"]  # as the Degraded message advises
    p = cluster_step(world)
    assert events(p, "DeletedBatchNotCompleted") == []
    (removed,) = events(p, "FailedBatchRemoved")
    assert removed.type == "Normal" and "b1" in removed.message and "had failed" in removed.message
    assert [d.name for d in p.of(DeleteWorkload)] == ["demo-b1-a1"]
    # The run recovers at once; the next trainer sets the failed batch's leftovers aside.
    assert [(a.batch, a.abandon_batches) for a in p.of(CreateWorkload)] == [("b2", ("b1",))]
    assert world.run.status.phase == "Training"


def test_a_batch_deleted_while_its_job_trained_is_still_reported_when_the_job_fails() -> None:
    world = World(make_run(status={"currentJob": "demo-gone-a1"}), [], [failed("gone", 1, 75)])
    p = world.plan()
    assert [e.type for e in events(p, "DeletedBatchNotCompleted")] == ["Warning"]
    assert events(p, "FailedBatchRemoved") == []


# -- 7: cosmetics ----------------------------------------------------------------------------------------
def test_losses_in_status_are_rounded() -> None:
    assert round_loss(2.3456789012345) == 2.3457
    assert round_loss(0.000123456789) == 0.00012346
    message = BatchResult(
        batch_id="b1",
        outcome="Succeeded",
        start_step=0,
        end_step=6,
        target_step=6,
        samples=4,
        tokens=40,
        mean_loss=2.3456789012345,
        checkpoint="checkpoints/checkpoint-6",
    ).to_termination_message()
    world = World(
        make_run(progress={"enabled": False}),
        [make_batch("b1", status=training(1, job="demo-b1-a1"))],
        [job("b1", 1, "Succeeded", exit_code=0, termination_message=message)],
    )
    p = world.plan()
    assert batch_patch(p, "b1")["meanLoss"] == 2.3457
    assert run_patch(p)["lastLoss"] == 2.3457


def test_a_batch_of_a_suspended_run_does_not_show_training() -> None:
    world = World(make_run(), [make_batch("b1")], [])
    world.step()
    world.run = with_spec(world.run, suspend=True)
    world.step()  # its Job is stopped (foreground): it checkpoints
    status = world.batch("b1").status
    assert world.jobs[0].deleting
    world.step()
    status = world.batch("b1").status
    assert (status.phase, status.reason) == ("Queued", "Suspended")
    assert "spec.suspend" in (status.message or "")
    world.jobs = []
    world.run = with_spec(world.run, suspend=False)
    p = world.step()
    assert [(a.batch, a.attempt) for a in p.of(CreateWorkload)] == [("b1", 1)]  # the same attempt resumes
    assert world.batch("b1").status.phase == "Training"


def test_a_pod_that_starts_after_all_no_longer_shows_the_problem() -> None:
    status = training(1, job="demo-b1-a1", reason="CreateContainerConfigError", message="secret missing")
    world = World(make_run(), [make_batch("b1", status=status)], [job("b1")])  # its container runs now
    patch = batch_patch(cluster_step(world), "b1")
    assert patch["reason"] == "Started" and "its pod started" in patch["message"]
    assert world.run.status.phase == "Training"


# -- what the views read from a Job's pod ------------------------------------------------------------------
def raw_job(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "demo-b1-a1",
            "uid": "job-uid",
            "labels": {"continual.dev/batch": "b1", "continual.dev/attempt": "1"},
            "creationTimestamp": "2025-03-01T11:00:00Z",
        },
        "spec": {},
        "status": status,
    }


def raw_pod(*, trainer: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None) -> dict:
    return {
        "metadata": {
            "name": "demo-b1-a1-x",
            "creationTimestamp": "2025-03-01T11:00:05Z",
            "ownerReferences": [{"kind": "Job", "uid": "job-uid"}],
        },
        "status": {
            "phase": "Pending",
            "conditions": conditions or [],
            "containerStatuses": [{"name": "trainer", **trainer}] if trainer else [],
        },
    }


SINCE_POD = dt.datetime(2025, 3, 1, 11, 0, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("pods", "reason", "message", "since"),
    [
        pytest.param(
            [
                raw_pod(
                    trainer={
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": 'secret "t" not found',
                            }
                        }
                    }
                )
            ],
            "CreateContainerConfigError",
            'secret "t" not found',
            SINCE_POD,
            id="missing-secret",
        ),
        pytest.param(
            [
                raw_pod(
                    conditions=[
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                        }
                    ]
                )
            ],
            "Unschedulable",
            "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            SINCE_POD,
            id="unschedulable",
        ),
        pytest.param(
            [raw_pod(trainer={"state": {"waiting": {"reason": "ContainerCreating"}}})],
            "ContainerCreating",
            None,
            SINCE_POD,
            id="normal-start",
        ),
        pytest.param(
            [raw_pod(trainer={"state": {"running": {"startedAt": "2025-03-01T11:00:09Z"}}})],
            None,
            None,
            None,
            id="started",
        ),
        pytest.param([], None, None, dt.datetime(2025, 3, 1, 11, 0, 0, tzinfo=dt.UTC), id="no-pod-yet"),
    ],
)
def test_the_view_says_why_a_pod_waits_and_since_when(pods, reason, message, since) -> None:
    (view,) = job_views([raw_job()], pods)
    assert (view.waiting_reason, view.waiting_message, view.pending_since) == (reason, message, since)
    assert view.cannot_start == (reason in {"CreateContainerConfigError", "Unschedulable"})


def test_a_stuck_job_of_a_deleted_batch_is_stopped_at_the_deadline_and_a_suspend_counts_no_failure() -> None:
    stuck = starting("gone", since=NOW - dt.timedelta(seconds=700), **SECRET_MISSING)
    p = cluster_step(World(make_run(), [make_batch("b2")], [stuck]))
    assert [(d.name, d.reason) for d in p.of(DeleteWorkload)] == [("demo-gone-a1", "StartDeadlineExceeded")]
    world = World(
        make_run(suspend=True),
        [make_batch("b1", status=training(1, job="demo-b1-a1"))],
        [starting(since=NOW - dt.timedelta(seconds=700), **SECRET_MISSING)],
    )
    p = cluster_step(world)
    assert [(d.name, d.reason) for d in p.of(DeleteWorkload)] == [("demo-b1-a1", "Suspended")]
    assert world.batch("b1").status.failures is None


def test_the_trainers_progress_patch_rounds_its_loss_like_the_operator() -> None:
    event = ProgressEvent(
        kind="progress",
        run="r",
        batch_id="b1",
        global_step=9,
        batch_start_step=6,
        batch_target_step=12,
        loss=2.3456789012,
        time="2026-01-01T00:00:00Z",
    )
    assert status_patch(event)["status"]["lastLoss"] == round_loss(2.3456789012) == 2.3457
