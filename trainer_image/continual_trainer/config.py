"""The trainer's configuration contract.

One :class:`TrainerConfig` describes one trainer invocation, which trains one data batch of one continual
run (``batch``), or several queued ones back to back in one process (``batch`` then ``nextBatches``:
coalesced batches). The operator renders it (camelCase YAML, the same field names as the custom resource's
``spec.training``/``spec.lora``) into the Job's ConfigMap; local mode writes it to a file; the trainer parses
it here. Keep this module free of torch and transformers (an import-linter contract checks it): the operator
imports it to render and validate configs.

Every field is documented in its ``description``; those texts become ``kubectl explain`` output in the CRD.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

#: Batch ids become file names in the ledger and label values in Kubernetes: keep them DNS-label-like.
BATCH_ID_PATTERN = r"^[a-z0-9]([-a-z0-9._]{0,61}[a-z0-9])?$"

#: Schedules whose value at a step depends on the total number of steps. Rebuilt on every resume from the
#: new ``max_steps``, they make the learning rate collapse at each batch end and jump back up, so we refuse
#: them and name a continuous policy instead.
UNSAFE_SCHEDULES: dict[str, str] = {
    "linear": "it decays to 0 at the total step count, which a continual run does not have",
    "cosine": "it decays to 0 at the total step count, which a continual run does not have",
    "cosine_with_restarts": "its cycles are fractions of the total step count",
    "polynomial": "it decays to the end LR at the total step count",
    "warmup_stable_decay": "its decay phase is placed relative to the total step count",
    "cosine_with_min_lr": "it decays to the minimum at the total step count",
    "reduce_lr_on_plateau": "its state depends on evaluation metrics that a batch-by-batch run does not keep",
}


#: The most batches one trainer process trains back to back (``training.maxBatchesPerJob``'s bound): their
#: results must fit in one termination message (4096 bytes; see ``records.JobResult``).
MAX_BATCHES_PER_JOB = 16


class Model(BaseModel):
    """Base for contract models: camelCase on the wire, snake_case in Python, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )


class LRSchedule(Model):
    """The learning-rate policy: a pure function of (global step, batch start, batch end).

    Owned by the project rather than by ``transformers`` so that a run resumed in a new process for every
    batch follows exactly the same LR curve as an uninterrupted one.
    """

    type: str = Field(
        default="constant",
        description=(
            "One of: constant; constant_with_warmup (linear warm-up over warmupSteps, once per run); "
            "inverse_sqrt (warm-up, then lr * sqrt(timescale / step)); rewarm (inside every batch: linear "
            "warm-up then decay to minLrRatio * lr at the batch end, as studied for continual pre-training). "
            "Schedules that depend on a total step count (linear, cosine, polynomial, ...) are rejected."
        ),
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        description="Warm-up length in optimizer steps (constant_with_warmup, inverse_sqrt: once per run; "
        "rewarm: at the start of every batch).",
    )
    warmup_ratio: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="rewarm only: warm-up as a fraction of the batch's own steps (instead of warmupSteps).",
    )
    timescale: int | None = Field(
        default=None,
        ge=1,
        description="inverse_sqrt only: the step at which the decay starts (defaults to warmupSteps, or 1).",
    )
    decay: Literal["cosine", "linear"] = Field(
        default="cosine", description="rewarm only: the shape of the decay inside each batch."
    )
    min_lr_ratio: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="rewarm only: the LR at the end of each batch (and at the start of its warm-up), as a "
        "fraction of learningRate.",
    )

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value in UNSAFE_SCHEDULES:
            raise ValueError(
                f"lrSchedule.type={value!r} is not allowed: {UNSAFE_SCHEDULES[value]}; resumed batch by batch, "
                "the LR would collapse at each batch end and jump back up. Use 'constant', "
                "'constant_with_warmup', 'inverse_sqrt', or 'rewarm' (warm-up and decay inside each batch)."
            )
        if value not in {"constant", "constant_with_warmup", "inverse_sqrt", "rewarm"}:
            raise ValueError(
                f"lrSchedule.type={value!r} is unknown: use one of 'constant', 'constant_with_warmup', "
                "'inverse_sqrt', 'rewarm'."
            )
        return value

    @model_validator(mode="after")
    def _ratio_only_for_rewarm(self) -> Self:
        if self.warmup_ratio is not None and self.type != "rewarm":
            raise ValueError(
                f"lrSchedule.warmupRatio is only valid with type 'rewarm' (got type {self.type!r}): a ratio "
                "needs a total step count, which a continual run does not have. Use warmupSteps instead."
            )
        if self.warmup_ratio is not None and self.warmup_steps:
            raise ValueError("lrSchedule: set warmupSteps or warmupRatio, not both.")
        return self


