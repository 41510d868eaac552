"""The ContinualTrainingRun custom resource: one LoRA adapter trained batch after batch, forever.

The spec embeds the trainer's own contract (:mod:`continual_trainer.config`: ``baseModel``, ``lora``,
``training``) unchanged, so that what a user writes is exactly what the trainer validates; the rest says
where the run lives (storage), how its Jobs look (resources, scheduling, image, env) and how failures are
handled. ``baseModel``, ``lora`` and ``storage`` are immutable (CEL rules in the CRD): the checkpoints on the
volume were trained with them. Where the API server does not enforce CEL, the operator refuses a change
itself against ``status.trainedWith`` (:mod:`continual_operator.planning.refusals`), and the trainer refuses one
anyway (configuration drift).

The status has two writers. The operator owns phase, counters, conditions, ``currentJob`` and
``completedStep``; the trainer pod, while it trains, merge-patches ``globalStep``, ``latestCheckpoint``,
``lastLoss``, ``lastLearningRate``, ``currentBatch``, ``currentBatchProgress`` and ``lastProgressTime``
(see :func:`continual_trainer.progress.status_patch`): those names are a contract.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from continual_operator.api.inbox import InboxSpec, InboxStatus
from continual_operator.api.meta import (
    API_VERSION,
    Condition,
    EnvFromSource,
    EnvVar,
    FreeForm,
    ImmutableField,
    LocalObjectReference,
    ObjectMeta,
    PrinterColumn,
    ResourceInfo,
    SecretKeyRef,
    StatusModel,
    Timestamp,
    Toleration,
)
from continual_operator.cadence import validate_schedule
from continual_trainer.config import BaseModelSpec, LoraSpec, Model, TrainingSpec

DEFAULT_IMAGE = "ghcr.io/continual-training/trainer:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"
#: A Kubernetes quantity as users write them (100Gi, 16, 500m, 1.5G).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i|[mkMGTPE])?$"


def _check_quantity(value: str) -> str:
    """The same rule as the CRD's pattern, with a message a person can act on (not the regex)."""
    if re.fullmatch(QUANTITY_PATTERN, value) is None:
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity: use e.g. 10Gi (binary suffixes Ki Mi Gi Ti Pi Ei), "
            "10G (decimal k M G T P E), a plain number, or 500m for CPU"
        )
    return value


#: A quantity field: checked with :func:`_check_quantity`, and ``pattern`` in the CRD schema.
Quantity = Annotated[
    str, AfterValidator(_check_quantity), Field(json_schema_extra={"pattern": QUANTITY_PATTERN})
]

RunPhase = Literal["Pending", "Training", "Idle", "Suspended", "Halted", "Failed"]


class RunBaseModelSpec(BaseModelSpec):
    """The base causal LM: a folder on the run's volume (path) or a hub model (id, revision, token).

    A relative path is resolved from the volume's root, so several runs can share one copy of a base model.
    """

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["path"]}, {"required": ["id"]}]})

    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="A Secret key holding a hub access token (for gated or private models); given to the "
        "trainer as HF_TOKEN.",
    )

    def to_trainer(self, path: str | None = None) -> BaseModelSpec:
        """The trainer's view: the same fields without the secret reference (optionally another path)."""
        return BaseModelSpec(path=path if path is not None else self.path, id=self.id, revision=self.revision)


AccessMode = Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany", "ReadOnlyMany"]


def _read_write_once() -> list[AccessMode]:
    return ["ReadWriteOnce"]


class ClaimTemplate(Model):
    """A PersistentVolumeClaim the operator creates for the run (named ``<run>-data``)."""

    storage_class_name: str | None = Field(
        default=None, description="StorageClass of the claim (empty: the cluster's default class)."
    )
    size: Quantity = Field(description="Requested capacity, e.g. 100Gi.")
    access_modes: list[AccessMode] = Field(
        default_factory=_read_write_once,
        min_length=1,
        description="Access modes; one trainer writes at a time, so ReadWriteOnce is enough.",
    )


