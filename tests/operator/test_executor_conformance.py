"""One conformance test for both executors (continual_operator.planning.executor.Executor).

The cluster executor runs against kmock (tests/operator/kube_world.py plays the Job controller and the
kubelet); local mode runs a real process per workload (a stand-in trainer that ends when told to, with the
exit code and termination message it is given). Each test runs on both: the same plan has the same effect.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import kmock
import pytest
from tests.operator.kube_world import (
    BATCHES,
    CONFIG_MAPS,
    JOBS,
    RUNS,
    T0,
    KubeWorld,
    batch_body,
    result,
    run_body,
)

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.cluster.executor import ClusterExecutor
from continual_operator.cluster.k8s import Subject
from continual_operator.local.mode import LocalOptions, LocalRun
from continual_operator.planning.actions import CreateWorkload, DeleteWorkload, Plan
from continual_operator.planning.executor import Executor
from continual_operator.planning.planner import plan
from continual_operator.workloads.train import TRAIN, TrainRequest

NOW = T0.replace(hour=12)

PREEMPTED = result("b1", 0, 2, outcome="Preempted")
#: A stand-in for the trainer: waits for ``<termination file>.go`` ("exit code" line, then the message),
#: writes the message where the config says and exits with the code -- a pod's container, in short. On
#: SIGTERM it does what the trainer does: a Preempted result, exit 85.
FAKE_TRAINER = textwrap.dedent(
    f"""
    import pathlib, signal, sys, time, yaml
    config = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    termination = pathlib.Path(config["terminationMessagePath"])
    def preempted(*_):
        termination.write_text({PREEMPTED!r})
        sys.exit(85)
    signal.signal(signal.SIGTERM, preempted)
    termination.with_name(termination.name + ".ready").touch()
    go = termination.with_name(termination.name + ".go")
    while not go.exists():
        time.sleep(0.02)
    code, _, message = go.read_text().partition("\\n")
    termination.write_text(message)
    sys.exit(int(code))
    """
)


class Harness(Protocol):
    executor: Executor

    def finish(self, name: str, exit_code: int, message: str) -> None:
        """The workload's container ends with this exit code and termination message."""

    def world(self) -> tuple[ContinualTrainingRun, list[TrainingBatch]]:
        """The run and batches as the executor's store holds them now."""

    def objects(self, name: str) -> list[str]:
        """What stands for the workload in the executor's store (kinds of objects, or a process)."""

    def started(self, name: str) -> None:
        """Wait until the workload's container runs."""

    def exited(self, name: str) -> None:
        """Wait until a stopped workload's container has exited (the cluster: its pod is gone)."""


class ClusterHarness:
    def __init__(self, world: KubeWorld) -> None:
        self.kube = world
        world.add(RUNS, run_body())
        world.add(BATCHES, batch_body("b1"))
        run, _ = self.world()
        self.executor = ClusterExecutor(world.storage(), Subject(run.metadata, run))

    def finish(self, name: str, exit_code: int, message: str) -> None:
        self.kube.finish_job(name, exit_code=exit_code, message=message)

    def world(self) -> tuple[ContinualTrainingRun, list[TrainingBatch]]:
        run = ContinualTrainingRun.model_validate(self.kube.get(RUNS, "demo"))
        return run, [TrainingBatch.model_validate(self.kube.get(BATCHES, "b1"))]

    def started(self, name: str) -> None:
        pass  # kmock has no kubelet: nothing runs

    def exited(self, name: str) -> None:
        pass  # ... and a deleted Job is gone at once

    def objects(self, name: str) -> list[str]:
        return [
            kind
            for kind, resource in (("Job", JOBS), ("ConfigMap", CONFIG_MAPS))
            if self.kube.get(resource, name)
        ]


class LocalHarness:
    def __init__(self, tmp: Path) -> None:
        script = tmp / "fake_trainer.py"
        script.write_text(FAKE_TRAINER)
        options = LocalOptions(
            manifest=tmp / "run.yaml",
            volume=tmp / "volume",
            state=tmp / "state",
            trainer_command=(sys.executable, str(script)),
        )
        self.state = LocalRun(options, out=lambda _: None)
        self.state.run = ContinualTrainingRun.model_validate(run_body())
        self.state.batches = {"b1": TrainingBatch.model_validate(batch_body("b1"))}
        self.executor = self.state

    def finish(self, name: str, exit_code: int, message: str) -> None:
        job = self.state.jobs[name]
        job.termination.with_name(job.termination.name + ".go").write_text(f"{exit_code}\n{message}")
        assert job.process is not None
        job.process.wait(timeout=60)

    def world(self) -> tuple[ContinualTrainingRun, list[TrainingBatch]]:
        assert self.state.run is not None
        return self.state.run, list(self.state.batches.values())

    def objects(self, name: str) -> list[str]:
        return ["process"] if name in self.state.jobs else []

    def started(self, name: str) -> None:
        ready = self.state.jobs[name].termination
        ready = ready.with_name(ready.name + ".ready")
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def exited(self, name: str) -> None:
        process = self.state.jobs[name].process
        assert process is not None
        process.wait(timeout=60)

    def close(self) -> None:
        for process in self.state.running():
            process.kill()
            process.wait()


