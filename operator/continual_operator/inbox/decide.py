"""The pure S3-inbox decider: from one listing, the watermark and the existing batches, decide what to create.

Plain data in (:class:`Listing`, the run's ``status.inbox``, the batches that record an inbox source), an
:class:`InboxDecision` out; no boto3, no kopf, no Kubernetes client, no clock (an import-linter contract
keeps it so). The I/O around it is :mod:`continual_operator.inbox.store` (S3) and
:mod:`continual_operator.cluster.inbox_sync` (Kubernetes, through :mod:`continual_operator.cluster.k8s`).

The rules (docs/inbox.md says the same for users):

1. **Units.** ``batchFrom: Object``: every object below the prefix is a unit, named by its key relative to
   the prefix; keys ending with ``/`` (folder placeholders) and marker objects are never data.
   ``batchFrom: Prefix``: every sub-prefix ``<name>/`` directly below the prefix is a unit, complete once
   ``<name>/<marker>`` exists; its batch reads every object below it.
2. **Order.** Units are taken in key order (S3 lists keys in UTF-8 byte order, which is code-point order,
   so Python's ``str`` order is the same). Keys are unique, so there are no ties; the TrainingBatches get
   ``spec.order`` = their sequence number in the inbox, so that batches created in the same second still
   train in key order. In Prefix mode a sub-prefix without its marker stops the poll there: a later
   sub-prefix is not taken before an earlier one.
3. **Filters.** ``include``/``exclude`` are fnmatch globs on the relative key (the sub-prefix in Prefix
   mode); a unit they filter out is passed over for good (the watermark moves past it).
4. **Watermark.** ``status.inbox.watermark`` is the last unit decided. Only units above it are ever
   created, so a restart, a re-listing or a deleted TrainingBatch never ingests anything twice. Batch
   names are deterministic (:func:`inbox_batch_name`), so the I/O layer creates first and moves the
   watermark second: a crash in between re-creates the same names, answered 409 AlreadyExists.
5. **Below the watermark** (the audit: one page of keys at or below the watermark per poll, wrapping
   around, so each poll's work is bounded and the listing cost does not grow with history): a unit with no
   TrainingBatch whose object was modified since the previous audit pass began appeared late; it is not
   trained, and a Warning Event names the choices (copy it above the watermark, or apply a TrainingBatch
   by hand). A unit whose batch recorded another ETag or size was changed after ingestion; a batch whose
   unit is gone from a listed range was deleted after ingestion. Both get one Warning Event per change
   (noted on the batch) and are never retrained under the same batch.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from continual_operator.api import InboxSpec, InboxStatus
from continual_operator.api.meta import API_VERSION
from continual_operator.naming import (
    ANNOTATION_RUN,
    DNS_SUBDOMAIN_MAX,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    MANAGED_BY,
    label_value,
    source_batch_name,
)
from continual_operator.planning.actions import EmitEvent
from continual_operator.planning.status import parse_time, rfc3339

#: Annotations on a TrainingBatch the inbox created: what it was created from (docs/inbox.md).
ANNOTATION_SOURCE_URI = "continual.dev/source-uri"
ANNOTATION_SOURCE_KEY = "continual.dev/source-key"
ANNOTATION_SOURCE_ETAG = "continual.dev/source-etag"
ANNOTATION_SOURCE_SIZE = "continual.dev/source-size"
ANNOTATION_SOURCE_VERSION = "continual.dev/source-version-id"
ANNOTATION_SOURCE_MODIFIED = "continual.dev/source-last-modified"
#: Set by the inbox once it has reported a change ("etag:<new ETag>") or a deletion ("deleted").
ANNOTATION_SOURCE_REPORTED = "continual.dev/source-reported"
#: How many late keys ``status.inbox.reportedLate`` remembers (bounded space).
REPORTED_LATE_KEPT = 100
#: Label that tells inbox batches apart from batches applied by hand.
LABEL_SOURCE = "continual.dev/source"
SOURCE_INBOX = "s3-inbox"
DELETED = "deleted"


@dataclass(frozen=True)
class SourceObject:
    """One listed object (key relative to the inbox prefix)."""

    key: str
    etag: str
    size: int
    last_modified: dt.datetime
    version_id: str | None = None


@dataclass(frozen=True)
class Unit:
    """A candidate above the watermark: an object, or a sub-prefix with its marker (None: not complete yet)."""

    key: str
    obj: SourceObject | None


@dataclass(frozen=True)
class AuditPage:
    """One page of keys listed from the audit cursor on (keys above the watermark may follow; ignored)."""

    start_after: str | None
    objects: Sequence[SourceObject]
    #: More keys follow this page (it was truncated).
    truncated: bool


@dataclass(frozen=True)
class Listing:
    """What one poll listed: units above the watermark in key order, and an audit page below it."""

    units: Sequence[Unit]
    audit: AuditPage | None
    #: When the listing was made, by the object store's clock where known (its Date header).
    listed_at: dt.datetime
    #: More units follow (the poll stopped at maxKeysPerPoll): poll again soon.
    backlog: bool = False


@dataclass(frozen=True)
class Ingested:
    """What an existing TrainingBatch records about the unit it was created from."""

    batch: str
    key: str
    etag: str | None
    size: int | None
    reported: str | None = None

    @classmethod
    def from_annotations(cls, batch: str, annotations: Mapping[str, str]) -> Ingested | None:
        """The record of an inbox batch, or None for a batch applied by hand."""
        key = annotations.get(ANNOTATION_SOURCE_KEY)
        if key is None:
            return None
        size = annotations.get(ANNOTATION_SOURCE_SIZE)
        return cls(
            batch=batch,
            key=key,
            etag=annotations.get(ANNOTATION_SOURCE_ETAG),
            size=int(size) if size is not None and size.isdigit() else None,
            reported=annotations.get(ANNOTATION_SOURCE_REPORTED),
        )


@dataclass(frozen=True)
class NewBatch:
    """A TrainingBatch to create from a unit."""

    name: str
    key: str
    uri: str
    order: int
    obj: SourceObject


@dataclass(frozen=True)
class Note:
    """Record on an existing batch that a change of its source has been reported."""

    batch: str
    reported: str


@dataclass(frozen=True)
class InboxDecision:
    """What to do after one poll, in this order: create batches, note reports, post Events, patch status."""

    create: tuple[NewBatch, ...] = ()
    notes: tuple[Note, ...] = ()
    events: tuple[EmitEvent, ...] = ()
    status: InboxStatus = field(default_factory=InboxStatus)
    #: The next poll should come soon (a backlog is left), not after pollSeconds.
    backlog: bool = False


# -- names and filters ---------------------------------------------------------------------------------
def inbox_batch_name(run: str, key: str) -> str:
    """``{run}-{source_batch_name(key)}``: deterministic, injective per run, a valid object name.

    The run's name is part of it because TrainingBatches share a namespace: two runs watching the same
    bucket must not claim one object name. :func:`~continual_operator.naming.source_batch_name` always ends
    with a hash of the full key; when the whole would be too long, the readable part is cut and a hash of
    ``(run, key)`` keeps it unique.
    """
    name = f"{run}-{source_batch_name(key)}"
    if len(name) <= DNS_SUBDOMAIN_MAX:
        return name
    digest = hashlib.sha256(f"{run}\x1f{key}".encode()).hexdigest()[:12]
    return f"{name[: DNS_SUBDOMAIN_MAX - len(digest) - 1].rstrip('-.')}-{digest}"


def is_marker(spec: InboxSpec, key: str) -> bool:
    """Whether a relative key is a marker object (never data, in either mode)."""
    return key.rsplit("/", 1)[-1] == spec.marker


def wanted(spec: InboxSpec, key: str) -> bool:
    """Whether a unit's relative key passes ``include``/``exclude`` (exclude wins)."""
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in spec.exclude):
        return False
    return not spec.include or any(fnmatch.fnmatchcase(key, pattern) for pattern in spec.include)