class StorageSpec(Model):
    """The persistent volume holding the run folder: checkpoints, ledger, adapters, status."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["existingClaim"]}, {"required": ["claimTemplate"]}]}
    )

    existing_claim: str | None = Field(default=None, description="Use this existing PersistentVolumeClaim.")
    claim_template: ClaimTemplate | None = Field(
        default=None, description="Create a PersistentVolumeClaim from this template."
    )
    sub_path: str | None = Field(
        default=None,
        description="The run folder inside the volume (relative, no '..'); empty: the volume's root. Set it "
        "when several runs share one claim.",
    )
    retain_on_delete: bool = Field(
        default=True,
        description="Keep the created claim (and the checkpoints on it) when the run is deleted. Fixed at "
        "creation like the rest of storage.",
    )

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.existing_claim is None) == (self.claim_template is None):
            raise ValueError("storage: set exactly one of 'existingClaim' or 'claimTemplate'.")
        return self

    @field_validator("sub_path")
    @classmethod
    def _inside_volume(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normal = posixpath.normpath(value)
        if posixpath.isabs(value) or normal == ".." or normal.startswith("../"):
            raise ValueError(
                f"storage.subPath={value!r} must be a relative folder inside the volume (e.g. runs/my-run)."
            )
        return None if normal == "." else normal


class CredentialsSecretRef(Model):
    """A Secret holding the object store's access keys. Its keys reach the trainer pod as environment
    variables (secretKeyRef), never the ConfigMap, the status, Events or logs."""

    name: str = Field(min_length=1, description="The Secret's name (same namespace as the run).")
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID",
        min_length=1,
        alias="accessKeyIDKey",
        description="The key holding the access key id (given to the trainer as AWS_ACCESS_KEY_ID).",
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        min_length=1,
        description="The key holding the secret access key (given to the trainer as AWS_SECRET_ACCESS_KEY).",
    )
    session_token_key: str | None = Field(
        default=None,
        min_length=1,
        description="The key holding a session token, for temporary credentials (AWS_SESSION_TOKEN).",
    )


class CABundleSecretRef(Model):
    """A Secret key holding PEM CA certificates for a store whose TLS certificate is not publicly signed."""

    name: str = Field(min_length=1, description="The Secret's name (same namespace as the run).")
    key: str = Field(default="ca.crt", min_length=1, description="The key holding the PEM bundle.")


class ObjectStoreSpec(Model):
    """How the run's Jobs reach the object store holding its uri batches (AWS S3, MinIO, Ceph RGW, R2...).

    Everything is optional: without it, uri batches are read from AWS S3 with the standard boto3 chain
    (IRSA, instance roles, the pod's environment)."""

    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="The S3 endpoint, e.g. https://minio.example.com:9000 (empty: AWS S3 for the region).",
    )
    region: str | None = Field(default=None, min_length=1, description="The region (e.g. us-east-1).")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="path: the bucket in the URL path (MinIO and most self-hosted stores); virtual: in the "
        "host name; auto: botocore decides.",
    )
    credentials_secret_ref: CredentialsSecretRef | None = Field(
        default=None,
        description="A Secret with the access keys (empty: the standard boto3 chain, e.g. IRSA or an "
        "instance role).",
    )
    ca_bundle_secret_ref: CABundleSecretRef | None = Field(
        default=None,
        description="A Secret key with the CA bundle the endpoint's certificate is verified against; "
        "mounted read-only into the trainer pod.",
    )


#: The largest gang a run may ask for (spec.resources.nodes): far above what one continual run needs, low
#: enough that a typo (1000 for 100) is refused before it asks a cluster for a thousand GPU nodes.
MAX_NODES = 256