class LoraSpec(Model):
    """The LoRA adapter. Fixed for the life of a run: a change is refused before training (config drift)."""

    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the modules that get adapters (e.g. q_proj, v_proj).",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases are trained.")

    @field_validator("target_modules")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        # Order does not matter to PEFT; normalising it keeps drift detection from firing on a reorder.
        return sorted(set(value))


class BaseModelSpec(Model):
    """Where the base causal LM comes from."""

    path: str | None = Field(
        default=None, description="A local folder saved with save_pretrained (e.g. on the run's volume)."
    )
    id: str | None = Field(default=None, description="A model id on a model hub (needs network access).")
    revision: str | None = Field(
        default=None, description="Hub revision (commit, tag or branch); pin a commit for reproducibility."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.path is None) == (self.id is None):
            raise ValueError(
                "baseModel: set exactly one of 'path' (a local folder) or 'id' (a hub model id)."
            )
        return self

    @property
    def source(self) -> str:
        """What from_pretrained is given."""
        return self.path if self.path is not None else str(self.id)


class TrainingSpec(Model):
    """Optimisation settings. Most may change between batches; a change applies from the next batch."""

    learning_rate: float = Field(
        default=2e-4,
        gt=0.0,
        le=1.0,
        description="Peak learning rate. A change takes effect from the next batch (a retried batch keeps "
        "the value it started with).",
    )
    lr_schedule: LRSchedule = Field(default_factory=LRSchedule, description="Learning-rate policy.")
    per_device_batch_size: int = Field(default=4, ge=1, description="Samples per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    epochs_per_batch: int = Field(default=1, ge=1, description="Passes over each data batch.")
    max_seq_length: int = Field(default=512, ge=8, description="Samples are truncated to this many tokens.")
    save_steps: int = Field(
        default=50,
        ge=1,
        description="A checkpoint every this many steps inside a batch (counted from the batch start); one "
        "is always written at the batch end.",
    )
    checkpoints_kept: int = Field(
        default=3,
        ge=1,
        description="Complete checkpoints kept; the one the last completed batch ended on is never deleted.",
    )
    seed: int = Field(default=42, ge=0, description="Seeds data order (with the batch id) and dropout.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="Compute precision (bf16 needs a GPU that supports it)."
    )
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0.0, description="Gradient clipping (0 disables it).")
    max_batches_per_job: int = Field(
        default=4,
        ge=1,
        le=MAX_BATCHES_PER_JOB,
        description="When several batches of a run are queued, one trainer process trains up to this many "
        "back to back (coalesced: imports, tokenizer and base model stay loaded; each batch keeps its own "
        "ledger record, batch-end checkpoint, adapter and result). 1: one process per batch. At most 16. "
        "It does not change what is trained: coalesced batches end bit for bit where one process per batch "
        "would.",
    )