def is_data_object(spec: InboxSpec, key: str) -> bool:
    """batchFrom Object: whether a listed key is a unit (not a folder placeholder, not a marker)."""
    return bool(key) and not key.endswith("/") and not is_marker(spec, key)


def unit_of_audit_key(spec: InboxSpec, key: str) -> str | None:
    """The unit an audited key stands for: the key itself (Object), or ``<name>/`` for a marker (Prefix)."""
    if spec.batch_from == "Object":
        return key if is_data_object(spec, key) else None
    head, _, tail = key.partition("/")
    return f"{head}/" if head and tail == spec.marker else None


def audit_key_of_unit(spec: InboxSpec, unit: str) -> str:
    """The key the audit lists for a unit (the marker's key in Prefix mode)."""
    return unit if spec.batch_from == "Object" else f"{unit}{spec.marker}"


def next_start_after(spec: InboxSpec, watermark: str | None) -> str | None:
    """The relative ``StartAfter`` of the forward listing: past the watermark and, in Prefix mode, past
    every key below the watermark's sub-prefix (``name/`` -> ``name0``: '0' is the character after '/')."""
    if watermark is None:
        return None
    if spec.batch_from == "Prefix" and watermark.endswith("/"):
        return watermark[:-1] + "0"
    return watermark


def effective_status(spec: InboxSpec, old: InboxStatus | None) -> InboxStatus:
    """The status a poll starts from: ``old``, unless it belongs to another ``uri`` or ``batchFrom``.

    Another prefix (or another kind of unit) is another key space: its watermark starts anew. The sequence
    goes on, so that new batches still train after the ones already created.
    """
    old = old or InboxStatus()
    if (old.uri, old.batch_from) in {(None, None), (spec.uri, spec.batch_from)}:
        return old
    return InboxStatus(batches_created=old.batches_created, last_poll_time=old.last_poll_time)


