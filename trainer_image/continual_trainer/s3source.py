"""A batch read from an object store: :class:`S3Source`, a :class:`~continual_trainer.data.BatchSource`.

``data.uri`` names one object (``s3://bucket/key``) or every object below a prefix (``s3://bucket/p/``, in
key order). The source lists them, downloads each into the run's volume at ``cache/<batch>/<name>`` and
trains from there, so that a retried attempt reads the volume instead of the store:

1. **list** — one HeadObject, or a paginated ListObjectsV2 (keys whose name starts with ``.`` or ``_`` are
   skipped, the Hadoop convention: ``_SUCCESS`` markers, ``.crc`` files);
2. **reuse or download** — a cached file is reused only when its sidecar record (``.meta/<name>.json``,
   written after the file) matches the listing (size, ETag) and the file still hashes to the sha256 recorded
   when it was downloaded; anything else (a corrupted or truncated file, an object re-uploaded since) is
   downloaded again. Downloads go to a temporary name, are fsync'd and renamed into place; large objects are
   fetched in parallel ranges (s3transfer), small ones stream through one GET, several objects at a time.
   ``IfMatch`` pins each read to the listed ETag: an object replaced mid-read is detected, not mixed;
3. **verify** — the byte count equals the listed size; the MD5 equals the ETag for single-part,
   non-KMS uploads (the only case where an ETag is an MD5); the pinned ``data.sha256`` (of the object, or of
   the canonical listing of a prefix, :func:`canonical_listing`) matches.

The batch's ledger digest is computed from the bytes (:func:`continual_trainer.data.digest_files`), so the
same key re-uploaded with other content is refused as ``BatchDataChanged`` by the trainer, never retrained.

Errors: transient ones (timeouts, 5xx, throttling, an endpoint that is down, an object replaced or deleted
between listing and reading) are retried by botocore per request and here per object, then raised as
:class:`~continual_trainer.exitcodes.TransientError` (exit 75); a missing bucket or key, refused credentials
or a checksum mismatch is a :class:`~continual_trainer.exitcodes.PermanentError` (exit 64). Every message
names the URI and the fix and never a credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from continual_trainer.data import SourceFile
from continual_trainer.exitcodes import BadDataError, PermanentError, TransientError
from continual_trainer.fsutil import atomic_write_json, fsync_dir
from continual_trainer.objectstore import (
    RetryPolicy,
    S3Location,
    call_with_retries,
    classify,
    describe,
    error_code,
    make_client,
    parse_s3_uri,
)

if TYPE_CHECKING:
    from continual_trainer.config import TrainerConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

MiB = 1024 * 1024
#: Objects at least this large are fetched in parallel ranges; smaller ones in one GET.
MULTIPART_THRESHOLD = 16 * MiB
CHUNK_SIZE = 8 * MiB
#: Parallel transfers: ranges of one large object, or small objects at a time.
MAX_CONCURRENCY = 8
META_DIR = ".meta"


@dataclass(frozen=True)
class ListedObject:
    """One object of the batch as the listing saw it."""

    key: str
    name: str  # relative to the prefix (or the key's last segment): the file name in the cache
    size: int
    etag: str

    @property
    def single_part_md5(self) -> str | None:
        """The ETag as an MD5 hex digest, where it is one (single-part uploads: no ``-N`` suffix)."""
        etag = self.etag.strip('"')
        return etag if len(etag) == 32 and "-" not in etag else None


class ChangedWhileReadingError(Exception):
    """The object differs from what the listing said (replaced or deleted since): worth a re-listing."""


class ChecksumError(Exception):
    """Downloaded bytes do not match the listed size or the ETag's MD5."""


@dataclass(frozen=True)
class S3SourceOptions:
    """How an :class:`S3Source` reads (defaults suit the trainer; tests and benchmarks tune them)."""

    sha256: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    multipart_threshold: int = MULTIPART_THRESHOLD
    chunk_size: int = CHUNK_SIZE
    max_concurrency: int = MAX_CONCURRENCY
    page_size: int = 1000  # keys per ListObjectsV2 page (1000 is the S3 maximum)
    #: Check the MD5 of objects fetched in ranges against a single-part ETag too. Off by default: MD5 runs
    #: at a fraction of the network's speed on a busy CPU (benchmarks/s3_download.py), and such objects
    #: are verified by size, by s3transfer's per-range ETag pinning and by the sha256 recorded or pinned.
    md5_for_large_objects: bool = False