class ResourcesSpec(Model):
    """Compute for each trainer pod, and how many pods (nodes) train one batch together."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs per trainer pod, i.e. per node (0: train on CPU). With more than one, or with "
        "nodes > 1, the pod runs torchrun with one trainer process per GPU (see docs/scaling.md).",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Pods (one per node) that train each batch together, each with `gpus` GPUs: the world "
        "size is nodes x gpus. More than 1 runs the batch as a JobSet when its CRD is installed, else as an "
        "Indexed Job with a headless Service; every node mounts the run's volume, so it must be "
        "ReadWriteMany.",
    )
    gpu_resource_name: str = Field(
        default=GPU_RESOURCE, description="The extended resource GPUs are requested as (e.g. amd.com/gpu)."
    )
    cpu: Quantity | None = Field(
        default=None,
        description="CPU request (no limit is set: throttling a data loader slows the GPU down).",
    )
    memory: Quantity | None = Field(default=None, description="Memory request and limit (e.g. 64Gi).")


class SchedulingSpec(Model):
    """Where trainer pods may run, and how they queue."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod requires.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pod tolerates.")
    affinity: FreeForm | None = Field(
        default=None, description="A pod affinity object, passed to the pod unchanged."
    )
    priority_class_name: str | None = Field(default=None, description="The pod's PriorityClass.")
    kueue_queue_name: str | None = Field(
        default=None,
        description="Submit Jobs to this Kueue LocalQueue (the kueue.x-k8s.io/queue-name label); Jobs are "
        "created suspended and Kueue admits them.",
    )


class FailurePolicy(Model):
    """What happens when a batch's Job fails. Preemptions are always retried and never counted."""

    max_retries_per_batch: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries of a batch after transient or unclassified failures (exit codes 75, 1, ...).",
    )
    on_permanent_failure: Literal["Halt", "SkipBatch"] = Field(
        default="Halt",
        description="When a batch fails permanently (exit code 64, or retries exhausted): Halt stops the run "
        "(no further batches); SkipBatch marks the batch Failed and goes on with the next one.",
    )
    backoff_seconds: int = Field(
        default=30,
        ge=1,
        description="Delay before the first retry; it doubles with every further failure.",
    )
    max_backoff_seconds: int = Field(default=900, ge=1, description="Upper bound of the retry delay.")
    start_deadline_seconds: int = Field(
        default=600,
        ge=1,
        description="Time a trainer pod may take to start its container (scheduling, image pull, Secrets and "
        "ConfigMaps named in env/envFrom, volume mounts). Past it the Job is stopped and the attempt counts as "
        "a transient failure (retried with back-off). While it waits, the batch's reason and message say why "
        "(e.g. CreateContainerConfigError naming the missing Secret). Not counted while Kueue holds the Job.",
    )


class ProgressReporting(Model):
    """Progress reported by the trainer into this object's status while it trains."""

    enabled: bool = Field(
        default=True,
        description="Let the trainer patch this run's status (through a ServiceAccount that may patch only "
        "this object's status). Off: the pod gets no API credentials at all.",
    )
    min_interval_seconds: float = Field(
        default=2.0, ge=0.0, description="At most one progress patch per this many seconds."
    )
    every_steps: int = Field(default=1, ge=1, description="Report every this many optimizer steps.")


#: A snapshot folder: s3://bucket/prefix/<snapshotId>/ (it ends with '/').
SNAPSHOT_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^\s]*/)?$"
ConsolidationDtype = Literal["float32", "bfloat16", "float16"]


