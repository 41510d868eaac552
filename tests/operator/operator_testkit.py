"""Builders of planner inputs and a tiny simulator that applies plans, for the operator's unit tests."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import job_name
from continual_operator.planning.actions import (
    CreateWorkload,
    DeleteWorkload,
    Plan,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.planner import plan
from continual_operator.workloads.views import JobView
from continual_trainer.records import BatchResult

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
T0 = dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=dt.UTC)
RUN = "demo"


def make_run(
    *, status: dict[str, Any] | None = None, generation: int = 1, deleting: bool = False, **spec: Any
) -> ContinualTrainingRun:
    body: dict[str, Any] = {
        "baseModel": {"path": "models/tiny"},
        "storage": {"existingClaim": "demo-data"},
        "resources": {"gpus": 0},
    }
    body.update(spec)
    metadata: dict[str, Any] = {"name": RUN, "namespace": "ml", "uid": "run-uid-1", "generation": generation}
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:00:00Z"
    return ContinualTrainingRun.model_validate({"metadata": metadata, "spec": body, "status": status or {}})


def make_batch(
    name: str,
    *,
    order: int | None = None,
    created: int = 0,
    status: dict[str, Any] | None = None,
    run: str = RUN,
    deleting: bool = False,
) -> TrainingBatch:
    """A batch created ``created`` minutes after T0."""
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "uid": f"uid-{name}",
        "generation": 1,
        "creationTimestamp": (T0 + dt.timedelta(minutes=created)).isoformat(),
    }
    if deleting:
        metadata["deletionTimestamp"] = "2025-03-01T11:00:00Z"
    spec: dict[str, Any] = {"runName": run, "data": {"path": f"inbox/{name}.jsonl"}}
    if order is not None:
        spec["order"] = order
    return TrainingBatch.model_validate({"metadata": metadata, "spec": spec, "status": status or {}})


def result(batch: str, start: int, end: int, outcome: str = "Succeeded", **extra: Any) -> str:
    """A termination message, as the trainer writes it."""
    fields: dict[str, Any] = {
        "batch_id": batch,
        "outcome": outcome,
        "start_step": start,
        "end_step": end,
        "target_step": end,
        "samples": 40,
        "tokens": 4000,
        "mean_loss": 2.5,
        "checkpoint": f"checkpoints/checkpoint-{end}",
    }
    fields.update(extra)
    return BatchResult(**fields).to_termination_message()


def job(batch: str, attempt: int = 1, phase: str = "Active", **kw: Any) -> JobView:
    kw.setdefault("created", T0 + dt.timedelta(hours=1, minutes=attempt))
    return JobView(name=job_name(RUN, batch, attempt), batch=batch, attempt=attempt, phase=phase, **kw)  # type: ignore[arg-type]


def succeeded(batch: str, attempt: int, start: int, end: int, outcome: str = "Succeeded") -> JobView:
    return job(
        batch, attempt, "Succeeded", exit_code=0, termination_message=result(batch, start, end, outcome)
    )


def failed(batch: str, attempt: int, exit_code: int | None, **kw: Any) -> JobView:
    return job(batch, attempt, "Failed", exit_code=exit_code, **kw)


def training(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    """A batch status saying attempt ``attempt`` is training."""
    return {"phase": "Training", "attempts": attempt, "job": f"{RUN}-x-a{attempt}", **extra}


def done(start: int, end: int, when: str = "2025-03-01T10:00:00Z", **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Succeeded",
        "attempts": 1,
        "startStep": start,
        "endStep": end,
        "lastTransitionTime": when,
        **extra,
    }


@dataclasses.dataclass
class World:
    """What the API server would hold: the run, its batches and its Jobs."""

    run: ContinualTrainingRun
    batches: list[TrainingBatch]
    jobs: list[JobView]
    now: dt.datetime = NOW

    def plan(self) -> Plan:
        return plan(self.run, self.batches, self.jobs, now=self.now)

    def batch(self, name: str) -> TrainingBatch:
        return next(b for b in self.batches if b.metadata.name == name)

    def apply(self, the_plan: Plan) -> None:
        """Carry out a plan the way the handler layer would."""
        for action in the_plan.actions:
            if isinstance(action, UpdateRunStatus):
                self.run = _patched(self.run, action.patch)
            elif isinstance(action, UpdateBatchStatus):
                self.batches = [
                    _patched(b, action.patch) if b.metadata.name == action.batch else b for b in self.batches
                ]
            elif isinstance(action, CreateWorkload):
                if all(j.name != action.job_name for j in self.jobs):
                    self.jobs.append(action.workload.view(created=self.now))
            elif isinstance(action, DeleteWorkload):
                if action.propagation == "Foreground":
                    self.jobs = [
                        dataclasses.replace(j, deleting=True) if j.name == action.name else j
                        for j in self.jobs
                    ]
                else:
                    self.jobs = [j for j in self.jobs if j.name != action.name]

    def step(self) -> Plan:
        """Plan and apply once."""
        the_plan = self.plan()
        self.apply(the_plan)
        return the_plan

    def finish_active(self, end_offset: int = 10, outcome: str = "Succeeded") -> JobView:
        """The one active Job completes its batch, starting where the run's status says steps stand."""
        active = next(j for j in self.jobs if not j.finished)
        start = self.run.status.completed_step or 0
        finished = succeeded(active.batch, active.attempt, start, start + end_offset, outcome)
        finished = dataclasses.replace(
            finished, name=active.name, created=active.created, next_batches=active.next_batches
        )
        self.jobs = [finished if j.name == active.name else j for j in self.jobs]
        return finished

    def later(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def _patched(obj: Any, patch: Any) -> Any:
    status = obj.status.model_dump(mode="json", by_alias=True)
    for key, value in patch.items():
        status[key] = value
    status = {k: v for k, v in status.items() if v is not None}
    return obj.model_copy(update={"status": type(obj.status).model_validate(status)})
