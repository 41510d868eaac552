"""The TrainingBatch custom resource: one data batch of one run, trained exactly once, in order.

One object per batch keeps GitOps simple (a new file per batch) and gives every batch its own status:
attempts, the step range it trained, its loss. The batch's name is the trainer's batch id (its ledger
record on the volume), so ``runName`` and ``data`` are immutable: a batch that trained some data cannot
later claim to have trained other data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from continual_operator.api.meta import (
    API_VERSION,
    ImmutableField,
    ObjectMeta,
    PrinterColumn,
    ResourceInfo,
    StatusModel,
    Timestamp,
)
from continual_trainer.config import DataSpec, Model

#: No "Skipped": a batch given up on under ``onPermanentFailure: SkipBatch`` is Failed (it did fail; the run
#: goes on), and nothing else skips a batch. A phase that is never set only makes clients handle a ghost.
BatchPhase = Literal["Queued", "Training", "Succeeded", "Failed"]


class BatchData(DataSpec):
    """Where the batch's data is: exactly one of path (on the run's volume) or uri (an object store)."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["path"]}, {"required": ["uri"]}]})

    path: str | None = Field(
        default=None,
        min_length=1,
        description="A file or a folder of files (read in name order) on the run's volume: relative to the "
        "run folder, or absolute (the volume is mounted at /data). *.jsonl: objects with 'text', or with "
        "'prompt' and 'completion'; *.txt: one sample per non-empty line.",
    )


class TrainingBatchSpec(Model):
    """Which run trains this batch, and on what data."""

    run_name: str = Field(min_length=1, description="The ContinualTrainingRun (same namespace). Immutable.")
    data: BatchData = Field(description="The batch's data. Immutable.")
    order: int | None = Field(
        default=None,
        description="Explicit position: batches with an order train first, ascending; then the others by "
        "creation time, then by name.",
    )


class TrainingBatchStatus(StatusModel):
    """What happened to the batch. Written by the operator."""

    phase: BatchPhase | None = Field(
        default=None,
        description="Queued, Training, Succeeded, Failed (permanently, or out of retries; also under "
        "onPermanentFailure SkipBatch, where the run goes on with the next batch).",
    )
    attempts: int | None = Field(default=None, description="Jobs started for the batch (the latest attempt).")
    preemptions: int | None = Field(
        default=None, description="Attempts that were preempted (not counted as failures)."
    )
    failures: int | None = Field(default=None, description="Attempts that failed (counted against retries).")
    start_step: int | None = Field(default=None, description="Global step at which the batch started.")
    end_step: int | None = Field(default=None, description="Global step at which the batch ended.")
    target_step: int | None = Field(default=None, description="Global step the batch trains to.")
    samples: int | None = Field(default=None, description="Samples in the batch.")
    tokens: int | None = Field(default=None, description="Trained tokens over the whole batch.")
    mean_loss: float | None = Field(default=None, description="Token-weighted mean training loss.")
    job: str | None = Field(default=None, description="The Job of the latest attempt.")
    world_size: int | None = Field(
        default=None,
        description="Trainer processes of the latest attempt: spec.resources.nodes x gpus (x 1 on CPU), "
        "as it was when the attempt started.",
    )
    checkpoint: str | None = Field(default=None, description="The checkpoint the batch ended on.")
    reason: str | None = Field(default=None, description="Why the batch is in its phase (CamelCase).")
    message: str | None = Field(default=None, description="Details and, for failures, the fix.")
    next_attempt_time: Timestamp | None = Field(
        default=None, description="A retry waits until this time (exponential back-off)."
    )
    last_transition_time: Timestamp | None = Field(default=None, description="When the phase last changed.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the operator last acted on."
    )


class TrainingBatch(StatusModel):
    """One data batch of a ContinualTrainingRun."""

    api_version: str = Field(default=API_VERSION, description="continual.dev/v1alpha1.")
    kind: Literal["TrainingBatch"] = Field(default="TrainingBatch", description="The kind.")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: TrainingBatchSpec = Field(description="The desired state.")
    status: TrainingBatchStatus = Field(
        default_factory=TrainingBatchStatus, description="The observed state."
    )


_CREATE_NEW_BATCH = "create a new TrainingBatch for other data"

BATCH_INFO = ResourceInfo(
    kind="TrainingBatch",
    plural="trainingbatches",
    singular="trainingbatch",
    short_names=("tbatch",),
    model=TrainingBatch,
    spec_model=TrainingBatchSpec,
    status_model=TrainingBatchStatus,
    printer_columns=(
        PrinterColumn("Run", "string", ".spec.runName", "The run."),
        PrinterColumn("Phase", "string", ".status.phase", "Where the batch stands."),
        PrinterColumn("Start", "integer", ".status.startStep", "First global step."),
        PrinterColumn("End", "integer", ".status.endStep", "Last global step."),
        PrinterColumn("Loss", "number", ".status.meanLoss", "Mean training loss."),
        PrinterColumn("Attempts", "integer", ".status.attempts", "Jobs started.", priority=1),
        PrinterColumn("Job", "string", ".status.job", "Latest Job.", priority=1),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
        PrinterColumn("Reason", "string", ".status.reason", "Why the batch is in its phase.", priority=1),
        PrinterColumn(
            "Message", "string", ".status.message", "Details and, for failures, the fix.", priority=1
        ),
    ),
    immutable=(
        ImmutableField(
            "runName", "spec.runName is immutable: the batch belongs to one run; " + _CREATE_NEW_BATCH
        ),
        ImmutableField(
            "data",
            "spec.data is immutable: the batch id stands for this data in the run's ledger; "
            + _CREATE_NEW_BATCH,
        ),
    ),
)