# -- the decision --------------------------------------------------------------------------------------
@dataclass
class _Decider:
    run: str
    spec: InboxSpec
    old: InboxStatus
    listing: Listing
    ingested: Mapping[str, Ingested]
    create: list[NewBatch] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    events: list[EmitEvent] = field(default_factory=list)
    late: list[str] = field(default_factory=list)

    def _warn(self, reason: str, message: str) -> None:
        self.events.append(EmitEvent("ContinualTrainingRun", self.run, "Warning", reason, message))

    def uri(self, key: str) -> str:
        return f"s3://{self.spec.bucket}/{self.spec.prefix}{key}"

    def forward(self) -> tuple[str | None, str | None, int]:
        """Create batches for the units above the watermark; the new watermark, its ETag, the sequence."""
        watermark, etag = self.old.watermark, self.old.watermark_etag
        sequence = self.old.batches_created or 0
        for unit in sorted(self.listing.units, key=lambda u: u.key):
            if watermark is not None and unit.key <= watermark:
                continue  # a re-listing (or a StartAfter the store ignored): decided already
            if not wanted(self.spec, unit.key):
                watermark, etag = unit.key, None
                continue
            if unit.obj is None:
                break  # Prefix: not complete yet, and nothing after it may go first
            name = inbox_batch_name(self.run, unit.key)
            # A batch found already (created by a poll that died before its watermark) keeps its number.
            sequence += 1
            if name not in self.ingested:
                self.create.append(NewBatch(name, unit.key, self.uri(unit.key), sequence, unit.obj))
            watermark, etag = unit.key, unit.obj.etag
        return watermark, etag, sequence

    def audit(self, watermark: str | None, status: dict[str, Any]) -> None:
        """Check one page below the watermark: late units, changed and deleted sources."""
        page = self.listing.audit
        if page is None:
            return
        if page.start_after is None:  # a new pass begins with this page
            status["previousAuditPassTime"] = self.old.audit_pass_time or rfc3339(self.listing.listed_at)
            status["auditPassTime"] = rfc3339(self.listing.listed_at)
        since = parse_time(status.get("previousAuditPassTime") or self.old.previous_audit_pass_time)
        threshold = since or self.listing.listed_at
        if watermark is None:
            status["auditCursor"] = None
            return
        created = {b.name for b in self.create}
        watermark_key = audit_key_of_unit(self.spec, watermark)
        last_seen: str | None = None
        passed_watermark = False
        seen: set[str] = set()
        for obj in page.objects:
            if obj.key > watermark_key:
                passed_watermark = True
                break
            last_seen = obj.key
            unit = unit_of_audit_key(self.spec, obj.key)
            if unit is None or unit > watermark or not wanted(self.spec, unit):
                continue
            seen.add(unit)
            name = inbox_batch_name(self.run, unit)
            record = self.ingested.get(name)
            if record is not None:
                self._check_changed(record, obj)
            elif name not in created and obj.last_modified >= threshold:
                self._late(unit, watermark)
        finished = passed_watermark or not page.truncated or last_seen is None
        start, end = page.start_after or "", watermark_key if finished else (last_seen or "")
        for record in self.ingested.values():
            key = audit_key_of_unit(self.spec, record.key)
            if start < key <= end and record.key not in seen and record.reported != DELETED:
                self._deleted(record)
        status["auditCursor"] = None if finished else last_seen

    def _late(self, unit: str, watermark: str) -> None:
        if unit in self.old.reported_late or unit in self.late:
            return  # reported by an earlier check within the same second of the store's clock
        self.late.append(unit)
        self._warn(
            "InboxObjectBelowWatermark",
            f"{self.uri(unit)} appeared below the inbox watermark {watermark!r} (keys are taken in key order) "
            f"and is not trained. To train it, copy it to a key that sorts after {watermark!r}, or apply a "
            f"TrainingBatch for run {self.run} with spec.data.uri: {self.uri(unit)} by hand.",
        )

    def _deleted(self, record: Ingested) -> None:
        self.notes.append(Note(record.batch, DELETED))
        self._warn(
            "InboxObjectDeleted",
            f"{self.uri(record.key)} was deleted after TrainingBatch {record.batch} was created from it; the "
            "batch is not re-created. Delete the TrainingBatch if it should not train (a batch whose data is "
            "gone fails with a message naming the URI).",
        )

    def _check_changed(self, record: Ingested, obj: SourceObject) -> None:
        if record.etag in {None, obj.etag} and record.size in {None, obj.size}:
            return
        note = f"etag:{obj.etag}"
        if record.reported == note:
            return
        self.notes.append(Note(record.batch, note))
        self._warn(
            "InboxObjectChanged",
            f"{self.uri(record.key)} changed after TrainingBatch {record.batch} was created from it (ETag "
            f"{record.etag} -> {obj.etag}, size {record.size} -> {obj.size}); it is not retrained under the "
            "same batch. To train the new content, copy it to a key above the watermark, or apply a new "
            "TrainingBatch with its spec.data.uri by hand.",
        )


