"""Where a consolidation goes and how it is published: never half-written, never over something else.

* **A volume folder** (``--output PATH``, relative to the data root or absolute inside it): the model is
  written into a hidden staging folder beside the output (same file system), checked, fsync'd, and only then
  renamed into place. An existing output is **replaced** -- only once the new one is complete, and only if it
  is a consolidation (it holds ``consolidation.json``): the old folder is renamed aside, the new one renamed
  in, the old one deleted. A reader sees the old model or the new one, never a mix (for the instant between
  the two renames, no folder). A path that is not ours (the run folder, the base model, the volume itself, a
  folder of the user's) is refused before anything is written.
* **An S3 prefix** (``--output s3://bucket/prefix/``): each consolidation is a new folder
  ``prefix/<consolidationId>/`` (``<UTC yyyymmddThhmmssZ>-step<globalStep:08d>``, as snapshots are named), so
  nothing is overwritten: the files are uploaded (multipart, by s3transfer) and ``consolidation.json`` is
  written **last** with a create-only conditional write. A folder without it is incomplete and never counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual_trainer import sandbox
from continual_trainer.exitcodes import PermanentError, TrainerError, TransientError
from continual_trainer.fsutil import fsync_dir, fsync_tree
from continual_trainer.objectstore import S3Location

if TYPE_CHECKING:
    from continual_trainer.config import ObjectStoreClientSpec

log = logging.getLogger(__name__)

MANIFEST_NAME = "consolidation.json"


class OutputNotWritableError(PermanentError):
    """The output cannot be (or must not be) written: the message names ``--output`` and the fix."""

    reason = "OutputNotWritable"


def sha256_file(path: Path) -> str:
    """The file's sha256 (streamed, 1 MiB at a time)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(folder: Path) -> list[dict[str, Any]]:
    """``{path, size, sha256}`` of every file below ``folder`` except the manifest, in name order."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST_NAME:
            entries.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def write_manifest(folder: Path, manifest: dict[str, Any]) -> bytes:
    """Add the file list to ``manifest``, write it as ``consolidation.json``; return its bytes."""
    data = (json.dumps({**manifest, "files": file_entries(folder)}, indent=2) + "\n").encode()
    (folder / MANIFEST_NAME).write_bytes(data)
    return data


# -- a volume folder -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeTarget:
    """A confined output folder on the volume."""

    path: Path

    @property
    def where(self) -> str:
        """The output, as the result record names it."""
        return str(self.path)

    def make_staging(self) -> Path:
        """A fresh hidden folder beside the output (same file system, so the rename is atomic)."""
        staging = self.path.with_name(f".{self.path.name}.staging-{uuid.uuid4().hex[:8]}")
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise OutputNotWritableError(
                f"--output: cannot write beside {self.path} ({exc.strerror or exc}): make its folder writable "
                "by the trainer (the pod's securityContext fsGroup, or the volume's permissions), or choose "
                "another --output; nothing was published"
            ) from exc
        return staging

    def commit(self, staging: Path, manifest: bytes) -> None:
        """Put the staged folder at the output (its manifest is already in it)."""
        del manifest
        publish_folder(staging, self)


def volume_target(output: str, root: Path, run_dir: Path, base_folder: Path | None) -> VolumeTarget:
    """``--output`` resolved inside the data root, refusing every path a publish would damage."""
    given = Path(output)
    full = given if given.is_absolute() else root / given
    fix = "choose a new folder on the volume for the merged model (e.g. models/merged), below dataRoot"
    real = sandbox.confine(full, root, field="--output", given=output, fix=fix)
    # The volume's root may hold an output; the run folder (the trainer's alone) and the base model may not
    # even do that; none of them may be the output or lie below it (the publish replaces the output).
    guards = [
        ("the volume's root (dataRoot)", root.resolve(), False),
        ("the run folder", run_dir.resolve(), True),
    ]
    if base_folder is not None:
        guards.append(("the base model", base_folder.resolve(), True))
    for what, guard, sealed in guards:
        if real == guard or guard.is_relative_to(real) or (sealed and real.is_relative_to(guard)):
            raise OutputNotWritableError(
                f"--output: {output!r} is, contains or lies in {what} ({guard}), which a consolidation must not "
                f"replace or write into: {fix}; nothing was written"
            )
    if real.exists() and not (real / MANIFEST_NAME).is_file():
        raise OutputNotWritableError(
            f"--output: {real} exists and is not a consolidation (it has no {MANIFEST_NAME}): it is replaced "
            f"only when an earlier consolidation wrote it. Remove it, or {fix}; nothing was written"
        )
    return VolumeTarget(real)


def publish_folder(staging: Path, target: VolumeTarget) -> None:
    """fsync the staged folder, then put it at the output (replacing an older consolidation)."""
    fsync_tree(staging)
    old: Path | None = None
    if target.path.exists():
        old = target.path.with_name(f".{target.path.name}.previous-{uuid.uuid4().hex[:8]}")
        target.path.rename(old)
    try:
        staging.rename(target.path)
    except BaseException:
        if old is not None:
            old.rename(target.path)  # put the previous one back: nothing changed
        raise
    fsync_dir(target.path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(staging: Path) -> None:
    """Remove a staging folder (a failed check, an error, SIGTERM: nothing is published; after a publish
    by rename it is gone already)."""
    shutil.rmtree(staging, ignore_errors=True)


# -- an S3 prefix ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Target:
    """A new folder ``<prefix>/<consolidation id>/`` in a bucket; the model is staged on the volume first."""

    client: Any
    prefix: S3Location
    scratch: Path  # where the staging folder goes: the volume's root (big enough for the model)

    @property
    def where(self) -> str:
        """The folder's URI, as the result record names it."""
        return self.prefix.uri

    def make_staging(self) -> Path:
        """A fresh hidden folder on the volume for the files before they are uploaded."""
        staging = self.scratch / f".consolidation-staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def commit(self, staging: Path, manifest: bytes) -> None:
        """Upload the files, then the manifest last (create-only)."""
        upload_folder(self.client, staging, self.prefix, manifest)