def canonical_listing(entries: list[tuple[str, int, str]]) -> bytes:
    """The bytes a prefix's ``sha256`` is computed over (docs/data.md).

    One line per object, sorted by name (the key relative to the prefix, UTF-8 byte order):
    ``<name>\\t<size>\\t<sha256 hex>\\n``.
    """
    lines = sorted(f"{name}\t{size}\t{sha}\n" for name, size, sha in entries)
    return "".join(lines).encode()


def _safe_name(name: str, uri: str) -> str:
    """A key below the prefix becomes a path in the cache: no absolute paths, empty or dot segments."""
    parts = name.split("/")
    if not name or parts[0] == META_DIR or any(part in {"", ".", ".."} for part in parts):
        raise BadDataError(
            f"{uri}: the object key {name!r} has an empty, '.' or '..' path segment (or is named "
            f"{META_DIR!r}) and cannot be cached safely: rename the object"
        )
    return name


def _refuse_file_folder_clashes(listed: list[ListedObject], uri: str) -> None:
    """S3 allows keys ``a`` and ``a/b`` side by side; a file system cannot hold both: say so, by name."""
    names = {o.name for o in listed}
    for obj in listed:
        parts = obj.name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in names:
                raise BadDataError(
                    f"{uri}: the keys {parent!r} and {obj.name!r} (relative to the prefix) cannot both be "
                    "files of one batch: rename one of the objects"
                )


def _hidden(name: str) -> bool:
    return any(part.startswith((".", "_")) for part in name.split("/"))