def decide(
    run: str,
    spec: InboxSpec,
    old: InboxStatus | None,
    listing: Listing,
    ingested: Sequence[Ingested],
    *,
    now: dt.datetime | None = None,
) -> InboxDecision:
    """One poll's decision (see the module docstring for the rules).

    ``now`` is the operator's clock (``lastPollTime``, which schedules the next poll); the audit compares
    objects' LastModified with ``listing.listed_at``, the store's clock.
    """
    old = effective_status(spec, old)
    decider = _Decider(run, spec, old, listing, {r.batch: r for r in ingested})
    watermark, etag, sequence = decider.forward()
    status: dict[str, Any] = {}
    decider.audit(watermark, status)
    late, changed = len(decider.late), len(decider.notes)
    reported_late = [*old.reported_late, *decider.late][-REPORTED_LATE_KEPT:]
    polled_at = rfc3339(now or listing.listed_at)
    new = old.model_copy(
        update={
            "uri": spec.uri,
            "batch_from": spec.batch_from,
            "watermark": watermark,
            "watermark_etag": etag,
            "last_poll_time": polled_at,
            "last_ingest_time": polled_at if decider.create else old.last_ingest_time,
            "batches_created": sequence,
            "late_objects": (old.late_objects or 0) + late,
            "reported_late": reported_late,
            "changed_objects": (old.changed_objects or 0) + changed,
            "audit_cursor": status.get("auditCursor", old.audit_cursor),
            "audit_pass_time": status.get("auditPassTime", old.audit_pass_time),
            "previous_audit_pass_time": status.get("previousAuditPassTime", old.previous_audit_pass_time),
            "last_error": None,
            "consecutive_failures": None,
        }
    )
    if decider.create:
        names = ", ".join(b.name for b in decider.create[:5])
        more = f" and {len(decider.create) - 5} more" if len(decider.create) > 5 else ""
        decider.events.insert(
            0,
            EmitEvent(
                "ContinualTrainingRun",
                run,
                "Normal",
                "InboxBatchesCreated",
                f"created {len(decider.create)} TrainingBatch(es) from {spec.uri}: {names}{more}",
            ),
        )
    return InboxDecision(
        tuple(decider.create), tuple(decider.notes), tuple(decider.events), new, listing.backlog
    )


def failed(old: InboxStatus | None, message: str) -> InboxStatus:
    """The status after a poll that failed (the watermark stays where it is)."""
    old = old or InboxStatus()
    return old.model_copy(
        update={"last_error": message, "consecutive_failures": (old.consecutive_failures or 0) + 1}
    )


def retry_seconds(spec: InboxSpec, failures: int, cap: float = 600.0) -> float:
    """The delay before the next poll after ``failures`` failed polls in a row: pollSeconds, doubled each time."""
    return min(max(cap, float(spec.poll_seconds)), spec.poll_seconds * 2.0 ** max(0, failures - 1))


# -- the TrainingBatch -----------------------------------------------------------------------------------
def batch_manifest(*, namespace: str, run: str, run_uid: str | None, batch: NewBatch) -> dict[str, Any]:
    """The TrainingBatch for a new unit: owned by the run, its source recorded in annotations.

    The owner reference makes the batches go with the run (garbage collection); it is not a controller
    reference and does not block the run's deletion.
    """
    obj = batch.obj
    annotations = {
        ANNOTATION_RUN: run,
        ANNOTATION_SOURCE_URI: batch.uri,
        ANNOTATION_SOURCE_KEY: batch.key,
        ANNOTATION_SOURCE_ETAG: obj.etag,
        ANNOTATION_SOURCE_SIZE: str(obj.size),
        ANNOTATION_SOURCE_MODIFIED: rfc3339(obj.last_modified),
    }
    if obj.version_id:
        annotations[ANNOTATION_SOURCE_VERSION] = obj.version_id
    metadata: dict[str, Any] = {
        "name": batch.name,
        "namespace": namespace,
        "labels": {LABEL_RUN: label_value(run), LABEL_MANAGED_BY: MANAGED_BY, LABEL_SOURCE: SOURCE_INBOX},
        "annotations": annotations,
    }
    if run_uid is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": "ContinualTrainingRun", "name": run, "uid": run_uid}
        ]
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingBatch",
        "metadata": metadata,
        "spec": {"runName": run, "order": batch.order, "data": {"uri": batch.uri}},
    }