def s3_target(
    output: str, consolidation_id: str, store: ObjectStoreClientSpec | None, scratch: Path
) -> S3Target:
    """The S3 folder for ``--output s3://bucket/prefix/``, reached (and found empty) before anything is merged."""
    from continual_trainer.objectstore import make_client, parse_s3_uri

    try:
        location = parse_s3_uri(output if output.endswith("/") else output + "/")
    except ValueError as exc:
        raise OutputNotWritableError(f"--output: {exc}") from exc
    target = S3Target(make_client(store), location.child(f"{location.key}{consolidation_id}/"), scratch)
    preflight(target.client, target.prefix)
    return target


def preflight(client: Any, prefix: S3Location) -> None:
    """Reach the bucket before anything is merged, and refuse a consolidation folder that already exists."""

    def listing() -> Any:
        return client.list_objects_v2(Bucket=prefix.bucket, Prefix=prefix.key, MaxKeys=1)

    found = _store_call(listing, prefix.uri)
    if found.get("KeyCount", 0):
        raise OutputNotWritableError(
            f"--output: {prefix.uri} already holds objects (a consolidation of the same step in the same "
            "second?): a consolidation folder is written once; retry in a second"
        )


def upload_folder(client: Any, folder: Path, prefix: S3Location, manifest: bytes) -> None:
    """Upload every file below ``folder`` under ``prefix``, then the manifest last, create-only."""
    from boto3.s3.transfer import TransferConfig

    transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        key = prefix.key + path.relative_to(folder).as_posix()
        _store_call(
            lambda p=path, k=key: client.upload_file(str(p), prefix.bucket, k, Config=transfer),
            prefix.child(key).uri,
        )
    key = prefix.key + MANIFEST_NAME
    _store_call(lambda: put_create_only(client, prefix.bucket, key, manifest), prefix.child(key).uri)


def put_create_only(client: Any, bucket: str, key: str, body: bytes) -> None:
    """``PutObject`` with ``If-None-Match: *``: an existing manifest is never overwritten.

    A store that does not implement conditional writes (501) gets a HEAD first: not atomic against a
    concurrent writer of the same key, but consolidation folders are named per job, so that is not one.
    """
    from botocore.exceptions import ClientError

    from continual_trainer.objectstore import error_code

    exists = OutputNotWritableError(
        f"--output: s3://{bucket}/{key} already exists: a consolidation folder is written once; nothing was "
        "overwritten"
    )
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json")
    except ClientError as exc:
        code = error_code(exc)
        if code in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise exists from exc
        if code not in {"NotImplemented", "501"}:
            raise
        log.warning("the store does not implement conditional writes (%s): checking for %s first", code, key)
        try:
            client.head_object(Bucket=bucket, Key=key)
        except ClientError as missing:
            if error_code(missing) not in {"404", "NoSuchKey", "NotFound"}:
                raise
        else:
            raise exists from exc
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def _unwrapped(exc: BaseException) -> BaseException:
    """The store's own error inside boto3's ``S3UploadFailedError`` (which keeps it as its context)."""
    if type(exc).__name__ == "S3UploadFailedError":
        return exc.__cause__ or exc.__context__ or exc
    return exc


def _store_call(op: Any, uri: str) -> Any:
    """``op`` with bounded retries of transient store errors; failures named by URI, with the fix."""
    from continual_trainer import objectstore

    def retryable(exc: BaseException) -> bool:
        return not isinstance(exc, TrainerError) and objectstore.classify(_unwrapped(exc)) == "transient"

    try:
        return objectstore.call_with_retries(op, objectstore.RetryPolicy(), retryable=retryable)
    except TrainerError:
        raise
    except Exception as exc:
        inner = _unwrapped(exc)
        text = objectstore.describe(inner, uri)
        if objectstore.classify(inner) == "transient":
            raise TransientError(f"--output: {text}", reason="ObjectStoreUnavailable") from exc
        raise OutputNotWritableError(f"--output: {text}; nothing counts as published") from exc