class S3Source:
    """Every object of ``location`` (one object, or all below a prefix), cached in ``cache_dir``."""

    def __init__(
        self, location: S3Location, client: Any, cache_dir: Path, options: S3SourceOptions | None = None
    ) -> None:
        self.location = location
        self.client = client
        self.cache_dir = cache_dir
        self.options = options or S3SourceOptions()

    def describe(self) -> str:
        """The URI."""
        return self.location.uri

    # -- the protocol -----------------------------------------------------------------------------
    def files(self) -> list[SourceFile]:
        """List, fetch (or reuse) and verify every object; the contents, in key order."""
        return self._with_errors(self._files_once)

    def _with_errors(self, op: Callable[[], T]) -> T:
        """Run ``op`` with bounded retries; turn what remains into the trainer's errors (exit 64 or 75)."""
        try:
            return call_with_retries(op, self.options.retry, retryable=_retryable)
        except ChangedWhileReadingError as exc:
            raise TransientError(
                f"{self.location.uri}: {exc}: an object was replaced or deleted while the batch was being "
                "read; retried (a producer should finish writing before it names the data in a batch)",
                reason="DataChangedWhileReading",
            ) from exc
        except ChecksumError as exc:
            raise TransientError(f"{self.location.uri}: {exc}; retried", reason="DownloadCorrupted") from exc
        except (PermanentError, TransientError):
            raise
        except Exception as exc:
            raise self._error(exc, self.location.uri) from exc

    def fetch(self) -> list[Path]:
        """List, download (or reuse) and verify every object into the cache; their paths, in key order.

        The same retries and errors as :meth:`files`, without reading the bytes back (benchmarks).
        """
        return [self.cache_dir / o.name for o in self._with_errors(self._fetch_all)]

    def _files_once(self) -> list[SourceFile]:
        listed = self._fetch_all()
        return [SourceFile(obj.name, (self.cache_dir / obj.name).read_bytes()) for obj in listed]

    def _fetch_all(self) -> list[ListedObject]:
        listed = self._list()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Small objects several at a time; a large one alone, its ranges in parallel (s3transfer): both ways
        # max_concurrency requests are in flight, never max_concurrency squared.
        threshold = self.options.multipart_threshold
        with ThreadPoolExecutor(max_workers=self.options.max_concurrency) as pool:
            small = {o.key: pool.submit(self._fetch, o) for o in listed if o.size < threshold}
            large = {o.key: self._fetch(o) for o in listed if o.size >= threshold}
            digests = [large[o.key] if o.key in large else small[o.key].result() for o in listed]
        self._check_pinned(listed, digests)
        return listed

    # -- listing ----------------------------------------------------------------------------------
    def _list(self) -> list[ListedObject]:
        loc = self.location
        if not loc.is_prefix:
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            name = _safe_name(loc.key.rsplit("/", 1)[-1], loc.uri)
            return [ListedObject(loc.key, name, int(head["ContentLength"]), str(head["ETag"]))]
        listed: list[ListedObject] = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=loc.bucket, Prefix=loc.key, PaginationConfig={"PageSize": self.options.page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(loc.key) :]
                if name.endswith("/") or _hidden(name):
                    continue  # "folder" placeholder objects, markers and hidden files
                listed.append(
                    ListedObject(
                        str(item["Key"]), _safe_name(name, loc.uri), int(item["Size"]), str(item["ETag"])
                    )
                )
        if not listed:
            raise BadDataError(
                f"{loc.uri}: no objects below this prefix (names starting with '.' or '_' are skipped): "
                "check data.uri, or upload the batch's objects before creating the batch"
            )
        listed.sort(key=lambda o: o.name.encode())
        _refuse_file_folder_clashes(listed, loc.uri)
        return listed

    # -- one object -------------------------------------------------------------------------------
    def _fetch(self, obj: ListedObject) -> str:
        """Reuse a verified cached copy, or download one; returns its sha256."""
        path = self.cache_dir / obj.name
        cached = self._verified_cache(obj, path)
        if cached is not None:
            return cached
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        md5, sha = self._download(obj, tmp)
        size = tmp.stat().st_size
        if size != obj.size:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(f"{obj.key}: downloaded {size} bytes, the store listed {obj.size}")
        expected_md5 = obj.single_part_md5
        if expected_md5 is not None and md5 is not None and md5 != expected_md5:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(f"{obj.key}: the downloaded bytes do not match the object's ETag (MD5)")
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        self._write_meta(obj, sha)
        fsync_dir(path.parent)
        return sha

    def _download(self, obj: ListedObject, tmp: Path) -> tuple[str | None, str]:
        """Fetch the object's bytes into ``tmp``; returns (md5 or None where the ETag is no MD5, sha256)."""
        bucket = self.location.bucket
        try:
            if obj.size < self.options.multipart_threshold:
                response = self.client.get_object(Bucket=bucket, Key=obj.key, IfMatch=obj.etag)
                md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
                with tmp.open("wb") as out:
                    for chunk in response["Body"].iter_chunks(1 * MiB):
                        md5.update(chunk)
                        sha.update(chunk)
                        out.write(chunk)
                return (None if _encrypted(response) else md5.hexdigest()), sha.hexdigest()
            from boto3.s3.transfer import TransferConfig

            transfer = TransferConfig(
                multipart_threshold=self.options.multipart_threshold,
                multipart_chunksize=self.options.chunk_size,
                max_concurrency=self.options.max_concurrency,
                use_threads=True,
            )
            # A non-seekable target makes s3transfer write the parallel ranges in order, so the bytes are
            # hashed as they arrive instead of in a second pass over the file (half the time on a slow CPU).
            # s3transfer pins the ranges of one download to the first response's ETag itself.
            check_md5 = (
                self.options.md5_for_large_objects
                and obj.single_part_md5 is not None
                and not _encrypted(self.client.head_object(Bucket=bucket, Key=obj.key))
            )
            with tmp.open("wb") as out:
                writer = _HashingWriter(out, md5=check_md5)
                self.client.download_fileobj(bucket, obj.key, writer, Config=transfer)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if error_code(exc) in {"PreconditionFailed", "412", "NoSuchKey", "404"}:
                raise ChangedWhileReadingError(
                    f"{obj.key} changed or disappeared after it was listed"
                ) from exc
            raise
        return writer.digests()

    # -- the cache --------------------------------------------------------------------------------
    def _meta_path(self, obj: ListedObject) -> Path:
        return self.cache_dir / META_DIR / f"{obj.name}.json"

    def _write_meta(self, obj: ListedObject, sha: str) -> None:
        # Written after the file is in place: a record always describes a complete, verified copy.
        record = {"key": obj.key, "size": obj.size, "etag": obj.etag, "sha256": sha}
        atomic_write_json(self._meta_path(obj), record)

    def _verified_cache(self, obj: ListedObject, path: Path) -> str | None:
        """The recorded sha256 of a cached copy that is still intact and still the listed object."""
        try:
            record = json.loads(self._meta_path(obj).read_text())
        except (OSError, ValueError):
            return None
        if (record.get("key"), record.get("size"), record.get("etag")) != (obj.key, obj.size, obj.etag):
            return None  # the object was re-uploaded since it was cached
        if not path.is_file() or path.stat().st_size != obj.size:
            log.warning("cache %s is missing or truncated: downloading %s again", path, obj.key)
            return None
        _, sha = _hash_file(path, md5=False)
        if sha != record.get("sha256"):
            log.warning("cache %s is corrupted (sha256 differs): downloading %s again", path, obj.key)
            return None
        return sha

    def _check_pinned(self, listed: list[ListedObject], digests: list[str]) -> None:
        pinned = self.options.sha256
        if pinned is None:
            return
        if self.location.is_prefix:
            actual = hashlib.sha256(
                canonical_listing([(o.name, o.size, d) for o, d in zip(listed, digests, strict=True)])
            ).hexdigest()
            what = "the canonical listing of the prefix (docs/data.md)"
        else:
            actual, what = digests[0], "the object"
        if actual != pinned:
            # The cached bytes are not what the batch names: never leave them where a retry could train them.
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            raise PermanentError(
                f"{self.location.uri}: checksum mismatch: data.sha256 is {pinned} but {what} hashes to "
                f"{actual}: the data changed after the batch was written; restore the object(s), or create "
                "a new batch for the new data (with its sha256)",
                reason="ChecksumMismatch",
            )

    def _error(self, exc: BaseException, uri: str) -> PermanentError | TransientError:
        text = describe(exc, uri)
        if classify(exc) == "transient":
            return TransientError(text, reason="ObjectStoreUnavailable")
        code = error_code(exc) or type(exc).__name__
        reason = (
            "AccessDenied"
            if "denied" in text
            else "DataNotFound"
            if "no such" in text or "does not exist" in text
            else "ObjectStoreError"
        )
        log.debug("object store error %s for %s", code, uri)
        return PermanentError(text, reason=reason)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ChangedWhileReadingError | ChecksumError):
        return True
    if isinstance(exc, PermanentError | TransientError):
        return False
    return classify(exc) == "transient"


