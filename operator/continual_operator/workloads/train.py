"""The ``train`` kind: one trainer attempt of one TrainingBatch (a Job, its trainer config in its pod template).

Named ``{run}-{batch}-a{attempt}`` (:func:`~continual_operator.naming.job_name`); built by
:mod:`.resources` (with the per-run ServiceAccount, Role, RoleBinding and claim before it); read back from
the batch and attempt labels; classified from the trainer's exit code and result record
(:mod:`.outcomes`). It writes the volume.

``spec.resources.gpus`` > 1 on one node: the Job runs ``torchrun --nproc-per-node <gpus>`` (one trainer
process per GPU, :func:`.gang.get_single_node_job`); torchrun exits 1 for every failure, so such a Job is
classified by the coordinator's ``exitCode`` in its result record (:func:`.outcomes.trainer_exit_code`).

``spec.resources.nodes`` > 1: the attempt is a gang (:mod:`.gang`) on the engine the planner was told
(``TrainRequest.engine``): a JobSet, or an Indexed Job and its headless Service. It is still named and
counted as ``{run}-{batch}-a{attempt}`` (the batch's ``status.job``, the ConfigMap), whatever its objects
are called (a name too long for pod indexes is shortened, :func:`.gang.gang_name`); the view lists them in
``owned``, and :func:`.gang_views.workload_views` reads it from the coordinator's pod.

**Coalesced** (``next_batches``, up to ``spec.training.maxBatchesPerJob`` queued batches in all): one Job
trains the first batch and those after it in one process (the config's ``nextBatches``). It is named,
labelled and counted as the first batch's attempt (still one Job per attempt: a first batch's attempts
only grow) and lists the others in the ``continual.dev/next-batches`` annotation; its ``JobResult`` gives
each batch its own outcome (:func:`.outcomes.classify_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import (
    ANNOTATION_BATCH,
    ANNOTATION_NEXT_BATCHES,
    ANNOTATION_RUN,
    LABEL_ATTEMPT,
    LABEL_BATCH,
    job_name,
)
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
    ``next_batches``: queued batches the same process trains after ``batch``, in order (coalesced).
    """

    run: ContinualTrainingRun
    batch: TrainingBatch
    attempt: int
    abandon_batches: tuple[str, ...] = ()
    next_batches: tuple[TrainingBatch, ...] = ()
    #: The shape of the attempt (:meth:`.gang.Engines.engine_for`): ``job`` on one node.
    engine: gang.Engine = "job"


class TrainKind:
    """One trainer attempt of one batch."""

    name = KIND
    writes_volume = True

    @staticmethod
    def job_name(run: str, batch: str, attempt: int) -> str:
        """The deterministic name of an attempt's Job (and ConfigMap, for a large config)."""
        return job_name(run, batch, attempt)

    def build(self, request: TrainRequest) -> Workload:
        run, batch, attempt, after = request.run, request.batch, request.attempt, request.next_batches
        name = self.job_name(run.metadata.name, batch.metadata.name, attempt)
        *config_map, job = resources.attempt_objects(run, batch, attempt, request.abandon_batches, after)
        objects = gang.build(job, gang.Gang.of(run.spec.resources), request.engine)
        objects.sort(key=lambda obj: obj["kind"] in WORKLOAD_KINDS)  # a gang's Service before its Job
        owned = self.owned_objects(name) if request.engine == "job" else _gang_owned(objects, name)
        return Workload(
            kind=KIND,
            name=name,
            manifests=(
                *resources.run_objects(run),
                *config_map,  # only for a config too large for the pod annotation
                *objects,
            ),
            owned=owned if config_map else tuple(ref for ref in owned if ref.kind != "ConfigMap"),
            batch=batch.metadata.name,
            attempt=attempt,
            writes_volume=self.writes_volume,
            next_batches=tuple(b.metadata.name for b in after),
        )

    def read(self, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobView | None:
        labels = get(job, "metadata", "labels") or {}
        annotations = get(job, "metadata", "annotations") or {}
        batch = annotations.get(ANNOTATION_BATCH) or labels.get(LABEL_BATCH)
        attempt = labels.get(LABEL_ATTEMPT)
        if not batch or not str(attempt or "").isdigit():
            return None
        after = tuple(n for n in str(annotations.get(ANNOTATION_NEXT_BATCHES) or "").split(",") if n)
        identity = Identity(KIND, str(batch), int(str(attempt)), self.writes_volume, next_batches=after)
        view = read_job(job, pods, identity)
        world = str(annotations.get(gang.ANNOTATION_WORLD_SIZE, "1"))
        if world != "1":  # torchrun: the coordinator's code
            record = outcomes.parse_record(view.termination_message)
            view = replace(view, exit_code=outcomes.trainer_exit_code(view.exit_code, record))
        view = replace(view, world_size=int(world) if world.isdigit() else None)
        run = annotations.get(ANNOTATION_RUN)
        if is_gang(job) and run:
            name = self.job_name(str(run), str(batch), int(str(attempt)))
            own = (str(job.get("kind") or "Job"), view.name)
            extra = (("Service", view.name),) if own[0] == "Job" else ()
            config = (("ConfigMap", name),) if view.config_map else ()  # a config too large for the pod
            view = replace(view, name=name, owned=(own, *extra, *config))
        return view

    def classify(self, view: JobView) -> Outcome:
        return outcomes.classify(view)

    def owned_objects(self, name: str) -> tuple[ObjectRef, ...]:
        # The ConfigMap of a large config (and of every Job made before configs moved into the pod
        # template); :func:`.registry.owned_objects` leaves it out for a Job that says it has none.
        return (ObjectRef("Job", name), ObjectRef("ConfigMap", name))


#: The kinds that run a train attempt (the last of its manifests).
WORKLOAD_KINDS = frozenset({"Job", "JobSet"})


def is_gang(workload: Mapping[str, Any]) -> bool:
    """A multi-node attempt: a JobSet, or an Indexed Job (a Job controller older than 1.21 drops
    ``completionMode``, which is why the operator never creates one there)."""
    kind = workload.get("kind")
    return kind == "JobSet" or (kind == "Job" and get(workload, "spec", "completionMode") == "Indexed")


def _gang_owned(objects: Sequence[Mapping[str, Any]], name: str) -> tuple[ObjectRef, ...]:
    """A gang's objects (its workload first), then the attempt's ConfigMap."""
    refs = [ObjectRef(o["kind"], o["metadata"]["name"]) for o in objects]
    refs.sort(key=lambda ref: ref.kind not in WORKLOAD_KINDS)
    return (*refs, ObjectRef("ConfigMap", name))


TRAIN = TrainKind()