class _Cadence(Model):
    """When an artifact job runs: a cron schedule, every N batches, or both (whichever comes first)."""

    schedule: str | None = Field(
        default=None,
        min_length=1,
        description="A five-field cron expression (minute hour day-of-month month day-of-week), e.g. "
        "'0 3 * * *' for every day at 03:00 in timeZone. A missed tick (the operator was down, a batch "
        "held the volume) runs once as soon as it can, not once per missed tick.",
    )
    time_zone: str = Field(default="UTC", min_length=1, description="The IANA time zone of the schedule.")
    every_batches: int | None = Field(
        default=None, ge=1, description="Also run after this many batches completed since the last run."
    )

    def _check_cadence(self, field: str) -> None:
        if self.schedule is None and self.every_batches is None:
            raise ValueError(f"set {field}.schedule (cron) or {field}.everyBatches, or remove {field}")
        problem = validate_schedule(self.schedule or "* * * * *", self.time_zone, field=f"{field}.schedule")
        if problem is not None:
            raise ValueError(problem)


class SnapshotsSpec(_Cadence):
    """Verified snapshots of the run folder to S3 (docs/operations.md, "Backup and restore"); a snapshot Job
    never runs beside a trainer."""

    destination: str = Field(
        pattern=SNAPSHOT_URI_PATTERN,
        description="Where snapshots go: s3://bucket/prefix/ (each one in <prefix>/<snapshotId>/). Reached "
        "with spec.objectStore.",
    )
    keep: int = Field(default=7, ge=1, description="Committed snapshots kept (the newest ones, plus pins).")
    pin: list[str] = Field(
        default_factory=list,
        description="Snapshot ids never deleted by retention (e.g. 20261201T030000Z-step00001234).",
    )

    @model_validator(mode="after")
    def _cadence(self) -> Self:
        self._check_cadence("spec.snapshots")
        return self


class ConsolidationSpec(_Cadence):
    """A deployable Hugging Face model (base + adapter merged) written after training, on a cadence."""

    output: str = Field(
        min_length=1,
        description="Where the merged model goes: a folder on the run's volume (relative to it) or "
        "s3://bucket/prefix/ (reached with spec.objectStore). Published atomically.",
    )
    dtype: ConsolidationDtype = Field(
        default="float32", description="The merged weights' dtype (merged in float32, cast once)."
    )

    @model_validator(mode="after")
    def _cadence(self) -> Self:
        self._check_cadence("spec.consolidation")
        return self


class ContinualTrainingRunSpec(Model):
    """The desired state of a continual training run."""

    base_model: RunBaseModelSpec = Field(
        description="The base model: exactly one of path (a folder saved with save_pretrained; a relative path "
        "is resolved from the volume's root) or id (a hub model). Immutable."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="The LoRA adapter. Immutable.")
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Optimisation settings; a change applies from the next batch (a retry keeps the settings "
        "its batch started with).",
    )
    storage: StorageSpec = Field(description="The run's persistent volume. Immutable.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute per trainer pod.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Placement and queueing.")
    image: str = Field(default=DEFAULT_IMAGE, min_length=1, description="The trainer container image.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of the trainer image (empty: the Kubernetes default)."
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling the trainer image."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables of the trainer (they override the operator's own).",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, description="Environment variables from ConfigMaps or Secrets."
    )
    suspend: bool = Field(
        default=False,
        description="Stop training: the running batch checkpoints and stops (it resumes later), and no new "
        "batch starts until this is false again.",
    )
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Retries and halting.")
    termination_grace_period_seconds: int = Field(
        default=300,
        ge=1,
        description="Time the trainer gets after SIGTERM (preemption, suspend) to save a checkpoint.",
    )
    progress: ProgressReporting = Field(default_factory=ProgressReporting, description="Progress reporting.")
    object_store: ObjectStoreSpec | None = Field(
        default=None,
        description="How to reach the object store for batches with data.uri (empty: AWS S3 with the "
        "standard boto3 credential chain).",
    )
    inbox: InboxSpec | None = Field(
        default=None,
        description="Create a TrainingBatch for every new object (or completed sub-prefix) below an S3 "
        "prefix, in key order, exactly once (see docs/inbox.md). Reached with spec.objectStore.",
    )
    snapshots: SnapshotsSpec | None = Field(
        default=None, description="Snapshot the run folder to S3 on a schedule or every N batches."
    )
    restore_from: str | None = Field(
        default=None,
        pattern=SNAPSHOT_URI_PATTERN,
        description="A snapshot to start from: s3://bucket/prefix/<snapshotId>/. Honoured only on a run with no "
        "progress yet: a restore Job verifies and writes it before the first batch trains.",
    )
    consolidation: ConsolidationSpec | None = Field(
        default=None, description="Merge the adapter into the base model on a schedule or every N batches."
    )

    @model_validator(mode="after")
    def _gang_volume_is_shared(self) -> Self:
        """A gang's pods run on different nodes and all mount the run's volume (only the coordinator
        writes it, but every rank reads the data and the checkpoint it resumes from). A claim the operator
        creates must then be ReadWriteMany; an existing claim is the user's to check (docs/scaling.md)."""
        template = self.storage.claim_template
        if self.resources.nodes > 1 and template is not None and "ReadWriteMany" not in template.access_modes:
            raise ValueError(
                f"resources.nodes={self.resources.nodes} mounts the run's volume on every node: set "
                "storage.claimTemplate.accessModes to [ReadWriteMany] (with a storageClassName that supports "
                "it, e.g. NFS or CephFS), or use resources.nodes: 1 with more resources.gpus."
            )
        return self


