"""The planner's decisions, as tables of cases (see the decisions in continual_operator.planning.planner)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys

import pytest
from operator_testkit import (
    NOW,
    RUN,
    World,
    done,
    failed,
    job,
    make_batch,
    make_run,
    result,
    succeeded,
    training,
)
from pydantic import ValidationError

from continual_operator.api import (
    ContinualTrainingRunSpec,
    ContinualTrainingRunStatus,
    ObjectMeta,
    TrainingBatchStatus,
)
from continual_operator.naming import job_name
from continual_operator.planning.actions import (
    CreateWorkload,
    DeleteWorkload,
    EmitEvent,
    Plan,
    RequeueAfter,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.planner import FINISHED_JOBS_KEPT, plan
from continual_operator.planning.status import plan_invalid_batch, plan_invalid_spec


def batch_patch(p: Plan, name: str) -> dict:
    patches = [a.patch for a in p.of(UpdateBatchStatus) if a.batch == name]
    assert len(patches) <= 1
    return dict(patches[0]) if patches else {}


def run_patch(p: Plan) -> dict:
    patches = p.of(UpdateRunStatus)
    return dict(patches[0].patch) if patches else {}


def condition(world_or_patch: dict, type_: str) -> dict:
    return next(c for c in world_or_patch["conditions"] if c["type"] == type_)


def created(p: Plan) -> list[tuple[str, int]]:
    return [(a.batch, a.attempt) for a in p.of(CreateWorkload)]


# -- decision 1: order ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        pytest.param([("b", None, 0), ("a", None, 1)], ["b", "a"], id="creation-time-first"),
        pytest.param([("b", None, 0), ("a", None, 0)], ["a", "b"], id="then-name"),
        pytest.param([("x", None, 0), ("y", 2, 5), ("z", 1, 9)], ["z", "y", "x"], id="explicit-order-first"),
        pytest.param([("p", -1, 3), ("q", 0, 1)], ["p", "q"], id="negative-order"),
        pytest.param([("m", 1, 5), ("n", 1, 2)], ["n", "m"], id="equal-order-then-time"),
    ],
)
def test_batches_train_in_order(batches: list[tuple[str, int | None, int]], expected: list[str]) -> None:
    world = World(make_run(), [make_batch(n, order=o, created=c) for n, o, c in batches], [])
    started = []
    for _ in expected:
        p = world.step()
        started += [b for b, _ in created(p)]
        world.later(60)
        world.finish_active()
    world.step()
    assert started == expected
    steps = [(world.batch(n).status.start_step, world.batch(n).status.end_step) for n in expected]
    assert steps == [(10 * i, 10 * (i + 1)) for i in range(len(expected))]  # contiguous
    assert world.run.status.phase == "Idle"
    assert world.run.status.batches_completed == len(expected)


def test_late_batch_with_small_order_trains_next() -> None:
    world = World(make_run(), [make_batch("b1", created=0), make_batch("b2", created=1)], [])
    world.step()
    world.batches.append(make_batch("urgent", order=0, created=5))
    world.finish_active()
    assert created(world.step()) == [("urgent", 1)]


def test_other_runs_batches_are_ignored() -> None:
    world = World(make_run(), [make_batch("theirs", run="other"), make_batch("mine", created=1)], [])
    assert created(world.plan()) == [("mine", 1)]


# -- decision 2: one writer ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("writer", "phase"),
    [
        pytest.param(job("b1"), "Training", id="running"),
        pytest.param(job("b1", suspended=True), "Pending", id="kueue-suspended"),
        pytest.param(job("b1", deleting=True), "Training", id="deleting-pod-still-running"),
        pytest.param(job("gone"), "Training", id="orphan-of-deleted-batch"),
    ],
)
def test_no_second_job_while_one_may_write(writer, phase: str) -> None:
    status = training(1, job=writer.name) if writer.batch == "b1" else {}
    world = World(make_run(), [make_batch("b1", status=status), make_batch("b2", created=1)], [writer])
    p = world.plan()
    assert p.of(CreateWorkload) == []
    assert run_patch(p)["phase"] == phase
    assert run_patch(p)["currentJob"] == writer.name


def test_next_batch_starts_once_the_writer_finished() -> None:
    world = World(
        make_run(),
        [make_batch("b1", status=training(1)), make_batch("b2", created=1)],
        [succeeded("b1", 1, 0, 10)],
    )
    assert created(world.plan()) == [("b2", 1)]


# -- decision 3: deterministic names and idempotency -----------------------------------------------------
def test_the_same_inputs_give_the_same_plan() -> None:
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [failed("b1", 1, 75)])
    world.batches[0] = make_batch("b1", status=training(1))
    assert world.plan() == world.plan()


@pytest.mark.parametrize(
    "jobs_after",
    [
        pytest.param(list, id="fresh-run"),
        pytest.param(lambda: [failed("b1", 1, 85)], id="after-preemption"),
        pytest.param(lambda: [succeeded("b1", 1, 0, 10)], id="after-success"),
    ],
)
def test_a_plan_applied_twice_creates_nothing_more(jobs_after) -> None:
    status = training(1, job=job_name(RUN, "b1", 1)) if jobs_after() else {}
    world = World(make_run(), [make_batch("b1", status=status), make_batch("b2", created=1)], jobs_after())
    first = world.step()
    assert len(first.of(CreateWorkload)) == 1
    second = world.plan()
    assert second.of(CreateWorkload) == []
    assert second.of(UpdateBatchStatus) == []
    assert second.of(UpdateRunStatus) == []
    assert second.of(EmitEvent) == []


def test_job_names_are_deterministic_dns_labels() -> None:
    world = World(make_run(), [make_batch("b1")], [])
    (create,) = world.plan().of(CreateWorkload)
    assert create.job_name == job_name(RUN, "b1", 1) == "demo-b1-a1"


def test_batch_marked_training_without_its_job_recreates_the_same_attempt() -> None:
    # The operator died after marking the batch and before creating the Job (or the Job was deleted).
    world = World(make_run(), [make_batch("b1", status=training(2, job="demo-b1-a2", failures=1))], [])
    p = world.plan()
    assert created(p) == [("b1", 2)]
    assert "phase" not in batch_patch(p, "b1")
    assert "attempts" not in batch_patch(p, "b1")


def test_job_without_status_is_adopted_not_duplicated() -> None:
    # The operator died after creating the Job and before marking the batch.
    world = World(make_run(), [make_batch("b1")], [job("b1", 1)])
    p = world.plan()
    assert p.of(CreateWorkload) == []
    assert batch_patch(p, "b1")["phase"] == "Training"
    assert batch_patch(p, "b1")["attempts"] == 1
    assert batch_patch(p, "b1")["job"] == "demo-b1-a1"


def test_finished_job_without_status_is_recorded() -> None:
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [succeeded("b1", 1, 0, 10)])
    p = world.plan()
    assert batch_patch(p, "b1")["phase"] == "Succeeded"
    assert created(p) == [("b2", 1)]


def test_taken_job_name_waits_instead_of_failing() -> None:
    # A re-created TrainingBatch whose old Job (same name) is still being deleted.
    old = dataclasses.replace(job("b1", 1), deleting=True, phase="Failed")
    world = World(make_run(), [make_batch("b1")], [old])
    world.batches = [make_batch("b1", status={"phase": "Queued", "attempts": 0})]
    p = world.plan()
    assert p.of(CreateWorkload) == []
    assert p.requeue_after == 5.0


# -- decision 6: retries, back-off, preemption ----------------------------------------------------------
@pytest.mark.parametrize(
    ("previous_failures", "finished", "phase", "failures", "retry_in", "reason"),
    [
        pytest.param(0, failed("b1", 1, 75), "Queued", 1, 30, "TransientError", id="transient-first"),
        pytest.param(1, failed("b1", 1, 1), "Queued", 2, 60, "UnexpectedError", id="unclassified-second"),
        pytest.param(2, failed("b1", 1, 2), "Queued", 3, 120, "ExitCode2", id="other-exit-third"),
        pytest.param(0, failed("b1", 1, 137, pod_reason="OOMKilled"), "Queued", 1, 30, "OOMKilled", id="oom"),
        pytest.param(0, failed("b1", 1, None), "Queued", 1, 30, "NoExitCode", id="no-exit-code"),
        pytest.param(
            0,
            job("b1", 1, "Succeeded", exit_code=0, termination_message="done"),
            "Queued",
            1,
            30,
            "NoResult",
            id="exit-0-without-result",
        ),
        pytest.param(3, failed("b1", 1, 75), "Failed", 4, None, "RetriesExhausted", id="retries-exhausted"),
        pytest.param(0, failed("b1", 1, 64), "Failed", 1, None, "PermanentFailure", id="permanent"),
    ],
)
def test_failures(previous_failures, finished, phase, failures, retry_in, reason) -> None:
    status = training(1, job=finished.name, failures=previous_failures)
    world = World(make_run(), [make_batch("b1", status=status)], [finished])
    p = world.plan()
    patch = batch_patch(p, "b1")
    assert patch["phase"] == phase
    assert patch["failures"] == failures
    assert patch.get("reason") == reason
    if retry_in is None:
        assert patch.get("nextAttemptTime") is None
    else:
        assert patch["nextAttemptTime"] == (NOW + dt.timedelta(seconds=retry_in)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        assert p.requeue_after == retry_in
        assert p.of(CreateWorkload) == []
        assert run_patch(p)["phase"] == "Pending"
        assert condition(run_patch(p), "Training")["reason"] == "BackingOff"
    assert any(e.type == "Warning" for e in p.of(EmitEvent))


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 30), (2, 60), (3, 120), (5, 480), (6, 900), (20, 900)],
)
def test_backoff_doubles_up_to_the_cap(failures: int, expected: int) -> None:
    status = training(1, job="demo-b1-a1", failures=failures - 1)
    world = World(
        make_run(failurePolicy={"maxRetriesPerBatch": 50, "backoffSeconds": 30, "maxBackoffSeconds": 900}),
        [make_batch("b1", status=status)],
        [failed("b1", 1, 75)],
    )
    assert world.plan().requeue_after == expected


def test_retry_starts_the_next_attempt_after_the_backoff() -> None:
    world = World(make_run(), [make_batch("b1", status=training(1, job="demo-b1-a1"))], [failed("b1", 1, 75)])
    world.step()
    world.later(29)
    assert world.plan().of(CreateWorkload) == []
    world.later(1)
    p = world.step()
    assert created(p) == [("b1", 2)]
    assert world.batch("b1").status.attempts == 2
    assert world.batch("b1").status.failures == 1


def test_the_back_off_is_never_cut_short_by_the_whole_second_timestamps() -> None:
    # nextAttemptTime has whole seconds: a failure recorded at .6 s retries at the next whole second
    # after the back-off, never at the one before it (which a reconcile in between would act on).
    world = World(make_run(), [make_batch("b1", status=training(1, job="demo-b1-a1"))], [failed("b1", 1, 75)])
    world.later(0.6)
    world.step()
    assert world.batch("b1").status.next_attempt_time == "2025-03-01T12:00:31Z"
    world.later(29.9)  # 12:00:30.5: the back-off (30 s) is not over
    assert world.plan().of(CreateWorkload) == []
    world.later(0.5)
    assert created(world.step()) == [("b1", 2)]


def test_the_retry_leads_the_message_however_long_the_failure() -> None:
    # A crash leaves no result record: the outcome's message is then up to 1 KB of log tail, and Event
    # messages are cut at 1 KB, so when the retry happens must come first.
    log_tail = "x" * 5000
    crashed = failed("b1", 1, 137, termination_message=log_tail)
    p = World(make_run(), [make_batch("b1", status=training(1, job="demo-b1-a1"))], [crashed]).plan()
    (retrying,) = [e for e in p.of(EmitEvent) if e.reason == "Retrying"]
    assert retrying.message[:1024].startswith(
        "attempt 1 failed (ExitCode137); retry 1 of 3 at 2025-03-01T12:00:30Z:"
    )


@pytest.mark.parametrize(
    "preempted",
    [
        pytest.param(failed("b1", 1, 85), id="trainer-exit-85"),
        pytest.param(failed("b1", 1, None, pod_reason="Evicted"), id="evicted"),
        pytest.param(failed("b1", 1, None, pod_reason="Preempted"), id="preempted"),
        pytest.param(failed("b1", 1, 143, disruption_target=True), id="sigterm-with-disruption-target"),
        pytest.param(failed("b1", 1, 137, suspended=True), id="kueue-suspended"),
    ],
)
def test_preemption_retries_at_once_and_is_not_a_failure(preempted) -> None:
    status = training(1, job=preempted.name, failures=2)
    world = World(make_run(), [make_batch("b1", status=status)], [preempted])
    p = world.plan()
    patch = batch_patch(p, "b1")
    assert patch["preemptions"] == 1
    assert "failures" not in patch  # unchanged
    assert patch["attempts"] == 2  # the next attempt was started in the same plan
    assert created(p) == [("b1", 2)]
    assert p.requeue_after is None


def test_permanent_exit_wins_over_disruption() -> None:
    world = World(
        make_run(), [make_batch("b1", status=training(1))], [failed("b1", 1, 64, disruption_target=True)]
    )
    assert batch_patch(world.plan(), "b1")["phase"] == "Failed"


# -- decision 7: halt vs skip ---------------------------------------------------------------------------
def permanent(batch: str = "b1") -> object:
    message = (
        '{"batchId":"b1","outcome":"Failed","exitCode":64,"reason":"InvalidData","message":"bad line 3"}'
    )
    return failed(batch, 1, 64, termination_message=message)


@pytest.mark.parametrize(
    ("policy", "next_created", "phase", "degraded"),
    [
        pytest.param("Halt", [], "Halted", "True", id="halt"),
        pytest.param("SkipBatch", [("b2", 1)], "Training", "False", id="skip"),
    ],
)
def test_permanent_failure_follows_the_policy(policy, next_created, phase, degraded) -> None:
    world = World(
        make_run(failurePolicy={"onPermanentFailure": policy}),
        [make_batch("b1", status=training(1)), make_batch("b2", created=1)],
        [permanent()],
    )
    p = world.plan()
    assert batch_patch(p, "b1")["phase"] == "Failed"
    assert batch_patch(p, "b1")["reason"] == "InvalidData"
    assert "bad line 3" in batch_patch(p, "b1")["message"]
    assert created(p) == next_created
    assert run_patch(p)["phase"] == phase
    assert condition(run_patch(p), "Degraded")["status"] == degraded
    assert run_patch(p)["batchesFailed"] == 1
    if policy == "Halt":
        assert "InvalidData" in condition(run_patch(p), "Degraded")["message"]
        assert condition(run_patch(p), "Ready")["status"] == "False"
        assert any(e.reason == "Halted" and e.type == "Warning" for e in p.of(EmitEvent))


@pytest.mark.parametrize(
    ("change", "halted"),
    [
        pytest.param("none", True, id="stays-halted"),
        pytest.param("delete-failed-batch", False, id="lifted-by-deleting-the-batch"),
        pytest.param("switch-to-skip", False, id="lifted-by-policy"),
    ],
)
def test_lifting_a_halt(change: str, halted: bool) -> None:
    failed_status = {
        "phase": "Failed",
        "reason": "InvalidData",
        "attempts": 1,
        "lastTransitionTime": "2025-03-01T11:00:00Z",
    }
    batches = [make_batch("b1", status=failed_status), make_batch("b2", created=1)]
    run = make_run(
        failurePolicy={"onPermanentFailure": "SkipBatch" if change == "switch-to-skip" else "Halt"}
    )
    if change == "delete-failed-batch":
        batches = batches[1:]
    p = World(run, batches, []).plan()
    assert (created(p) == []) is halted


@pytest.mark.parametrize(
    ("failed_at", "succeeded_at", "halted"),
    [
        pytest.param("2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z", False, id="success-after-failure"),
        pytest.param("2025-03-01T11:00:00Z", "2025-03-01T10:00:00Z", True, id="failure-after-success"),
        pytest.param("2025-03-01T11:00:00Z", "2025-03-01T11:00:00Z", True, id="tie-is-halting"),
    ],
)
def test_an_old_failure_halts_only_if_nothing_succeeded_after_it(failed_at, succeeded_at, halted) -> None:
    batches = [
        make_batch(
            "b1", status={"phase": "Failed", "reason": "InvalidData", "lastTransitionTime": failed_at}
        ),
        make_batch("b2", created=1, status=done(0, 10, when=succeeded_at)),
        make_batch("b3", created=2),
    ]
    p = World(make_run(), batches, []).plan()
    assert (created(p) == []) is halted


# -- decision 5: contiguity -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("history", "completed_step", "start", "end", "outcome", "ok"),
    [
        pytest.param([], None, 0, 10, "Succeeded", True, id="first-batch-at-0"),
        pytest.param([], None, 500, 510, "Succeeded", True, id="first-batch-on-a-retained-volume"),
        pytest.param([(0, 10)], None, 10, 20, "Succeeded", True, id="contiguous"),
        pytest.param([(0, 10)], None, 15, 25, "Succeeded", False, id="gap"),
        pytest.param([(0, 10)], None, 5, 15, "Succeeded", False, id="backwards"),
        pytest.param([(0, 10)], None, 10, 9, "Succeeded", False, id="ends-before-it-starts"),
        pytest.param([], 100, 100, 110, "Succeeded", True, id="anchored-by-run-status-after-batches-deleted"),
        pytest.param([], 100, 0, 10, "Succeeded", False, id="backwards-from-run-status"),
        pytest.param(
            [(0, 10), (10, 20)], None, 0, 10, "AlreadyCompleted", True, id="already-completed-history"
        ),
        pytest.param([(0, 10)], None, 0, 10, "Succeeded", False, id="a-rerun-that-claims-to-train"),
    ],
)
def test_step_contiguity(history, completed_step, start, end, outcome, ok) -> None:
    batches = [make_batch(f"h{i}", created=i, status=done(s, e)) for i, (s, e) in enumerate(history)]
    batches += [make_batch("new", created=10, status=training(1)), make_batch("next", created=11)]
    status = {"completedStep": completed_step} if completed_step is not None else {}
    world = World(
        make_run(status=status, failurePolicy={"onPermanentFailure": "SkipBatch"}),
        batches,
        [succeeded("new", 1, start, end, outcome)],
    )
    p = world.plan()
    patch = batch_patch(p, "new")
    assert patch["startStep"] == start
    assert patch["endStep"] == end
    if ok:
        assert patch["phase"] == "Succeeded"
        assert created(p) == [("next", 1)]
    else:
        # Halted whatever the policy (SkipBatch here): the volume holds unaccounted training.
        assert patch["phase"] == "Failed"
        assert patch["reason"] == "StepsNotContiguous"
        assert created(p) == []
        assert run_patch(p)["phase"] == "Halted"
        assert condition(run_patch(p), "Degraded")["reason"] == "StepsNotContiguous"
        warnings = [e for e in p.of(EmitEvent) if e.type == "Warning"]
        assert {e.reason for e in warnings} >= {"StepsNotContiguous", "Halted"}


def test_completed_step_and_progress_follow_recorded_results() -> None:
    world = World(make_run(), [make_batch("b1", status=training(1))], [succeeded("b1", 1, 0, 42)])
    patch = run_patch(world.plan())
    assert patch["completedStep"] == 42
    assert patch["globalStep"] == 42
    assert patch["latestCheckpoint"] == "checkpoint-42"
    assert "lastLoss" not in patch  # the trainer reports it itself


def test_last_loss_comes_from_results_when_progress_reporting_is_off() -> None:
    world = World(
        make_run(progress={"enabled": False}),
        [make_batch("b1", status=training(1))],
        [succeeded("b1", 1, 0, 42)],
    )
    assert run_patch(world.plan())["lastLoss"] == 2.5


# -- decision 8: suspend --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("jobs", "deleted"),
    [
        pytest.param([job("b1")], ["demo-b1-a1"], id="running-job-checkpoints"),
        pytest.param([job("b1", deleting=True)], [], id="already-stopping"),
        pytest.param([], [], id="nothing-running"),
    ],
)
def test_suspend(jobs, deleted) -> None:
    status = training(1, job="demo-b1-a1") if jobs else {}
    world = World(
        make_run(suspend=True), [make_batch("b1", status=status), make_batch("b2", created=1)], jobs
    )
    p = world.plan()
    assert p.of(CreateWorkload) == []
    deletes = p.of(DeleteWorkload)
    assert [d.name for d in deletes] == deleted
    assert all(d.propagation == "Foreground" and d.reason == "Suspended" for d in deletes)
    patch = run_patch(p)
    assert patch["phase"] == "Suspended"
    assert condition(patch, "Suspended")["status"] == "True"
    assert condition(patch, "Training")["status"] == "False"


def test_resume_after_suspend_continues_the_same_attempt() -> None:
    world = World(make_run(suspend=True), [make_batch("b1")], [])
    world.step()  # suspended before anything started
    world.run = world.run.model_copy(update={"spec": world.run.spec.model_copy(update={"suspend": False})})
    p = world.step()
    assert created(p) == [("b1", 1)]
    assert any(e.reason == "Resumed" for e in p.of(EmitEvent))
    # Suspended mid-batch: the Job is stopped (foreground), goes away, and the same attempt resumes.
    world.run = world.run.model_copy(update={"spec": world.run.spec.model_copy(update={"suspend": True})})
    world.step()
    assert world.jobs[0].deleting
    world.jobs = []  # the pod checkpointed and the Job is gone
    world.step()
    world.run = world.run.model_copy(update={"spec": world.run.spec.model_copy(update={"suspend": False})})
    assert created(world.step()) == [("b1", 1)]
    assert world.batch("b1").status.preemptions is None


# -- decisions 9, 10: deleted batches, history ---------------------------------------------------------
def test_job_of_a_deleted_batch_finishes_and_moves_the_completed_step() -> None:
    world = World(make_run(status={"completedStep": 10}), [make_batch("b3", created=3)], [job("gone")])
    assert world.plan().of(CreateWorkload) == []  # it may still write: let it finish
    world.jobs = [succeeded("gone", 1, 10, 20)]
    p = world.step()
    assert [(d.name, d.reason) for d in p.of(DeleteWorkload)] == [("demo-gone-a1", "BatchDeleted")]
    assert run_patch(p)["completedStep"] == 20
    assert any(e.reason == "DeletedBatchCompleted" for e in p.of(EmitEvent))
    assert created(p) == [("b3", 1)]


def test_failed_job_of_a_deleted_batch_is_reported() -> None:
    # The Job the run was waiting for (its currentJob): the batch was deleted while it trained.
    world = World(make_run(status={"currentJob": "demo-gone-a1"}), [], [failed("gone", 1, 75)])
    p = world.plan()
    assert any(e.reason == "DeletedBatchNotCompleted" and "re-create" in e.message for e in p.of(EmitEvent))
    assert [d.name for d in p.of(DeleteWorkload)] == ["demo-gone-a1"]


def test_recorded_jobs_beyond_the_history_are_deleted() -> None:
    names = [f"b{i}" for i in range(5)]
    batches = [make_batch(n, created=i, status=done(10 * i, 10 * i + 10)) for i, n in enumerate(names)]
    jobs = [
        dataclasses.replace(succeeded(n, 1, 0, 1), created=NOW - dt.timedelta(hours=5 - i))
        for i, n in enumerate(names)
    ]
    p = World(make_run(), batches, jobs).plan()
    deleted = [d.name for d in p.of(DeleteWorkload)]
    assert deleted == [job_name(RUN, n, 1) for n in names[: 5 - FINISHED_JOBS_KEPT]][::-1]
    assert all(d.propagation == "Background" for d in p.of(DeleteWorkload))


# -- decision 11: status --------------------------------------------------------------------------------
def test_run_status_counts_and_conditions() -> None:
    batches = [
        make_batch("a", created=0, status=done(0, 10)),
        make_batch("b", created=1, status={"phase": "Failed", "reason": "InvalidData"}),
        make_batch("c", created=2, status=training(1, job="demo-c-a1")),
        make_batch("d", created=3),
        make_batch("e", created=4, status={"phase": "Queued", "attempts": 1}),
    ]
    world = World(
        make_run(failurePolicy={"onPermanentFailure": "SkipBatch"}, generation=7), batches, [job("c")]
    )
    patch = run_patch(world.plan())
    assert (patch["batchesCompleted"], patch["batchesFailed"], patch["batchesQueued"]) == (1, 1, 2)
    assert patch["observedGeneration"] == 7
    assert {c["type"]: c["status"] for c in patch["conditions"]} == {
        "Ready": "True",
        "Training": "True",
        "Degraded": "False",
        "Suspended": "False",
    }
    assert all(c["observedGeneration"] == 7 for c in patch["conditions"])


@pytest.mark.parametrize(
    ("spec", "batch_status"),
    [
        pytest.param({}, None, id="healthy"),
        pytest.param({"suspend": True}, None, id="suspended"),
        pytest.param({}, {"phase": "Failed", "reason": "InvalidData", "message": "bad line 3"}, id="halted"),
    ],
)
def test_every_condition_has_a_message(spec: dict, batch_status: dict | None) -> None:
    # The 1.20 API server (the e2e tier's) reads "" inside a status list item as null and refuses the
    # whole status patch ("must be of type string"): no condition may be written with an empty message.
    patch = run_patch(plan(make_run(**spec), [make_batch("b1", status=batch_status)], [], now=NOW))
    assert {c["type"] for c in patch["conditions"]} == {"Ready", "Training", "Degraded", "Suspended"}
    assert all(c["message"] for c in patch["conditions"]), patch["conditions"]


def test_condition_transition_time_moves_only_with_its_status() -> None:
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [])
    world.step()
    first = {c.type: c.last_transition_time for c in world.run.status.conditions}
    world.later(3600)
    world.finish_active()
    world.step()  # b2 starts: Training stays True, its message changes
    after = {c.type: c.last_transition_time for c in world.run.status.conditions}
    assert after == first
    training_condition = next(c for c in world.run.status.conditions if c.type == "Training")
    assert "b2" in training_condition.message


def test_no_status_patch_when_nothing_changed() -> None:
    world = World(make_run(), [make_batch("b1")], [])
    world.step()
    assert world.plan() == Plan()


def test_deleted_run_plans_nothing() -> None:
    assert plan(make_run(deleting=True), [make_batch("b1")], [], now=NOW) == Plan()


def test_deleting_batch_is_not_started() -> None:
    world = World(make_run(), [make_batch("b1", deleting=True), make_batch("b2", created=1)], [])
    assert created(world.plan()) == [("b2", 1)]


def test_kueue_run_is_pending_until_admitted() -> None:
    world = World(make_run(scheduling={"kueueQueueName": "team"}), [make_batch("b1")], [])
    p = world.step()
    assert run_patch(p)["phase"] == "Pending"
    assert condition(run_patch(p), "Training")["reason"] == "AwaitingAdmission"


# -- invalid specs (the handler's case) ---------------------------------------------------------------------
def test_invalid_spec_becomes_degraded_naming_the_field() -> None:
    body = {
        "baseModel": {"path": "m"},
        "storage": {"existingClaim": "c"},
        "training": {"lrSchedule": {"type": "cosine"}},
    }
    with pytest.raises(ValidationError) as caught:
        ContinualTrainingRunSpec.model_validate(body)
    meta = ObjectMeta(name=RUN, generation=3)
    p = plan_invalid_spec(meta, ContinualTrainingRunStatus(), caught.value, now=NOW)
    patch = run_patch(p)
    assert patch["phase"] == "Failed"
    degraded = condition(patch, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "InvalidSpec"
    assert "spec.training.lrSchedule.type" in degraded["message"]
    assert "cosine" in degraded["message"]
    (event,) = p.of(EmitEvent)
    assert event.type == "Warning"
    assert "spec.training.lrSchedule.type" in event.message
    # Applied, the same error plans nothing more: no event storm.
    status = ContinualTrainingRunStatus.model_validate(patch)
    assert plan_invalid_spec(meta, status, caught.value, now=NOW) == Plan()


def test_requeue_is_the_only_action_while_waiting() -> None:
    status = {"phase": "Queued", "attempts": 1, "failures": 1, "nextAttemptTime": "2025-03-01T12:00:30Z"}
    world = World(make_run(), [make_batch("b1", status=status)], [])
    world.step()
    assert world.plan().actions == (RequeueAfter(30.0),)


def test_invalid_batch_is_failed_once() -> None:
    meta = ObjectMeta(name="b1", generation=1)
    p = plan_invalid_batch(meta, TrainingBatchStatus(), "spec.data.path: field required", now=NOW)
    (update,) = p.of(UpdateBatchStatus)
    assert (update.patch["phase"], update.patch["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.data.path" in p.of(EmitEvent)[0].message
    applied = TrainingBatchStatus.model_validate(update.patch)
    assert plan_invalid_batch(meta, applied, "spec.data.path: field required", now=NOW) == Plan()


def test_the_pure_layer_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    code = (
        "import sys\n"
        "import continual_operator.planning.planner, continual_operator.workloads.resources, continual_operator.api.crdgen\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes', 'torch', 'transformers'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_skip_batch_tells_the_trainer_which_batches_to_abandon() -> None:
    batches = [
        make_batch("a", created=0, status=done(0, 6)),
        make_batch("b", created=1, status={"phase": "Failed", "attempts": 4, "reason": "RetriesExhausted"}),
        make_batch("c", created=2),
    ]
    world = World(
        make_run(status={"completedStep": 6}, failurePolicy={"onPermanentFailure": "SkipBatch"}), batches, []
    )
    (create,) = world.plan().of(CreateWorkload)
    assert (create.batch, create.abandon_batches) == ("c", ("b",))


def test_a_rebuilt_start_checkpoint_is_reported_with_an_event() -> None:
    rebuilt = (
        "checkpoint-6 (the end of batch 'h0') was not valid (missing optimizer.pt); rebuilt it bit for bit"
    )
    message = result("new", 6, 12, rebuilt=rebuilt)
    finished = job("new", 1, "Succeeded", exit_code=0, termination_message=message)
    world = World(
        make_run(),
        [make_batch("h0", created=0, status=done(0, 6)), make_batch("new", created=1, status=training(1))],
        [finished],
    )
    p = world.plan()
    assert batch_patch(p, "new")["phase"] == "Succeeded"
    (event,) = [e for e in p.of(EmitEvent) if e.reason == "CheckpointRebuilt"]
    assert (event.type, event.message) == ("Warning", rebuilt)
    plain = World(
        make_run(),
        [make_batch("h0", created=0, status=done(0, 6)), make_batch("new", created=1, status=training(1))],
        [succeeded("new", 1, 6, 12)],
    ).plan()
    assert not [e for e in plain.of(EmitEvent) if e.reason == "CheckpointRebuilt"]


# -- Events: one per batch, at its end ------------------------------------------------------------------
def test_a_batch_gets_one_normal_event_at_its_end_naming_its_job_attempt_and_duration() -> None:
    world = World(make_run(), [make_batch("b1"), make_batch("b2", created=1)], [])
    started = world.plan()
    assert created(started) == [("b1", 1)]
    assert started.of(EmitEvent) == [], "a start posts no Event: the status says Training"
    status = training(2, job=job_name(RUN, "b1", 2), lastTransitionTime="2025-03-01T11:59:18Z")
    world = World(make_run(), [make_batch("b1", status=status)], [succeeded("b1", 2, 0, 10)])
    (event,) = world.plan().of(EmitEvent)
    assert (event.type, event.reason, event.name) == ("Normal", "Succeeded", "b1")
    assert event.message.startswith("trained steps 0..10")
    assert f"Job {job_name(RUN, 'b1', 2)}, attempt 2, 42 s after it started" in event.message


def test_a_batch_started_at_once_gets_one_status_patch_and_only_a_waiting_one_says_queued() -> None:
    run = make_run(training={"maxBatchesPerJob": 1})  # b2 is not coalesced: it waits
    world = World(run, [make_batch("b1"), make_batch("b2", created=1)], [])
    p = world.plan()
    patches = [(u.batch, u.patch["phase"]) for u in p.of(UpdateBatchStatus)]
    assert patches == [("b1", "Training"), ("b2", "Queued")], "no separate Queued patch for b1"