def _encrypted(response: dict[str, Any]) -> bool:
    """SSE-KMS and SSE-C objects have ETags that are not the MD5 of their bytes."""
    return str(response.get("ServerSideEncryption", "")).startswith("aws:kms") or bool(
        response.get("SSECustomerAlgorithm")
    )


class _HashingWriter:
    """A write-only, non-seekable file that hashes what passes through it (see ``_download``)."""

    def __init__(self, out: BinaryIO, *, md5: bool) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        return self.out.write(data)

    def digests(self) -> tuple[str | None, str]:
        return (self.md5.hexdigest() if self.md5 is not None else None), self.sha.hexdigest()


def _hash_file(path: Path, *, md5: bool) -> tuple[str | None, str]:
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            sha.update(chunk)
            if md5_hash is not None:
                md5_hash.update(chunk)
    return (md5_hash.hexdigest() if md5_hash is not None else None), sha.hexdigest()


# -- the trainer's view ---------------------------------------------------------------------------------
def cache_dir(config: TrainerConfig) -> Path:
    """Where a uri batch is cached: ``cache/<batch>/`` in the run folder (batch ids are safe file names)."""
    return config.root / "cache" / config.batch.id


def s3_batch_source(config: TrainerConfig) -> S3Source:
    """The source of a config whose batch names ``data.uri``; credentials come from the boto3 chain."""
    data = config.batch.data
    assert data.uri is not None
    return S3Source(
        parse_s3_uri(data.uri),
        make_client(config.object_store),
        cache_dir(config),
        S3SourceOptions(sha256=data.sha256),
    )


def release_cache(config: TrainerConfig) -> None:
    """At the batch's end: delete its cache unless ``data.keepCache`` (a path batch has none)."""
    if config.batch.data.uri is None or config.batch.data.keep_cache:
        return
    folder = cache_dir(config)
    if folder.exists():
        shutil.rmtree(folder)
        fsync_dir(folder.parent)