class LastSnapshot(StatusModel):
    """The newest snapshot this run committed."""

    time: Timestamp = Field(description="When it was committed.")
    uri: str = Field(description="Its folder: s3://bucket/prefix/<snapshotId>/.")
    snapshot_id: str = Field(description="<UTC time>-step<globalStep>.")
    global_step: int = Field(description="The global step it holds.")
    batches: int = Field(description="The batches it holds.")


class LastConsolidation(StatusModel):
    """The newest merged model this run published."""

    time: Timestamp = Field(description="When it was published.")
    output: str = Field(description="Where it is.")
    global_step: int = Field(description="The global step it contains.")
    batches: int = Field(description="The batches it contains.")
    dtype: str = Field(description="Its weights' dtype.")


class TrainedStorage(StatusModel):
    """The folder the run trained in."""

    claim: str = Field(description="The PersistentVolumeClaim (spec.storage.existingClaim, or <run>-data).")
    sub_path: str | None = Field(default=None, description="spec.storage.subPath (empty: the volume's root).")


class TrainedWith(StatusModel):
    """What the run's checkpoints were trained with, recorded when its first Job is created and never changed.

    The operator refuses a spec that differs here (Degraded, reason SpecChangeRefused) whatever the API
    server enforces: these values cannot change under a run that has trained.
    """

    base_model: FreeForm = Field(description="spec.baseModel (path, or id and revision).")
    lora: FreeForm = Field(description="spec.lora.")
    storage: TrainedStorage = Field(description="The claim and subPath of spec.storage.")


