"""Local mode's S3 inbox (``continual-training local --inbox s3://bucket/prefix/``): the cluster's rules.

The same lister (:mod:`.store`) and the same pure decider (:mod:`.decide`) as the operator; what a cluster
keeps in ``status.inbox`` and in the TrainingBatches' annotations lives in one file of the state folder,
``STATE/s3-inbox.json``: ``{"status": <status.inbox>, "batches": {name: <source record>}}``. It is written
atomically after each poll, so the batches and the watermark can never disagree (the cluster needs the
create-first-then-watermark order for that; here one rename does it).

The store is reached with the run manifest's ``spec.objectStore`` (endpoint, region, addressing style) and
boto3's default credential chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the environment, a
profile, an instance role); a CA bundle comes from ``AWS_CA_BUNDLE``. Events are handed to local mode,
which prints them and appends them to ``events.jsonl``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_operator.api import ContinualTrainingRun, InboxSpec, InboxStatus
from continual_operator.inbox.decide import Ingested, decide, failed, retry_seconds
from continual_operator.inbox.store import InboxLister, InboxStoreError
from continual_operator.planning.actions import EmitEvent
from continual_operator.planning.status import parse_time, rfc3339
from continual_trainer.config import ObjectStoreClientSpec
from continual_trainer.fsutil import atomic_write_json
from continual_trainer.objectstore import make_client

STATE_FILE = "s3-inbox.json"


def inbox_spec(run: ContinualTrainingRun, uri: str, poll_seconds: float) -> InboxSpec:
    """The run's ``spec.inbox`` with ``uri`` (from ``--inbox``), or a default inbox at ``uri``."""
    base = run.spec.inbox
    if base is not None:
        return base.model_copy(update={"uri": InboxSpec(uri=uri).uri})
    return InboxSpec(uri=uri, poll_seconds=max(1, round(poll_seconds)))


def client_for(run: ContinualTrainingRun) -> Any:
    """A boto3 client for the manifest's ``spec.objectStore``, with the default credential chain."""
    store = run.spec.object_store
    spec = (
        ObjectStoreClientSpec(
            endpoint_url=store.endpoint_url, region=store.region, addressing_style=store.addressing_style
        )
        if store is not None
        else None
    )
    return make_client(spec)


@dataclass(frozen=True)
class LocalBatch:
    """A batch the inbox created: its name, data URI and inbox sequence number (``spec.order``)."""

    name: str
    uri: str
    order: int


@dataclass
class LocalS3Inbox:
    """The S3 inbox of one local run."""

    spec: InboxSpec
    run: str
    state: Path
    client_factory: Callable[[], Any]
    status: InboxStatus | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    backlog: bool = False

    @classmethod
    def load(cls, spec: InboxSpec, run: str, state: Path, client_factory: Callable[[], Any]) -> LocalS3Inbox:
        """The inbox with what earlier invocations recorded in the state folder."""
        path = state / STATE_FILE
        saved = json.loads(path.read_text()) if path.exists() else {}
        status = InboxStatus.model_validate(saved["status"]) if saved.get("status") else None
        return cls(spec, run, state, client_factory, status, dict(saved.get("batches") or {}))

    def due(self, now: dt.datetime) -> bool:
        """A poll is due: never polled, a backlog is left, or pollSeconds (or the back-off) have passed."""
        last = parse_time(self.status.last_poll_time) if self.status is not None else None
        if last is None or self.backlog:
            return True
        failures = (self.status.consecutive_failures or 0) if self.status is not None else 0
        delay = retry_seconds(self.spec, failures) if failures else float(self.spec.poll_seconds)
        return now >= last + dt.timedelta(seconds=delay)

    def poll(self, now: dt.datetime) -> list[EmitEvent]:
        """List the inbox once and record what it decided; the Events to report.

        Raises :class:`~continual_operator.inbox.store.InboxStoreError` after recording the failure (the
        watermark stays; the next poll waits for the back-off).
        """
        lister = InboxLister(self.client_factory(), self.spec)
        try:
            listing = lister.poll(self.status)
            ingested = [
                Ingested(name, r["key"], r.get("etag"), r.get("size"), r.get("reported"))
                for name, r in self.records.items()
            ]
            decision = decide(self.run, self.spec, self.status, listing, ingested, now=now)
            confirmed = lister.confirm(decision.create)
        except InboxStoreError as error:
            self.status = failed(self.status, str(error)).model_copy(update={"last_poll_time": rfc3339(now)})
            self._save()
            raise
        for batch in confirmed:
            self.records[batch.name] = {
                "key": batch.key,
                "uri": batch.uri,
                "order": batch.order,
                "etag": batch.obj.etag,
                "size": batch.obj.size,
                "versionId": batch.obj.version_id,
                "lastModified": rfc3339(batch.obj.last_modified),
            }
        for note in decision.notes:
            self.records[note.batch]["reported"] = note.reported
        gone = len(decision.create) - len(confirmed)  # deleted between the listing and now
        self.status = decision.status.model_copy(
            update={"batches_created": (decision.status.batches_created or 0) - gone}
        )
        self.backlog = decision.backlog
        self._save()
        return list(decision.events)

    def batches(self) -> list[LocalBatch]:
        """Every batch the inbox has created, in inbox order."""
        out = [LocalBatch(name, r["uri"], int(r["order"])) for name, r in self.records.items()]
        return sorted(out, key=lambda b: b.order)

    def _save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        status = self.status.model_dump(mode="json", by_alias=True) if self.status is not None else None
        atomic_write_json(self.state / STATE_FILE, {"status": status, "batches": self.records})
