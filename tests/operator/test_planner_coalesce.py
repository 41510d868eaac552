"""Coalesced batches in the planner: one Job for several queued batches, each batch's own outcome from it.

Pure tables of cases over the planner (``operator_testkit.World``): which batches a Job takes, how its
``JobResult`` (or an older trainer's single ``BatchResult``) becomes each batch's status, and that
``maxBatchesPerJob: 1`` is the one-Job-per-batch behaviour exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import yaml
from operator_testkit import NOW, RUN, World, job, make_batch, make_run, result
from test_planner import batch_patch

from continual_operator.naming import ANNOTATION_NEXT_BATCHES, job_name
from continual_operator.planning.actions import CreateWorkload, EmitEvent, Plan
from continual_operator.planning.draft import PlanContext
from continual_operator.planning.planner import plan
from continual_operator.workloads import resources
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView
from continual_trainer.exitcodes import ExitCode
from continual_trainer.records import BatchResult, JobResult

STEPS = 10  # steps per batch in these cases


def world(n: int = 3, per_job: int = 4, **spec: Any) -> World:
    run = make_run(training={"maxBatchesPerJob": per_job}, **spec)
    return World(run, [make_batch(f"b{i}", created=i) for i in range(1, n + 1)], [])


def creates(p: Plan) -> list[CreateWorkload]:
    return p.of(CreateWorkload)


def done(batch: str, start: int, **extra: Any) -> BatchResult:
    fields: dict[str, Any] = {
        "batch_id": batch,
        "outcome": "Succeeded",
        "start_step": start,
        "end_step": start + STEPS,
        "target_step": start + STEPS,
        "samples": 40 + start,
        "tokens": 4000 + start,
        "mean_loss": 2.5 - start / 100,
        "checkpoint": f"checkpoints/checkpoint-{start + STEPS}",
        "adapter": f"adapters/step-{start + STEPS}",
    }
    fields.update(extra)
    return BatchResult(**fields)


def finish(w: World, results: list[BatchResult], code: ExitCode = ExitCode.SUCCESS) -> JobView:
    """The one active Job ends with ``results`` as its JobResult (compacted as the trainer writes it)."""
    active = next(j for j in w.jobs if not j.finished)
    message = JobResult(exit_code=int(code), results=results).to_termination_message()
    ended = dataclasses.replace(
        active,
        phase="Succeeded" if code == ExitCode.SUCCESS else "Failed",
        exit_code=int(code),
        termination_message=message,
    )
    w.jobs = [ended if j.name == active.name else j for j in w.jobs]
    return ended


def status(w: World, name: str) -> dict[str, Any]:
    return w.batch(name).status.model_dump(by_alias=True, exclude_none=True)


def test_three_queued_batches_are_trained_by_one_job_in_queue_order() -> None:
    w = world(3)
    p = w.step()
    [create] = creates(p)
    assert (create.batch, create.attempt, create.workload.next_batches) == ("b1", 1, ("b2", "b3"))
    name = job_name(RUN, "b1", 1)
    assert create.job_name == name
    assert create.workload.job["metadata"]["annotations"][ANNOTATION_NEXT_BATCHES] == "b2,b3"
    config = yaml.safe_load(resources.config_in_pod_annotation(create.workload.job) or "")
    assert config["batch"]["id"] == "b1"
    assert [b["id"] for b in config["nextBatches"]] == ["b2", "b3"]
    assert [b["data"]["path"] for b in config["nextBatches"]] == [
        "/data/inbox/b2.jsonl",
        "/data/inbox/b3.jsonl",
    ]
    for b in ("b1", "b2", "b3"):
        assert (status(w, b)["phase"], status(w, b)["job"]) == ("Training", name)
    assert status(w, "b1")["attempts"] == 1
    assert "attempts" not in status(w, "b2")  # counted when the Job reaches it
    # Nothing more starts while it runs, and a re-plan creates nothing new.
    assert creates(w.step()) == []


def test_each_batch_gets_its_own_result_from_the_job() -> None:
    w = world(3)
    w.step()
    finish(w, [done("b1", 0), done("b2", 10), done("b3", 20)])
    p = w.step()
    for i, b in enumerate(("b1", "b2", "b3")):
        s = status(w, b)
        start = 10 * i
        assert s["phase"] == "Succeeded", s
        assert (s["startStep"], s["endStep"], s["targetStep"]) == (start, start + 10, start + 10)
        assert (s["samples"], s["tokens"], s["meanLoss"]) == (40 + start, 4000 + start, 2.5 - start / 100)
        assert s["checkpoint"] == f"checkpoints/checkpoint-{start + 10}"  # derived from the compact message
        assert (s["attempts"], s["job"]) == (1, job_name(RUN, "b1", 1))
    assert w.run.status.completed_step == 30
    assert w.run.status.batches_completed == 3
    assert [e.name for e in p.of(EmitEvent) if e.reason == "Succeeded"] == ["b1", "b2", "b3"]
    assert creates(p) == []


def test_max_batches_per_job_bounds_the_group_and_the_rest_follow_in_the_next_job() -> None:
    w = world(5, per_job=2)
    [first] = creates(w.step())
    assert first.workload.next_batches == ("b2",)
    finish(w, [done("b1", 0), done("b2", 10)])
    [second] = creates(w.step())
    assert (second.batch, second.attempt, second.workload.next_batches) == ("b3", 1, ("b4",))
    assert status(w, "b5")["phase"] == "Queued"


def test_max_batches_per_job_1_is_one_job_per_batch_exactly() -> None:
    coalescing_off = world(3, per_job=1)
    p = coalescing_off.step()
    [create] = creates(p)
    assert create.workload.next_batches == ()
    assert ANNOTATION_NEXT_BATCHES not in create.workload.job["metadata"]["annotations"]
    config = yaml.safe_load(resources.config_in_pod_annotation(create.workload.job) or "")
    assert "nextBatches" not in config
    assert status(coalescing_off, "b2")["phase"] == "Queued"
    # The same plan as a run with a single batch queued makes for that batch (nothing about b2, b3).
    single = World(make_run(training={"maxBatchesPerJob": 1}), [make_batch("b1", created=1)], [])
    assert batch_patch(p, "b1") == batch_patch(single.plan(), "b1")
    assert create.workload.manifests == creates(single.plan())[0].workload.manifests


def test_a_preemption_mid_way_keeps_the_completed_batches_and_resumes_the_one_in_progress() -> None:
    w = world(3)
    w.step()
    stopped = done("b2", 10, outcome="Preempted", end_step=14, exit_code=85, message="SIGTERM at step 14")
    finish(w, [done("b1", 0), stopped], ExitCode.PREEMPTED)
    p = w.step()
    assert status(w, "b1")["phase"] == "Succeeded"
    # Recorded, then (same plan) the next Job: b2's second attempt, with b3 after it.
    [preempted] = [e for e in p.of(EmitEvent) if e.reason == "Preempted"]
    assert preempted.name == "b2" and "at step 14" in preempted.message
    b2 = status(w, "b2")
    assert (b2["phase"], b2["preemptions"], b2["attempts"]) == ("Training", 1, 2)
    assert "failures" not in b2
    b3 = status(w, "b3")
    assert "attempts" not in b3 and "preemptions" not in b3  # untouched: no attempt counted
    [create] = creates(p)
    assert (create.batch, create.attempt, create.workload.next_batches) == ("b2", 2, ("b3",))
    assert b3["job"] == create.job_name
    finish(w, [done("b2", 10, outcome="Succeeded"), done("b3", 20)])
    w.step()
    assert [status(w, b)["phase"] for b in ("b1", "b2", "b3")] == ["Succeeded"] * 3
    assert [(status(w, b)["startStep"], status(w, b)["endStep"]) for b in ("b1", "b2", "b3")] == [
        (0, 10),
        (10, 20),
        (20, 30),
    ]
    assert w.run.status.completed_step == 30


def test_a_failure_mid_way_backs_off_that_batch_and_nothing_overtakes_it() -> None:
    w = world(3)
    w.step()
    broken = BatchResult(
        batch_id="b2", outcome="Failed", exit_code=75, reason="TransientError", message="disk"
    )
    finish(w, [done("b1", 0), broken], ExitCode.TRANSIENT)
    p = w.step()
    assert status(w, "b1")["phase"] == "Succeeded"
    b2 = status(w, "b2")
    assert (b2["phase"], b2["reason"], b2["failures"], b2["attempts"]) == ("Queued", "TransientError", 1, 1)
    assert "nextAttemptTime" in b2
    assert "attempts" not in status(w, "b3") and "failures" not in status(w, "b3")
    assert creates(p) == []  # b2 waits for its back-off, and b3 may not overtake it
    w.later(3600)
    [create] = creates(w.step())
    assert (create.batch, create.attempt, create.workload.next_batches) == ("b2", 2, ("b3",))


def test_a_permanent_failure_mid_way_fails_only_that_batch() -> None:
    w = world(3, failurePolicy={"onPermanentFailure": "SkipBatch"})
    w.step()
    bad = BatchResult(batch_id="b2", outcome="Failed", exit_code=64, reason="BadData", message="line 3")
    finish(w, [done("b1", 0), bad], ExitCode.PERMANENT)
    p = w.step()
    assert [status(w, b)["phase"] for b in ("b1", "b2")] == ["Succeeded", "Failed"]
    assert status(w, "b2")["reason"] == "BadData"
    [create] = creates(p)  # SkipBatch: b3 goes on, abandoning b2
    assert (create.batch, create.attempt, create.abandon_batches) == ("b3", 1, ("b2",))


def test_an_older_trainers_single_result_completes_the_first_batch_only() -> None:
    w = world(3)
    w.step()
    active = w.jobs[0]
    single = result("b1", 0, 10)  # a BatchResult, as a trainer before coalescing writes it
    w.jobs = [dataclasses.replace(active, phase="Succeeded", exit_code=0, termination_message=single)]
    p = w.plan()
    assert batch_patch(p, "b1")["phase"] == "Succeeded"
    w.apply(p)
    assert status(w, "b2")["attempts"] == 1  # untouched by the first Job: its first attempt is the next Job
    assert "attempts" not in status(w, "b3")
    [create] = creates(p)
    assert (create.batch, create.workload.next_batches) == ("b2", ("b3",))


def test_a_crash_without_a_result_is_the_first_batchs_failure() -> None:
    w = world(2)
    w.step()
    active = w.jobs[0]
    w.jobs = [dataclasses.replace(active, phase="Failed", exit_code=137, termination_message="Killed")]
    w.step()
    assert (status(w, "b1")["phase"], status(w, "b1")["failures"]) == ("Queued", 1)
    assert (status(w, "b2")["phase"], status(w, "b2")["reason"]) == ("Queued", "Queued")


def test_a_follower_that_does_not_start_where_the_previous_ended_fails_contiguity() -> None:
    w = world(2)
    w.step()
    finish(w, [done("b1", 0), done("b2", 12)])
    w.step()
    assert status(w, "b2")["phase"] == "Failed"
    assert status(w, "b2")["reason"] == "StepsNotContiguous"


def test_batches_that_are_not_ready_end_the_group() -> None:
    later = (NOW + dt.timedelta(minutes=5)).isoformat()
    waiting = {"phase": "Queued", "attempts": 1, "failures": 1, "nextAttemptTime": later}
    run = make_run(training={"maxBatchesPerJob": 4})
    batches = [
        make_batch("b1", created=1),
        make_batch("b2", created=2, status=waiting),
        make_batch("b3", created=3),
    ]
    [create] = creates(World(run, batches, []).plan())
    assert (create.batch, create.workload.next_batches) == ("b1", ())
    # Finished and deleted batches are passed over, as the queue does.
    batches = [
        make_batch("b1", created=1),
        make_batch("gone", created=2, deleting=True),
        make_batch("b3", created=3),
    ]
    [create] = creates(World(run, batches, []).plan())
    assert create.workload.next_batches == ("b3",)


def test_batches_confined_to_different_folders_are_not_coalesced() -> None:
    run = make_run(training={"maxBatchesPerJob": 4})
    inbox = make_batch("in1", created=2)
    inbox = inbox.model_copy(
        update={
            "spec": inbox.spec.model_copy(
                update={"data": inbox.spec.data.model_copy(update={"path": "/in/x"})}
            )
        }
    )
    batches = [make_batch("b1", created=1), inbox, make_batch("b3", created=3)]
    the_plan = plan(run, batches, [], now=NOW, context=PlanContext(data_roots=("/in",)))
    [create] = creates(the_plan)
    assert create.workload.next_batches == ()


def test_a_running_coalesced_job_is_adopted_by_all_its_batches() -> None:
    w = world(3)
    running = job("b1", next_batches=("b2", "b3"))
    w.jobs = [running]
    p = w.step()
    assert creates(p) == []
    for b in ("b1", "b2", "b3"):
        assert (status(w, b)["phase"], status(w, b)["job"]) == ("Training", running.name)


def test_a_suspend_queues_the_batches_of_a_coalesced_job_and_resume_recreates_it() -> None:
    w = world(3)
    w.step()
    w.run = w.run.model_copy(update={"spec": w.run.spec.model_copy(update={"suspend": True})})
    w.step()  # the Job is deleted (foreground): its pod checkpoints
    w.step()
    assert [status(w, b)["phase"] for b in ("b1", "b2", "b3")] == ["Queued"] * 3
    assert status(w, "b1")["reason"] == "Suspended"
    w.jobs = []  # the pod is gone
    w.run = w.run.model_copy(update={"spec": w.run.spec.model_copy(update={"suspend": False})})
    [create] = creates(w.step())
    assert (create.batch, create.attempt, create.workload.next_batches) == ("b1", 1, ("b2", "b3"))


def test_a_batch_deleted_while_its_coalesced_job_trained_moves_the_completed_step() -> None:
    w = world(3)
    w.step()
    finish(w, [done("b1", 0), done("b2", 10), done("b3", 20)])
    w.batches = [b for b in w.batches if b.metadata.name != "b2"]
    p = w.step()
    assert [status(w, b)["phase"] for b in ("b1", "b3")] == ["Succeeded", "Succeeded"]
    assert w.run.status.completed_step == 30
    assert [e.reason for e in p.of(EmitEvent) if e.kind == "ContinualTrainingRun"].count(
        "DeletedBatchCompleted"
    ) == 1
    assert TRAIN.classify(w.jobs[0]).kind == "Succeeded"


def test_the_first_batch_deleted_while_its_coalesced_job_trained_leaves_the_others_recorded() -> None:
    w = world(3)
    w.step()
    finish(w, [done("b1", 0), done("b2", 10), done("b3", 20)])
    w.batches = [b for b in w.batches if b.metadata.name != "b1"]
    p = w.step()
    # The orphan's success moves the completed step first, so b2 (starting at 10) is contiguous.
    assert [status(w, b)["phase"] for b in ("b2", "b3")] == ["Succeeded", "Succeeded"]
    assert w.run.status.completed_step == 30
    assert "DeletedBatchCompleted" in [e.reason for e in p.of(EmitEvent) if e.kind == "ContinualTrainingRun"]
    assert w.jobs == []  # deleted with its batch, after the others were recorded


def test_a_coalesced_job_that_never_starts_fails_its_first_batch_and_queues_the_others() -> None:
    w = world(2, failurePolicy={"startDeadlineSeconds": 60})
    w.step()
    pending = dataclasses.replace(w.jobs[0], pending_since=NOW - dt.timedelta(seconds=120))
    w.jobs = [pending]
    w.step()  # past the start deadline: the Job is stopped (foreground)
    assert w.jobs[0].deleting
    w.step()
    b1, b2 = status(w, "b1"), status(w, "b2")
    assert (b1["phase"], b1["reason"], b1["failures"]) == ("Queued", "StartDeadlineExceeded", 1)
    assert (b2["phase"], b2["reason"]) == ("Queued", "Queued")
    assert "attempts" not in b2 and "failures" not in b2


def test_a_coalesced_job_ends_where_an_every_batches_snapshot_is_due() -> None:
    snapshots = {"everyBatches": 2, "destination": "s3://backups/demo/", "keep": 3}
    w = world(5, snapshots=snapshots)
    [first] = creates(w.step())
    assert first.workload.next_batches == ("b2",)  # the snapshot after 2 batches comes before b3
    finish(w, [done("b1", 0), done("b2", 10)])
    [snapshot] = creates(w.step())
    assert (snapshot.kind, snapshot.workload.key) == ("snapshot", "s20")