class ContinualTrainingRunStatus(StatusModel):
    """Where the run stands. Written by the operator, and by the trainer pod while it trains."""

    phase: RunPhase | None = Field(
        default=None,
        description="Pending (work waits: a Job awaits admission or cannot start its pod, or a retry waits for "
        "its back-off), Training, Idle (no batch to train), Suspended, Halted (a batch failed permanently, steps "
        "were inconsistent, the spec changed in a way the run cannot follow, or another run holds its folder: "
        "see the Degraded condition), Failed (the spec is invalid).",
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the operator last acted on."
    )
    global_step: int | None = Field(
        default=None, description="The optimizer step training has reached; it never resets between batches."
    )
    latest_checkpoint: str | None = Field(default=None, description="The newest complete checkpoint.")
    last_loss: float | None = Field(default=None, description="The most recent training loss reported.")
    last_learning_rate: float | None = Field(default=None, description="The most recent learning rate.")
    current_batch: str | None = Field(default=None, description="The batch being trained.")
    current_batch_progress: float | None = Field(
        default=None, description="How much of the current batch is done, from 0 to 1."
    )
    current_job: str | None = Field(default=None, description="The Job training the current batch.")
    last_progress_time: Timestamp | None = Field(
        default=None, description="When the trainer last reported progress."
    )
    completed_step: int | None = Field(
        default=None,
        description="The step at which the last completed batch ended: where the next batch must start. "
        "Kept by the operator to check that steps are contiguous, even after old batches are deleted.",
    )
    batches_completed: int | None = Field(default=None, description="Batches trained successfully.")
    batches_queued: int | None = Field(default=None, description="Batches waiting to be trained.")
    batches_failed: int | None = Field(default=None, description="Batches that failed permanently.")
    trained_with: TrainedWith | None = Field(
        default=None,
        description="What the run trained with (baseModel, lora, the storage folder), recorded when its first "
        "Job was created; a spec that differs there is refused.",
    )
    inbox: InboxStatus | None = Field(
        default=None, description="How far spec.inbox has been ingested (the watermark), and its last error."
    )
    last_snapshot: LastSnapshot | None = Field(default=None, description="The newest committed snapshot.")
    last_consolidation: LastConsolidation | None = Field(
        default=None, description="The newest published merged model."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Training, Degraded and Suspended; InboxReady with spec.inbox.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ContinualTrainingRun(StatusModel):
    """A continual LoRA fine-tuning run: TrainingBatches are trained in order, each by one Job."""

    api_version: str = Field(default=API_VERSION, description="continual.dev/v1alpha1.")
    kind: Literal["ContinualTrainingRun"] = Field(default="ContinualTrainingRun", description="The kind.")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: ContinualTrainingRunSpec = Field(description="The desired state.")
    status: ContinualTrainingRunStatus = Field(
        default_factory=ContinualTrainingRunStatus, description="The observed state."
    )


RUN_INFO = ResourceInfo(
    kind="ContinualTrainingRun",
    plural="continualtrainingruns",
    singular="continualtrainingrun",
    short_names=("ctr",),
    model=ContinualTrainingRun,
    spec_model=ContinualTrainingRunSpec,
    status_model=ContinualTrainingRunStatus,
    printer_columns=(
        PrinterColumn(
            "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "The Ready condition."
        ),
        PrinterColumn("Phase", "string", ".status.phase", "Where the run stands."),
        PrinterColumn("Step", "integer", ".status.globalStep", "Global optimizer step."),
        PrinterColumn("Batches", "integer", ".status.batchesCompleted", "Batches trained."),
        PrinterColumn("Loss", "number", ".status.lastLoss", "Most recent training loss."),
        PrinterColumn("Queued", "integer", ".status.batchesQueued", "Batches waiting.", priority=1),
        PrinterColumn("Failed", "integer", ".status.batchesFailed", "Batches failed.", priority=1),
        PrinterColumn("Batch", "string", ".status.currentBatch", "Batch being trained.", priority=1),
        PrinterColumn(
            "Snapshot", "date", ".status.lastSnapshot.time", "Newest committed snapshot.", priority=1
        ),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
        PrinterColumn(
            "Message",
            "string",
            '.status.conditions[?(@.type=="Ready")].message',
            "Why the run is (not) ready, and what to do.",
            priority=1,
        ),
    ),
    immutable=(
        ImmutableField(
            "baseModel",
            "spec.baseModel is immutable: the run's checkpoints were trained on this base model; create a "
            "new ContinualTrainingRun for another base model",
        ),
        ImmutableField(
            "lora",
            "spec.lora is immutable: the run's adapter and optimizer state have this shape; create a new "
            "ContinualTrainingRun for other LoRA settings",
        ),
        ImmutableField(
            "storage",
            "spec.storage is immutable: the run's checkpoints and ledger live on this volume; create a new "
            "ContinualTrainingRun to train on other storage",
        ),
    ),
)