#: A pinned content checksum: 64 lowercase hex digits (what ``sha256sum`` prints).
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class DataSpec(Model):
    """One data batch: a path on the run's volume, or an object-store URI (exactly one of them)."""

    path: str | None = Field(
        default=None,
        description="A file or a folder of files (read in name order). *.jsonl: objects with 'text', or with "
        "'prompt' and 'completion'; *.txt: one sample per non-empty line.",
    )
    uri: str | None = Field(
        default=None,
        description="An object store location instead of a path: s3://bucket/key (one object) or "
        "s3://bucket/prefix/ (every object below the prefix, in key order). The objects are downloaded to "
        "cache/<batch>/ on the run's volume, verified, and trained from there (see docs/data.md).",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="uri only: pins the content (64 lowercase hex digits): the sha256 of the object, or for a "
        "prefix the sha256 of its canonical listing (docs/data.md). Other bytes are refused (exit 64).",
    )
    keep_cache: bool = Field(
        default=False,
        description="uri only: keep the downloaded copy in cache/<batch>/ after the batch completed "
        "(default: deleted at the batch end).",
    )
    format: Literal["auto", "jsonl", "text"] = Field(
        default="auto", description="auto: by extension (.jsonl/.json -> jsonl, anything else -> text)."
    )

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: str | None) -> str | None:
        if value is not None:
            from continual_trainer.objectstore import parse_s3_uri

            parse_s3_uri(value)  # a ValueError names the URI and the expected form
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.path is None) == (self.uri is None):
            raise ValueError(
                "data: set exactly one of 'path' (a file or folder on the run's volume) or 'uri' "
                "(s3://bucket/key or s3://bucket/prefix/)."
            )
        if self.path is not None and (self.sha256 is not None or self.keep_cache):
            raise ValueError(
                "data: 'sha256' and 'keepCache' apply to 'uri' data only; remove them from a 'path' batch."
            )
        return self


class ObjectStoreClientSpec(Model):
    """How the trainer reaches the object store. Credentials are never here: the standard boto3 chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN in the environment, IRSA, instance
    roles) supplies them."""

    endpoint_url: str | None = Field(
        default=None,
        alias="endpointURL",
        description="The S3 endpoint (e.g. https://minio.example:9000); empty: AWS S3 for the region.",
    )
    region: str | None = Field(default=None, description="The region (empty: the boto3 default chain).")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket in the path (path: what MinIO and most self-hosted stores need) or in the host "
        "name (virtual); auto lets botocore decide.",
    )
    ca_bundle_path: str | None = Field(
        default=None,
        description="A PEM file of CA certificates the endpoint's TLS certificate is checked against "
        "(empty: the system's CAs).",
    )


class BatchSpec(Model):
    """Which batch this invocation trains."""

    id: Annotated[str, Field(pattern=BATCH_ID_PATTERN)] = Field(
        description="Unique, stable id of the batch within the run (lowercase letters, digits, '-', '.', '_')."
    )
    data: DataSpec


class KubernetesProgressSpec(Model):
    """The custom resource the trainer reports to (inside a Job: its own run, through its ServiceAccount)."""

    group: str = "continual.dev"
    version: str = "v1alpha1"
    plural: str = "continualtrainingruns"
    namespace: str
    name: str
    min_interval_seconds: float = Field(default=2.0, ge=0.0, description="Throttle for status patches.")


class ProgressSpec(Model):
    """Where progress events go."""

    stdout: bool = Field(default=True, description="JSON lines on standard output.")
    status_file: bool = Field(default=True, description="status.json on the run's volume.")
    every_steps: int = Field(default=1, ge=1, description="Emit a progress event every this many steps.")
    kubernetes: KubernetesProgressSpec | None = Field(
        default=None, description="Patch the run's custom-resource status (set by the operator)."
    )


