"""List an S3 inbox: the one module of the inbox that talks to the object store (boto3, synchronous).

One poll is a bounded amount of work, whatever the inbox's history:

* the **forward listing** asks ``list_objects_v2`` for keys after the watermark (``StartAfter``), at most
  ``maxKeysPerPoll`` keys over as many pages as that takes (S3 returns at most 1,000 per page); in
  Prefix mode it lists sub-prefixes (``Delimiter='/'``) and asks for each one's marker with
  ``head_object``, stopping at the first sub-prefix that has none (nothing after it may be taken first);
* the **audit** lists one page (at most ``min(maxKeysPerPoll, 1000)`` keys) at or below the watermark,
  from where the previous poll's audit stopped, and wraps around at the watermark;
* each new batch in Object mode costs one ``head_object`` (its ``VersionId``, which listings do not carry,
  and a last check that the object is still there).

The store's own clock (the ``Date`` header of the first answer) stamps the listing, so that comparing it
with objects' ``LastModified`` is free of clock skew between the operator and the store. Every failure
comes out as :class:`InboxStoreError` with a message from :func:`continual_trainer.objectstore.describe`
(it names the URI and the fix, never a credential).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from continual_operator.api import InboxSpec, InboxStatus
from continual_operator.inbox.decide import (
    AuditPage,
    Listing,
    NewBatch,
    SourceObject,
    Unit,
    effective_status,
    is_data_object,
    next_start_after,
    wanted,
)
from continual_trainer.objectstore import classify, describe, error_code

#: S3 answers at most this many keys per ``list_objects_v2`` call.
S3_PAGE_MAX = 1000


class InboxStoreError(Exception):
    """Listing the inbox failed; ``kind`` says whether retrying can help without anyone acting."""

    def __init__(self, message: str, kind: Literal["transient", "permanent"], reason: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason


#: What a missing key is answered with (HEAD answers carry no error code, only the status).
NOT_FOUND_REASONS = frozenset({"NoSuchKey", "NotFound", "HTTP404"})


def _reason(exc: BaseException) -> str:
    """A CamelCase reason for the InboxReady condition (the S3 error code where there is one)."""
    code = error_code(exc)
    if code is not None:
        return f"HTTP{code}" if code.isdigit() else code
    return "EndpointUnreachable" if "Endpoint" in type(exc).__name__ else type(exc).__name__


def _stamp(response: dict[str, Any]) -> dt.datetime | None:
    date = ((response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(dt.UTC) if date else None
    except (TypeError, ValueError):
        return None


def _source(key: str, item: dict[str, Any]) -> SourceObject:
    modified = item.get("LastModified")
    return SourceObject(
        key=key,
        etag=str(item.get("ETag") or "").strip('"'),
        size=int(item.get("Size", item.get("ContentLength", 0)) or 0),
        last_modified=modified.astimezone(dt.UTC)
        if isinstance(modified, dt.datetime)
        else dt.datetime.now(dt.UTC),
        version_id=item.get("VersionId") if item.get("VersionId") not in {None, "null"} else None,
    )


@dataclass
class InboxLister:
    """Lists one inbox with a boto3 S3 client; ``requests`` counts the calls made (for metrics and tests)."""

    client: Any
    spec: InboxSpec
    #: Credential values to scrub from error messages.
    secrets: list[str] = field(default_factory=list)
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    requests: int = 0
    _listed_at: dt.datetime | None = None

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.requests += 1
        try:
            response: dict[str, Any] = getattr(self.client, operation)(Bucket=self.spec.bucket, **kwargs)
        except Exception as exc:
            uri = f"s3://{self.spec.bucket}/{kwargs.get('Key', kwargs.get('Prefix', ''))}"
            raise InboxStoreError(
                describe(exc, uri, secrets=self.secrets), classify(exc), _reason(exc)
            ) from exc
        if self._listed_at is None:
            self._listed_at = _stamp(response)
        return response

    def _relative(self, key: str) -> str:
        return key[len(self.spec.prefix) :]

    # -- one poll -------------------------------------------------------------------------------------
    def poll(self, status: InboxStatus | None) -> Listing:
        """List what one poll needs: new units above the watermark and one audit page below it."""
        status = effective_status(self.spec, status)
        self._listed_at = None
        before = self.clock()
        if self.spec.batch_from == "Prefix":
            units, backlog = self._forward_prefixes(next_start_after(self.spec, status.watermark))
        else:
            units, backlog = self._forward_objects(next_start_after(self.spec, status.watermark))
        audit = (
            self._audit(status.audit_cursor)
            if status.watermark is not None
            else AuditPage(None, [], truncated=False)
        )
        return Listing(units, audit, self._listed_at or before, backlog)

    def _forward_objects(self, start_after: str | None) -> tuple[list[Unit], bool]:
        units: list[Unit] = []
        remaining = self.spec.max_keys_per_poll
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.spec.prefix, "MaxKeys": min(S3_PAGE_MAX, remaining)}
            if token is not None:
                kwargs["ContinuationToken"] = token
            elif start_after is not None:
                kwargs["StartAfter"] = self.spec.prefix + start_after
            page = self._call("list_objects_v2", **kwargs)
            contents = page.get("Contents") or []
            remaining -= len(contents)
            for item in contents:
                key = self._relative(str(item["Key"]))
                if is_data_object(self.spec, key):
                    units.append(Unit(key, _source(key, item)))
            if not page.get("IsTruncated"):
                return units, False
            if remaining <= 0:
                return units, True
            token = str(page["NextContinuationToken"])

    def _forward_prefixes(self, start_after: str | None) -> tuple[list[Unit], bool]:
        units: list[Unit] = []
        remaining = self.spec.max_keys_per_poll
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Prefix": self.spec.prefix,
                "Delimiter": "/",
                "MaxKeys": min(S3_PAGE_MAX, remaining),
            }
            if token is not None:
                kwargs["ContinuationToken"] = token
            elif start_after is not None:
                kwargs["StartAfter"] = self.spec.prefix + start_after
            page = self._call("list_objects_v2", **kwargs)
            prefixes = [self._relative(str(p["Prefix"])) for p in page.get("CommonPrefixes") or []]
            remaining -= len(prefixes) + len(page.get("Contents") or [])
            for sub in prefixes:
                if not wanted(self.spec, sub):
                    units.append(Unit(sub, None))  # passed over by the decider, no marker needed
                    continue
                marker = self._marker(sub)
                units.append(Unit(sub, marker))
                if marker is None:
                    return units, False  # incomplete: nothing after it may be taken before it
            if not page.get("IsTruncated"):
                return units, False
            if remaining <= 0:
                return units, True
            token = str(page["NextContinuationToken"])

    def _marker(self, sub: str) -> SourceObject | None:
        key = f"{self.spec.prefix}{sub}{self.spec.marker}"
        try:
            head = self._call("head_object", Key=key)
        except InboxStoreError as error:
            if error.reason in NOT_FOUND_REASONS:
                return None
            raise
        return _source(f"{sub}{self.spec.marker}", head)

    def _audit(self, cursor: str | None) -> AuditPage:
        kwargs: dict[str, Any] = {
            "Prefix": self.spec.prefix,
            "MaxKeys": min(S3_PAGE_MAX, self.spec.max_keys_per_poll),
        }
        if cursor is not None:
            kwargs["StartAfter"] = self.spec.prefix + cursor
        page = self._call("list_objects_v2", **kwargs)
        objects = [_source(self._relative(str(item["Key"])), item) for item in page.get("Contents") or []]
        return AuditPage(cursor, objects, bool(page.get("IsTruncated")))

    # -- new batches ----------------------------------------------------------------------------------
    def confirm(self, batches: Iterable[NewBatch]) -> list[NewBatch]:
        """Object mode: each new batch with its object's VersionId; batches whose object is gone are dropped.

        A listed object deleted before its batch is created is not created (and, being below the
        watermark then, is never ingested): nothing would be there to train.
        """
        confirmed: list[NewBatch] = []
        for batch in batches:
            if self.spec.batch_from == "Prefix":
                confirmed.append(batch)
                continue
            try:
                head = self._call("head_object", Key=self.spec.prefix + batch.key)
            except InboxStoreError as error:
                if error.reason in NOT_FOUND_REASONS:
                    continue
                raise
            version = head.get("VersionId")
            if version and version != "null":
                confirmed.append(replace(batch, obj=replace(batch.obj, version_id=str(version))))
            else:
                confirmed.append(batch)
        return confirmed