@pytest.fixture(params=["cluster", "local"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, kmock: kmock.KubernetesEmulator
) -> AsyncIterator[Harness]:
    if request.param == "cluster":
        cluster = ClusterHarness(KubeWorld(kmock))
        yield cluster
        cluster.executor.storage.close()
    else:
        local = LocalHarness(tmp_path)
        yield local
        local.close()


def _create(harness: Harness, attempt: int = 1) -> Plan:
    run, batches = harness.world()
    return Plan((CreateWorkload(TRAIN.build(TrainRequest(run, batches[0], attempt))),))


@pytest.mark.parametrize(
    ("exit_code", "message", "outcome", "reason"),
    [
        (0, result("b1", 0, 5), "Succeeded", "Succeeded"),
        (75, "the object store timed out", "Retry", "TransientError"),
        (64, "spec.training.learningRate must be positive", "Permanent", "PermanentFailure"),
    ],
)
async def test_create_appears_once_finishes_reads_back_and_deletes_idempotently(
    harness: Harness, exit_code: int, message: str, outcome: str, reason: str
) -> None:
    create = _create(harness)
    name = create.actions[0].job_name  # type: ignore[union-attr]
    assert (await harness.executor.apply(create, now=NOW)).jobs_created == (name,)
    assert (await harness.executor.apply(create, now=NOW)).jobs_created == ()  # the same plan again
    (view,) = await harness.executor.workloads()
    assert (view.name, view.kind, view.batch, view.attempt, view.phase) == (name, "train", "b1", 1, "Active")
    assert view.writing  # it holds the writer lease

    harness.finish(name, exit_code, message)
    (view,) = await harness.executor.workloads()
    assert (view.phase, view.exit_code) == ("Succeeded" if exit_code == 0 else "Failed", exit_code)
    classified = TRAIN.classify(view)
    assert (classified.kind, classified.reason) == (outcome, reason)
    assert not view.writing

    delete = Plan((DeleteWorkload(name, "ResultRecorded", objects=TRAIN.owned_objects(name)),))
    await harness.executor.apply(delete, now=NOW)
    await harness.executor.apply(delete, now=NOW)  # gone already: not an error
    assert await harness.executor.workloads() == []
    assert harness.objects(name) == []


async def test_stopping_a_running_workload_keeps_it_a_writer_until_it_has_exited(harness: Harness) -> None:
    create = _create(harness)
    name = create.actions[0].job_name  # type: ignore[union-attr]
    await harness.executor.apply(create, now=NOW)
    harness.started(name)
    stop = Plan((DeleteWorkload(name, "Suspended", "Foreground", TRAIN.owned_objects(name)),))
    await harness.executor.apply(stop, now=NOW)
    views = await harness.executor.workloads()
    # kmock keeps no deletionTimestamp (it has no garbage collector): the Job is simply gone there; local
    # mode's process is being stopped and still counts as a writer until it exits.
    assert all(v.writing and v.deleting for v in views)
    harness.exited(name)
    views = await harness.executor.workloads()
    assert [TRAIN.classify(v).kind for v in views] == (["Preempted"] if views else [])
    # Once it has exited, deleting it again forgets it.
    await harness.executor.apply(stop, now=NOW)
    assert await harness.executor.workloads() == []


def _summary(the_plan: Plan) -> list[tuple[str, Any]]:
    """A plan's actions as (type, what), comparable across executors."""
    out: list[tuple[str, Any]] = []
    for action in the_plan.actions:
        what = (
            getattr(action, "job_name", None)
            or getattr(action, "batch", None)
            or getattr(action, "reason", None)
        )
        out.append((type(action).__name__, what))
    return out


async def test_the_planner_drives_either_executor_through_the_same_plans(harness: Harness) -> None:
    """Plan, apply, read back, plan again: the same sequence of plans on the cluster and in local mode."""
    transcript = []
    for step in range(3):
        run, batches = harness.world()
        the_plan = plan(run, batches, await harness.executor.workloads(), now=NOW)
        transcript.append(_summary(the_plan))
        await harness.executor.apply(the_plan, now=NOW)
        if step == 1:
            harness.finish("demo-b1-a1", 0, result("b1", 0, 5))
    run, batches = harness.world()
    assert transcript == [
        [
            ("UpdateBatchStatus", "b1"),
            ("CreateWorkload", "demo-b1-a1"),
            ("UpdateRunStatus", None),
        ],
        [],  # adopted: nothing new while it trains
        [("UpdateBatchStatus", "b1"), ("UpdateRunStatus", None), ("EmitEvent", "Succeeded")],
    ]
    assert batches[0].status.phase == "Succeeded" and batches[0].status.end_step == 5
    assert run.status.completed_step == 5 and run.status.phase == "Idle"