class TrainerConfig(Model):
    """One trainer invocation: train one batch of one run (coalesced: several in order, see nextBatches)."""

    run_name: str = Field(description="The run's name (for logs and the result record).")
    run_namespace: str | None = Field(
        default=None,
        description="The run's namespace ('local' in local mode). With runName and runUid it names the run "
        "that owns the run folder: the run record keeps it, and another run's config is refused.",
    )
    run_uid: str | None = Field(
        default=None,
        description="The run's metadata.uid ('local:<run name>' in local mode), recorded with the owner.",
    )
    run_dir: str = Field(
        description="The run's folder on the persistent volume: checkpoints, ledger, adapters, status."
    )
    data_root: str | None = Field(
        default=None,
        description="The folder every data path (the batch's path, each file of a folder batch, with "
        "symlinks followed) and an on-volume baseModel.path must resolve inside; anything outside is "
        "refused (exit 64). The operator sets the volume's mount, /data. Default: runDir.",
    )
    base_model: BaseModelSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    batch: BatchSpec
    next_batches: list[BatchSpec] = Field(
        default_factory=list,
        # Absent from a single-batch config on the wire (it stays what it was before coalescing existed).
        exclude_if=lambda value: not value,
        description="Coalesced batches: more batches to train after 'batch', in order, in the same process "
        "(the model stays loaded). Each is trained exactly as its own invocation would be (its own ledger "
        "record, checkpoint, adapter export and result); the invocation stops at the first batch that does "
        "not complete (preempted or failed), leaving the batches after it untouched. At most "
        "training.maxBatchesPerJob batches in all, with distinct ids.",
    )
    progress: ProgressSpec = Field(default_factory=ProgressSpec)
    object_store: ObjectStoreClientSpec | None = Field(
        default=None,
        description="How to reach the object store holding uri batches (empty: AWS S3 with the boto3 "
        "defaults).",
    )
    termination_message_path: str | None = Field(
        default="/dev/termination-log",
        description="Where the result record goes for Kubernetes (null: nowhere).",
    )
    abandon_batches: list[str] = Field(
        default_factory=list,
        description="Batches given up on (failed permanently, or out of retries, under a SkipBatch policy): "
        "an unfinished ledger record of theirs is closed as failed, and checkpoints they trained past the "
        "last completed batch are moved to quarantine (not deleted), so this batch starts where the last "
        "completed one ended.",
    )
    trace_samples: bool = Field(
        default=False,
        description="Debugging and tests: record the sample ids of every optimizer step in trace.jsonl.",
    )

    @model_validator(mode="after")
    def _coalesced_batches(self) -> Self:
        ids = [self.batch.id, *(b.id for b in self.next_batches)]
        if len(ids) > self.training.max_batches_per_job:
            raise ValueError(
                f"nextBatches: {len(ids)} batches in one invocation (batch and {len(self.next_batches)} more) but "
                f"training.maxBatchesPerJob is {self.training.max_batches_per_job}: pass fewer batches or raise "
                f"training.maxBatchesPerJob (at most {MAX_BATCHES_PER_JOB})"
            )
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(
                f"nextBatches: batch id {twice[0]!r} appears more than once in batch and nextBatches: list each "
                "batch once"
            )
        return self

    @property
    def root(self) -> Path:
        """The run's folder as a Path."""
        return Path(self.run_dir)

    def batch_configs(self) -> list[TrainerConfig]:
        """One single-batch config per batch of the invocation, in order (just ``[self]`` for one batch)."""
        if not self.next_batches:
            return [self]
        return [
            self.model_copy(update={"batch": b, "next_batches": []}) for b in [self.batch, *self.next_batches]
        ]


def coalesce(configs: list[TrainerConfig]) -> TrainerConfig:
    """One coalesced config for single-batch configs of one run, in order (the inverse of ``batch_configs``).

    How the operator and local mode build a coalesced invocation: render each queued batch's config as for
    a Job of its own, take up to ``training.maxBatchesPerJob`` of them, and coalesce them. They must differ
    in their batch only (a ValueError names the first field that differs); the result is validated like a
    parsed config (too many batches, an id twice).
    """
    if not configs:
        raise ValueError("coalesce: no configs given")
    first = configs[0]
    common = first.model_dump(exclude={"batch", "next_batches"})
    for other in configs[1:]:
        theirs = other.model_dump(exclude={"batch", "next_batches"})
        differ = next((k for k in common if common[k] != theirs[k]), None)
        if differ is not None or other.next_batches:
            field = differ or "next_batches"
            raise ValueError(
                f"coalesce: the config of batch {other.batch.id!r} differs from that of batch "
                f"{first.batch.id!r} in {field}: only configs that differ in their batch can be trained in "
                "one process"
            )
    data = first.model_dump(by_alias=True)
    data["nextBatches"] = [c.batch.model_dump(by_alias=True) for c in configs[1:]]
    return TrainerConfig.model_validate(data)


def parse_config(text: str) -> TrainerConfig:
    """Parse YAML or JSON text into a config (pydantic errors propagate; the CLI turns them into exit codes)."""
    import yaml

    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise TypeError("the trainer config must be a mapping (YAML or JSON object)")
    return TrainerConfig.model_validate(data)


def is_valid_batch_id(value: str) -> bool:
    """Whether a batch id is acceptable (used by the operator to derive ids from object names)."""
    return re.fullmatch(BATCH_ID_PATTERN, value) is not None
