"""Artifact kinds: one process of the trainer image over the run folder -- snapshot, restore, consolidate.

They share their shape (the contract in docs/architecture.md, "Artifact jobs"): the same trainer config the
train Job gets (``--config``, with a stand-in batch: these jobs train nothing), everything kind-specific on
the command line, the same environment (the object store's credentials from
``spec.objectStore.credentialsSecretRef``), one JSON result line in the termination message, and the
trainer's exit codes:

=========================================  =========  ==========================================
what happened                              outcome    what the planner does
=========================================  =========  ==========================================
exit 0 with a result of the kind           Succeeded  the result goes into the run's status
exit 0 without one                         Retry      after the back-off
exit 64 (PERMANENT)                        Permanent  a condition and a Warning Event; not retried
exit 85, a preempted or evicted pod        Preempted  again at once
exit 75 and anything else                  Retry      after the back-off, up to maxRetriesPerBatch
=========================================  =========  ==========================================

Named ``{run}-{kind}-{key}-a{attempt}``: the key is what the job is about (``s<step>`` for a snapshot or a
consolidation of that step, a hash of the source for a restore), so a repeated plan makes no second Job.
Every artifact kind holds the writer lease: a snapshot only reads the run folder, but it must never run
beside a trainer (the job also takes the volume lock).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import (
    ANNOTATION_RUN,
    LABEL_ARTIFACT,
    LABEL_ATTEMPT,
    LABEL_KIND,
    artifact_job_name,
    label_value,
)
from continual_operator.workloads import resources
from continual_operator.workloads.kinds import ObjectRef, Workload
from continual_operator.workloads.outcomes import PREEMPTION_REASONS, Outcome
from continual_operator.workloads.views import Identity, JobView, get, read_job
from continual_trainer.exitcodes import ExitCode

_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class ArtifactRequest:
    """One artifact job: for which run, about what (``key``), which attempt, with which arguments."""

    run: ContinualTrainingRun
    key: str
    attempt: int
    args: tuple[str, ...]


def parse_artifact_result(message: str | None, kind: str) -> dict[str, Any] | None:
    """The job's result record (its JSON object with ``"kind": kind``), or None."""
    if not message or not message.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(message.strip().splitlines()[0])
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("kind") == kind else None


class ArtifactKind:
    """An artifact kind: ``python -m <module> [<verb>] --config FILE <args>``."""

    writes_volume = True

    def __init__(self, name: str, result_kind: str, command: tuple[str, ...]) -> None:
        self.name = name
        self.result_kind = result_kind
        self.command = command

    def job_name(self, run: str, key: str, attempt: int) -> str:
        return artifact_job_name(run, self.name, key, attempt)

    def build(self, request: ArtifactRequest) -> Workload:
        run = request.run
        name = self.job_name(run.metadata.name, request.key, request.attempt)
        labels = resources.run_labels(run, "trainer") | {
            LABEL_KIND: self.name,
            LABEL_ARTIFACT: label_value(request.key),
            LABEL_ATTEMPT: str(request.attempt),
        }
        annotations = {ANNOTATION_RUN: run.metadata.name, LABEL_ARTIFACT: request.key}
        command = (
            *self.command,
            "--config",
            f"{resources.CONFIG_MOUNT}/{resources.CONFIG_KEY}",
            *request.args,
        )
        # The train Job's config, with a stand-in batch.
        stand_in = resources.get_trainer_config(run, _stand_in_batch(run, name))
        config_labels = labels | {"app.kubernetes.io/component": "trainer-config"}
        return Workload(
            kind=self.name,
            name=name,
            manifests=(
                *resources.run_objects(run),
                resources.workload_config_map(run, name, config_labels, stand_in),
                resources.workload_job(run, resources.JobParts(name, labels, annotations, command)),
            ),
            owned=self.owned_objects(name),
            attempt=request.attempt,
            writes_volume=self.writes_volume,
            key=request.key,
        )

    def read(self, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
        labels = get(job, "metadata", "labels") or {}
        annotations = get(job, "metadata", "annotations") or {}
        key = annotations.get(LABEL_ARTIFACT) or labels.get(LABEL_ARTIFACT)
        attempt = labels.get(LABEL_ATTEMPT)
        if not key or not str(attempt or "").isdigit():
            return None
        return read_job(job, pods, Identity(self.name, "", int(str(attempt)), self.writes_volume, str(key)))

    def classify(self, view: JobView) -> Outcome:
        data = parse_artifact_result(view.termination_message, self.result_kind)
        text = " ".join((view.termination_message or "").split())[:_MESSAGE_LIMIT]
        if view.phase == "Succeeded":
            if data is not None:
                return Outcome("Succeeded", "Succeeded", text, artifact=data)
            return Outcome(
                "Retry", "NoResult", f"the {self.name} job exited 0 without a readable result record"
            )
        if view.exit_code == ExitCode.PERMANENT:
            return Outcome("Permanent", "PermanentFailure", text or f"the {self.name} job refused its input")
        if (
            view.exit_code == ExitCode.PREEMPTED
            or view.pod_reason in PREEMPTION_REASONS
            or view.disruption_target
            or view.suspended
        ):
            return Outcome("Preempted", "Preempted", text or "the pod was stopped before the job committed")
        detail = f"exit code {view.exit_code}" if view.exit_code is not None else "no exit code recorded"
        reason = (
            "TransientError"
            if view.exit_code == ExitCode.TRANSIENT
            else (view.pod_reason or "UnexpectedError")
        )
        return Outcome(
            "Retry", reason, f"the {self.name} job failed ({detail})" + (f": {text}" if text else "")
        )

    def owned_objects(self, name: str) -> tuple[ObjectRef, ...]:
        return (ObjectRef("Job", name), ObjectRef("ConfigMap", name))


def _stand_in_batch(run: ContinualTrainingRun, name: str) -> TrainingBatch:
    """The batch of an artifact job's trainer config: the schema needs one, the job trains nothing."""
    body = {"runName": run.metadata.name, "data": {"path": resources.run_dir(run.spec)}}
    return TrainingBatch.model_validate({"metadata": {"name": name}, "spec": body})
