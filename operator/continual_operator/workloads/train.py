"""The ``train`` kind: one trainer attempt of one TrainingBatch (a ConfigMap with its trainer config, a Job).

Named ``{run}-{batch}-a{attempt}`` (:func:`~continual_operator.naming.job_name`); built by
:mod:`.resources` (with the per-run ServiceAccount, Role, RoleBinding and claim before it); read back from
the batch and attempt labels; classified from the trainer's exit code and result record
(:mod:`.outcomes`). It writes the volume.

``spec.resources.gpus`` > 1 on one node: the Job runs ``torchrun --nproc-per-node <gpus>`` (one trainer
process per GPU, :func:`.gang.get_single_node_job`); torchrun exits 1 for every failure, so such a Job is
classified by the coordinator's ``exitCode`` in its result record (:func:`.outcomes.trainer_exit_code`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import ANNOTATION_BATCH, LABEL_ATTEMPT, LABEL_BATCH, job_name
from continual_operator.workloads import gang, outcomes, resources
from continual_operator.workloads.kinds import ObjectRef, Workload
from continual_operator.workloads.outcomes import Outcome
from continual_operator.workloads.views import Identity, JobView, get, read_job

KIND = "train"


@dataclass(frozen=True)
class TrainRequest:
    """What the planner decided about one attempt.

    ``abandon_batches``: trainer batch ids of the run's Failed batches: the trainer closes their unfinished
    ledger records and sets their checkpoints aside, so that a SkipBatch policy can go on past them.
    """

    run: ContinualTrainingRun
    batch: TrainingBatch
    attempt: int
    abandon_batches: tuple[str, ...] = ()


class TrainKind:
    """One trainer attempt of one batch."""

    name = KIND
    writes_volume = True

    @staticmethod
    def job_name(run: str, batch: str, attempt: int) -> str:
        """The deterministic name of an attempt's Job and ConfigMap."""
        return job_name(run, batch, attempt)

    def build(self, request: TrainRequest) -> Workload:
        run, batch, attempt = request.run, request.batch, request.attempt
        name = self.job_name(run.metadata.name, batch.metadata.name, attempt)
        return Workload(
            kind=KIND,
            name=name,
            manifests=(
                *resources.run_objects(run),
                resources.get_config_map(run, batch, attempt, request.abandon_batches),
                gang.get_single_node_job(
                    resources.get_job(run, batch, attempt), gang.Gang.of(run.spec.resources)
                ),
            ),
            owned=self.owned_objects(name),
            batch=batch.metadata.name,
            attempt=attempt,
            writes_volume=self.writes_volume,
        )

    def read(self, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
        labels = get(job, "metadata", "labels") or {}
        annotations = get(job, "metadata", "annotations") or {}
        batch = annotations.get(ANNOTATION_BATCH) or labels.get(LABEL_BATCH)
        attempt = labels.get(LABEL_ATTEMPT)
        if not batch or not str(attempt or "").isdigit():
            return None
        identity = Identity(KIND, str(batch), int(str(attempt)), self.writes_volume)
        view = read_job(job, pods, identity)
        if str(annotations.get(gang.ANNOTATION_WORLD_SIZE, "1")) != "1":  # torchrun: the coordinator's code
            result = outcomes.parse_result(view.termination_message)
            view = replace(view, exit_code=outcomes.trainer_exit_code(view.exit_code, result))
        return view

    def classify(self, view: JobView) -> Outcome:
        return outcomes.classify(view)

    def owned_objects(self, name: str) -> tuple[ObjectRef, ...]:
        return (ObjectRef("Job", name), ObjectRef("ConfigMap", name))


TRAIN = TrainKind()
