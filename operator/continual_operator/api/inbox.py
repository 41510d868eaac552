"""The S3 inbox of a run: ``spec.inbox`` (where new batches come from) and ``status.inbox`` (how far it got).

The operator lists ``spec.inbox.uri`` every ``pollSeconds`` and creates one TrainingBatch per new object
(``batchFrom: Object``) or per sub-prefix whose completion marker exists (``batchFrom: Prefix``), in key
order. ``status.inbox.watermark`` is the last key (or sub-prefix) ingested: everything at or below it has
been decided once and is never ingested again, so an operator restart, a deleted TrainingBatch or a
re-listing creates nothing twice. The rules are in :mod:`continual_operator.inbox.decide` and docs/inbox.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from continual_operator.api.meta import StatusModel, Timestamp
from continual_trainer.config import Model

#: ``s3://bucket/`` or ``s3://bucket/prefix/``: an inbox is always a prefix (it ends with ``/``).
INBOX_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/([^\s]*/)?$"


class InboxSpec(Model):
    """An S3 prefix the operator watches for new batches (reached with ``spec.objectStore``)."""

    uri: str = Field(
        pattern=INBOX_URI_PATTERN,
        description="The prefix to watch: s3://bucket/prefix/ (it ends with '/'). Keys below it are taken "
        "in key order: name them so that they sort (dates, zero-padded sequence numbers).",
    )
    poll_seconds: int = Field(
        default=30, ge=1, le=86400, description="How often the prefix is listed for new keys."
    )
    include: list[str] = Field(
        default_factory=list,
        description="Glob patterns (fnmatch, on the key relative to the prefix): only matching keys become "
        "batches. Empty: every key.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Glob patterns (on the key relative to the prefix) of keys that never become batches; "
        "exclude wins over include.",
    )
    batch_from: Literal["Object", "Prefix"] = Field(
        default="Object",
        description="Object: one TrainingBatch per object. Prefix: one TrainingBatch per sub-prefix "
        "(prefix/<name>/), created once its marker object exists; the batch's data is every object below it.",
    )
    marker: str = Field(
        default="_SUCCESS",
        min_length=2,
        pattern=r"^[_.][^/]*$",
        description="batchFrom Prefix: the object whose presence says a sub-prefix is complete (the Hadoop "
        "convention). It starts with '_' or '.', the names the trainer never reads as data, and is never "
        "data in either mode.",
    )
    max_keys_per_poll: int = Field(
        default=1000,
        ge=1,
        le=100000,
        description="At most this many keys are listed (and batches created) per poll: bounded work; a "
        "backlog is taken over several polls.",
    )

    @property
    def bucket(self) -> str:
        """The bucket part of ``uri``."""
        return self.uri.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The key prefix part of ``uri`` ('' for a whole bucket, else ending with '/')."""
        return self.uri.removeprefix("s3://").split("/", 1)[1]


class InboxStatus(StatusModel):
    """How far the S3 inbox has been ingested. Written by the operator."""

    uri: str | None = Field(
        default=None,
        description="The spec.inbox.uri the watermark belongs to: another URI starts from the beginning.",
    )
    batch_from: str | None = Field(
        default=None, description="The spec.inbox.batchFrom the watermark belongs to (Object or Prefix)."
    )
    watermark: str | None = Field(
        default=None,
        description="The last key (batchFrom Object) or sub-prefix (batchFrom Prefix) ingested, relative to "
        "the inbox prefix. Keys sort uniquely, so there are no ties: a key equal to the watermark is the one "
        "ingested (a re-upload of it is reported as changed, never retrained).",
    )
    watermark_etag: str | None = Field(
        default=None, description="The ETag of the object (or marker) at the watermark when it was ingested."
    )
    last_poll_time: Timestamp | None = Field(default=None, description="When the inbox was last listed.")
    last_ingest_time: Timestamp | None = Field(
        default=None, description="When the inbox last created a TrainingBatch."
    )
    batches_created: int | None = Field(
        default=None, description="TrainingBatches the inbox has created so far."
    )
    late_objects: int | None = Field(
        default=None,
        description="Keys that appeared below the watermark and were not trained (each has a Warning Event).",
    )
    changed_objects: int | None = Field(
        default=None,
        description="Ingested keys whose object changed or was deleted afterwards (each has a Warning Event).",
    )
    reported_late: list[str] = Field(
        default_factory=list,
        description="The latest keys reported as below the watermark (at most 100), so that each is "
        "reported once even when two checks fall within the store's one-second clock resolution.",
    )
    audit_cursor: str | None = Field(
        default=None,
        description="Where the background check of keys below the watermark (late, changed, deleted) goes "
        "on at the next poll.",
    )
    audit_pass_time: Timestamp | None = Field(
        default=None, description="When the current pass of that check started."
    )
    previous_audit_pass_time: Timestamp | None = Field(
        default=None,
        description="When the previous pass started: objects below the watermark modified after it are new.",
    )
    last_error: str | None = Field(
        default=None, description="The last object-store error (cleared once a poll succeeds)."
    )
    consecutive_failures: int | None = Field(
        default=None, description="Polls that failed in a row (the retry delay doubles with each)."
    )
