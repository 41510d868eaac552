"""The S3 side of snapshots: multipart transfers, the create-only commit, listing and idempotent deletes.

Transfers go through s3transfer (boto3's ``TransferManager``): large files in parallel parts, many small
files several at a time, botocore's retries per request. Uploads ask the store for a SHA-256 checksum of
every part (``ChecksumAlgorithm``), so bytes damaged in transit are refused by the store itself; the
manifest's sha256 of each whole file is what a restore checks, on any store.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_trainer.objectstore import S3Location, error_code

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class TransferOptions:
    """How files travel: s3transfer's part size and parallelism, and the store-side checksum."""

    multipart_threshold: int = 16 * MiB
    chunk_size: int = 16 * MiB
    max_concurrency: int = 8
    #: ``ChecksumAlgorithm`` for uploads (None: none asked for, for stores that refuse the header).
    checksum_algorithm: str | None = "SHA256"

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.chunk_size,
            max_concurrency=self.max_concurrency,
            use_threads=True,
        )


@dataclass
class Folder:
    """One snapshot folder below the destination prefix, as listed."""

    snapshot_id: str
    keys: list[str] = field(default_factory=list)
    committed: bool = False
    has_marker: bool = False
    last_write: dt.datetime = field(default_factory=lambda: dt.datetime.min.replace(tzinfo=dt.UTC))


class CommitConflictError(Exception):
    """A manifest already exists under this snapshot id (the create-only write was refused)."""


class SnapshotStore:
    """The snapshots below one destination prefix (``s3://bucket/prefix/``)."""

    def __init__(self, client: Any, destination: S3Location, options: TransferOptions | None = None) -> None:
        self.client = client
        self.destination = destination
        self.options = options or TransferOptions()

    @property
    def bucket(self) -> str:
        return self.destination.bucket

    def key(self, snapshot_id: str, name: str = "") -> str:
        """The object key of ``name`` inside a snapshot (its folder prefix for an empty name)."""
        return f"{self.destination.key}{snapshot_id}/{name}"

    def uri(self, snapshot_id: str, name: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(snapshot_id, name)}"

    # -- writing ---------------------------------------------------------------------------------
    def put(self, snapshot_id: str, name: str, body: bytes) -> None:
        """A small object (the in-progress marker)."""
        self.client.put_object(
            Bucket=self.bucket, Key=self.key(snapshot_id, name), Body=body, ContentType="application/json"
        )

    def upload(
        self, snapshot_id: str, files: list[tuple[Path, str]], on_done: Callable[[int], None] | None = None
    ) -> None:
        """Upload ``(local file, relative name)`` pairs through one transfer manager; raise the first error.

        ``on_done(n)`` is called after the n-th file finished (tests kill the job there).
        """
        from boto3.s3.transfer import create_transfer_manager

        extra = (
            {"ChecksumAlgorithm": self.options.checksum_algorithm} if self.options.checksum_algorithm else {}
        )
        with create_transfer_manager(self.client, self.options.transfer_config()) as manager:
            futures = [
                manager.upload(str(path), self.bucket, self.key(snapshot_id, name), extra_args=dict(extra))
                for path, name in files
            ]
            try:
                for n, future in enumerate(futures, start=1):
                    future.result()
                    if on_done is not None:
                        on_done(n)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def commit(self, snapshot_id: str, manifest: bytes, name: str) -> None:
        """Write the manifest create-only (``If-None-Match: *``); :class:`CommitConflictError` if one exists.

        A store that does not implement conditional writes (501 NotImplemented) gets a HEAD-then-PUT: not
        atomic, but the job holds the run's lock, so no second writer of this run races it.
        """
        key = self.key(snapshot_id, name)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=manifest, ContentType="application/json", IfNoneMatch="*"
            )
        except Exception as exc:
            code = error_code(exc)
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}:
                raise CommitConflictError(self.uri(snapshot_id, name)) from exc
            if code not in {"NotImplemented", "501"}:
                raise
            log.warning("%s: the store has no conditional writes; checking for a manifest first", key)
            if self.exists(snapshot_id, name):
                raise CommitConflictError(self.uri(snapshot_id, name)) from exc
            self.client.put_object(Bucket=self.bucket, Key=key, Body=manifest, ContentType="application/json")

    # -- reading ---------------------------------------------------------------------------------
    def exists(self, snapshot_id: str, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(snapshot_id, name))
        except Exception as exc:
            if error_code(exc) in _MISSING:
                return False
            raise
        return True

    def read(self, snapshot_id: str, name: str) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(snapshot_id, name))
        except Exception as exc:
            if error_code(exc) in _MISSING:
                return None
            raise
        return bytes(response["Body"].read())

    def folders(self, manifest: str, marker: str) -> dict[str, Folder]:
        """Every snapshot folder below the prefix (folders not named like a snapshot id are left out)."""
        from continual_trainer.snapshot.manifest import is_snapshot_id

        found: dict[str, Folder] = {}
        for item in self._list(self.destination.key):
            rest = str(item["Key"])[len(self.destination.key) :]
            sid, _, name = rest.partition("/")
            if not name or not is_snapshot_id(sid):
                continue
            folder = found.setdefault(sid, Folder(sid))
            folder.keys.append(str(item["Key"]))
            folder.committed = folder.committed or name == manifest
            folder.has_marker = folder.has_marker or name == marker
            folder.last_write = max(folder.last_write, item["LastModified"])
        return found

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def download(self, snapshot_id: str, names: list[str], into: Path) -> None:
        """Download each relative name to ``into/name`` through one transfer manager."""
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(self.client, self.options.transfer_config()) as manager:
            futures = []
            for name in names:
                dest = into / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download(self.bucket, self.key(snapshot_id, name), str(dest)))
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # -- deleting --------------------------------------------------------------------------------
    def delete(self, folder: Folder, manifest: str) -> None:
        """Delete a snapshot's objects, its manifest first (an interrupted delete leaves an incomplete
        snapshot that is swept later, never a committed one with files missing). Missing objects are fine."""
        first = [k for k in folder.keys if k.endswith("/" + manifest)]
        rest = [k for k in folder.keys if k not in first]
        for keys in (first, rest):
            for start in range(0, len(keys), DELETE_BATCH):
                self._delete_keys(keys[start : start + DELETE_BATCH])

    def remove(self, snapshot_id: str, name: str) -> None:
        """Delete one object of a snapshot (missing is fine)."""
        self._delete_keys([self.key(snapshot_id, name)])

    def _delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        errors = [e for e in response.get("Errors", []) if e.get("Code") not in _MISSING]
        if errors:
            first = errors[0]
            raise DeleteFailedError(
                f"s3://{self.bucket}/{first.get('Key')}: the store refused to delete it "
                f"({first.get('Code')}: {first.get('Message')})",
                code=str(first.get("Code")),
            )


class DeleteFailedError(Exception):
    """DeleteObjects reported errors other than "no such key"."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
