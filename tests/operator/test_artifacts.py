"""Artifact workloads in the planner: restore first, snapshots and consolidations before the next batch.

Pure tier (the planner over operator_testkit's World) plus the manifests the kinds build and how the
cluster reads them back. The trainer entry points themselves are tested on the trainer side.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from tests.operator.operator_testkit import NOW, World, make_batch, make_run

from continual_operator.local.executor import LocalPlace, command
from continual_operator.planning.actions import CreateWorkload, EmitEvent
from continual_operator.workloads.registry import job_views
from continual_operator.workloads.restore import RESTORE, restore_key, restore_request
from continual_operator.workloads.snapshot import SNAPSHOT, snapshot_request
from continual_operator.workloads.views import JobView

DESTINATION = "s3://backups/demo/"
SOURCE = "s3://backups/old-run/20250301T030000Z-step00000040/"


def _finish(world: World, exit_code: int, message: str) -> JobView:
    """The one active workload ends."""
    active = next(j for j in world.jobs if not j.finished)
    done = dataclasses.replace(
        active,
        phase="Succeeded" if exit_code == 0 else "Failed",
        exit_code=exit_code,
        termination_message=message,
    )
    world.jobs = [done if j.name == active.name else j for j in world.jobs]
    return done


def _snapshot_result(step: int, batches: int, when: dt.datetime) -> str:
    snapshot_id = f"{when:%Y%m%dT%H%M%SZ}-step{step:08d}"
    return json.dumps(
        {
            "kind": "snapshot",
            "uri": f"{DESTINATION}{snapshot_id}/",
            "snapshotId": snapshot_id,
            "globalStep": step,
            "batches": batches,
            "files": 9,
            "bytes": 12345,
            "completedAt": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "retired": [],
            "swept": [],
        }
    )


def _condition(world: World, type_: str) -> tuple[str, str]:
    condition = next(c for c in world.run.status.conditions if c.type == type_)
    return condition.status, condition.reason


def _events(the_plan: Any) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in the_plan.of(EmitEvent)]


def test_a_due_snapshot_runs_before_the_next_batch_and_never_beside_a_trainer() -> None:
    run = make_run(snapshots={"everyBatches": 1, "destination": DESTINATION, "keep": 3, "pin": ["keep-me"]})
    world = World(run, [make_batch("b1"), make_batch("b2", created=1)], [])
    (train,) = world.step().of(CreateWorkload)
    assert train.kind == "train"
    world.finish_active(end_offset=5)
    (snap,) = world.step().of(CreateWorkload)  # b1 recorded; the snapshot comes before b2
    assert (snap.kind, snap.workload.key, snap.job_name) == ("snapshot", "s5", "demo-snapshot-s5-a1")
    container = snap.workload.job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "python",
        "-m",
        "continual_trainer.snapshot",
        "create",
        "--config",
        "/etc/continual/trainer.yaml",
        "--destination",
        DESTINATION,
        "--keep",
        "3",
        "--pin",
        "keep-me",
    ]
    training = next(c for c in world.run.status.conditions if c.type == "Training")
    assert (world.run.status.phase, training.reason) == ("Pending", "SnapshotRunning")
    assert world.batch("b2").status.phase == "Queued"
    assert world.step().of(CreateWorkload) == []  # the snapshot holds the volume: b2 waits

    _finish(world, 0, _snapshot_result(5, 1, NOW))
    the_plan = world.step()
    assert [c.batch for c in the_plan.of(CreateWorkload)] == ["b2"]  # recorded, then the next batch
    last = world.run.status.last_snapshot
    assert last is not None and (last.global_step, last.batches, last.snapshot_id) == (
        5,
        1,
        "20250301T120000Z-step00000005",
    )
    assert _condition(world, "Snapshots") == ("True", "SnapshotCompleted")
    assert ("Normal", "SnapshotCompleted") in _events(the_plan)
    assert all(j.kind == "train" for j in world.jobs)  # the recorded snapshot Job is deleted


def test_a_missed_schedule_runs_one_snapshot_not_one_per_missed_tick() -> None:
    run = make_run(
        snapshots={"schedule": "0 3 * * *", "destination": DESTINATION}, status={"completedStep": 10}
    )
    created = run.metadata.model_copy(update={"creation_timestamp": NOW - dt.timedelta(hours=3)})
    run = run.model_copy(update={"metadata": created})
    world = World(run, [], [])
    the_plan = world.step()
    assert the_plan.of(CreateWorkload) == []  # the first tick (tomorrow 03:00) has not come
    assert the_plan.requeue_after == 15 * 3600
    world.later(4 * 24 * 3600)  # the operator was down for four days: four ticks missed
    (snap,) = world.step().of(CreateWorkload)
    assert snap.workload.key == "s10"
    _finish(world, 0, _snapshot_result(10, 0, world.now))
    world.step()
    assert world.step().of(CreateWorkload) == []  # once, not four times


def test_a_failed_snapshot_is_a_condition_and_an_event_and_training_goes_on() -> None:
    run = make_run(snapshots={"everyBatches": 1, "destination": DESTINATION})
    world = World(run, [make_batch("b1"), make_batch("b2", created=1)], [])
    world.step()
    world.finish_active(end_offset=5)
    world.step()
    _finish(world, 75, "NoSuchBucket: the bucket backups does not exist")
    the_plan = world.step()
    assert _condition(world, "Snapshots") == ("False", "SnapshotFailed")
    assert ("Warning", "SnapshotFailed") in _events(the_plan)
    assert [c.batch for c in the_plan.of(CreateWorkload)] == ["b2"]  # an artifact never stops training
    assert _events(world.step()) == []  # the Warning once, not on every reconcile


def test_restore_runs_first_and_the_run_continues_from_the_restored_step() -> None:
    run = make_run(restoreFrom=SOURCE)
    world = World(run, [make_batch("b1")], [])
    (restore,) = world.step().of(CreateWorkload)
    assert (restore.kind, restore.workload.key) == ("restore", restore_key(SOURCE))
    assert restore.workload.job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "--source",
        SOURCE,
    ]
    assert world.batch("b1").status.phase == "Queued"
    inbox = {"watermark": "inbox/0040.jsonl"}
    result = {
        "kind": "restore",
        "uri": SOURCE,
        "snapshotId": "x",
        "globalStep": 40,
        "batches": 4,
        "inbox": inbox,
    }
    _finish(world, 0, json.dumps(result))
    (train,) = world.step().of(CreateWorkload)
    assert train.batch == "b1"
    assert (world.run.status.completed_step, world.run.status.global_step) == (40, 40)
    assert world.run.status.inbox is not None and world.run.status.inbox.watermark == "inbox/0040.jsonl"
    assert _condition(world, "Restored") == ("True", "RestoreCompleted")
    world.finish_active(end_offset=5)  # starts where the restore left the run: 40..45
    world.step()
    assert world.batch("b1").status.phase == "Succeeded" and world.run.status.completed_step == 45


def test_a_restore_refused_by_the_snapshot_halts_the_run_before_any_batch() -> None:
    world = World(make_run(restoreFrom=SOURCE), [make_batch("b1")], [])
    world.step()
    _finish(
        world, 64, "manifest.json: adapters/latest/adapter_model.safetensors has sha256 1f2e..., not 9a8b..."
    )
    the_plan = world.step()
    assert the_plan.of(CreateWorkload) == []
    assert world.run.status.phase == "Halted" and _condition(world, "Restored") == ("False", "RestoreFailed")
    assert ("Warning", "RestoreFailed") in _events(the_plan)
    assert world.batch("b1").status.phase == "Queued"
    # A corrected source is a new restore.
    fixed = "s3://backups/old-run/20250302T030000Z-step00000050/"
    world.run = world.run.model_copy(
        update={"spec": world.run.spec.model_copy(update={"restore_from": fixed})}
    )
    (again,) = world.step().of(CreateWorkload)
    assert (again.kind, again.workload.key) == ("restore", restore_key(fixed))


def test_a_consolidation_renders_its_output_and_dtype_and_lands_in_status() -> None:
    run = make_run(consolidation={"everyBatches": 1, "output": "merged/", "dtype": "bfloat16"})
    world = World(run, [make_batch("b1")], [])
    world.step()
    world.finish_active(end_offset=5)
    (merge,) = world.step().of(CreateWorkload)
    command_line = merge.workload.job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command_line[:3] == ["python", "-m", "continual_trainer.consolidate"]
    assert command_line[-4:] == ["--output", "merged/", "--dtype", "bfloat16"]
    result = {
        "kind": "consolidation",
        "output": "/data/merged",
        "globalStep": 5,
        "batches": 1,
        "dtype": "bfloat16",
    }
    _finish(
        world,
        0,
        json.dumps(result | {"maxAbsDiff": 0.0, "tolerance": 0.01, "completedAt": "2025-03-01T12:00:00Z"}),
    )
    world.step()
    last = world.run.status.last_consolidation
    assert last is not None and (last.output, last.global_step, last.dtype) == ("/data/merged", 5, "bfloat16")


def test_an_artifact_job_gets_the_object_store_credentials_and_is_read_back_by_its_kind() -> None:
    store = {
        "endpointURL": "https://minio.example:9000",
        "credentialsSecretRef": {"name": "s3-creds"},
    }
    run = make_run(objectStore=store, snapshots={"everyBatches": 1, "destination": DESTINATION})
    workload = SNAPSHOT.build(snapshot_request(run, 5, 2))
    pod = workload.job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "demo-data"
    assert "endpointURL: https://minio.example:9000" in workload.manifest("ConfigMap")["data"]["trainer.yaml"]
    job = dict(workload.job) | {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    (view,) = job_views([job], [])
    assert (view.kind, view.key, view.attempt, view.phase, view.batch) == (
        "snapshot",
        "s5",
        2,
        "Succeeded",
        "",
    )


def test_local_mode_runs_an_artifact_job_with_this_interpreter(tmp_path: Path) -> None:
    workload = RESTORE.build(restore_request(make_run(restoreFrom=SOURCE), 1))
    place = LocalPlace(tmp_path, tmp_path / "state", None, ("continual-trainer",))
    argv = command(workload, place, tmp_path / "config.yaml")
    assert argv == [
        sys.executable,
        "-m",
        "continual_trainer.snapshot",
        "restore",
        "--config",
        str(tmp_path / "config.yaml"),
        "--source",
        SOURCE,
    ]


def test_an_artifact_job_whose_pod_cannot_start_says_so_on_the_run() -> None:
    run = make_run(snapshots={"everyBatches": 1, "destination": DESTINATION}, status={"completedStep": 5})
    world = World(run, [make_batch("b1", status={"phase": "Succeeded", "endStep": 5})], [])
    (snap,) = world.step().of(CreateWorkload)
    world.jobs = [
        dataclasses.replace(
            j,
            waiting_reason="CreateContainerConfigError",
            waiting_message='secret "s3-creds" not found',
            pending_since=NOW,
        )
        for j in world.jobs
    ]
    world.step()
    training = next(c for c in world.run.status.conditions if c.type == "Training")
    assert (world.run.status.phase, training.reason) == ("Pending", "CreateContainerConfigError")
    assert f"Job {snap.job_name} cannot start its pod" in training.message
    assert 'secret "s3-creds" not found' in training.message and "its snapshot waits" in training.message


def test_restore_from_on_a_run_that_trained_already_is_ignored_and_says_so_once() -> None:
    run = make_run(restoreFrom=SOURCE, status={"completedStep": 12, "globalStep": 12})
    world = World(run, [make_batch("b1")], [])
    the_plan = world.step()
    assert [c.kind for c in the_plan.of(CreateWorkload)] == ["train"]  # no restore over training state
    assert _condition(world, "Restored") == ("False", "RestoreNotApplicable")
    assert ("Warning", "RestoreNotApplicable") in _events(the_plan)
    assert ("Warning", "RestoreNotApplicable") not in _events(world.step())


def test_an_artifact_job_past_the_start_deadline_is_stopped_and_training_goes_on() -> None:
    run = make_run(snapshots={"everyBatches": 1, "destination": DESTINATION}, status={"completedStep": 5})
    world = World(
        run, [make_batch("b0", status={"phase": "Succeeded", "endStep": 5}), make_batch("b1", created=1)], []
    )
    (snap,) = world.step().of(CreateWorkload)
    stuck = {"waiting_reason": "CreateContainerConfigError", "waiting_message": 'secret "s3-creds" not found'}
    world.jobs = [dataclasses.replace(j, pending_since=NOW, **stuck) for j in world.jobs]  # type: ignore[arg-type]
    world.later(601)
    the_plan = world.step()
    assert _condition(world, "Snapshots") == ("False", "StartDeadlineExceeded")
    assert ("Warning", "StartDeadlineExceeded") in _events(the_plan)
    assert [j.deleting for j in world.jobs] == [True]  # a writer until its pod is gone
    world.jobs = []  # gone
    (train,) = world.step().of(CreateWorkload)
    assert train.batch == "b1"  # not the same snapshot again: training goes on
    assert snap.job_name not in {j.name for j in world.jobs}
