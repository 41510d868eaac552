"""``restore``: a snapshot into a new run's folder, every byte verified before anything is in place.

Under the run's volume lock:

1. read and check ``manifest.json`` (missing: an incomplete snapshot or a wrong URI; unparsable: corrupt);
   every path in it must stay inside the run folder's known entries (never trust a path from the store);
2. refuse a folder that already holds training state (a run record, batch records, checkpoints, adapters,
   or any file the snapshot would write): a restore never overwrites;
3. download every file into ``.restore-staging/`` on the same volume and check its size and sha256
   against the manifest; any difference deletes the staging folder and names the file: nothing else of
   the volume was touched;
4. rewrite the run record's owner to the run named in the config (a restored run is a new run), keeping
   where it came from in ``restoredFrom``; an on-volume base model is recorded at the new run's place
   (the config's ``baseModel.path``): the new volume holds the same model elsewhere, and the trainer still
   checks its config and weight digests against the recorded ones; fsync everything;
5. move the files into place, ``ledger/run.json`` last: its arrival commits the restore. A marker file
   names the files while they move, so an interrupted restore is undone and redone by a retry, and a retry
   after the commit is a no-op that reports the same result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_trainer.exitcodes import PermanentError, TransientError
from continual_trainer.fsutil import atomic_write_json, exclusive_lock, fsync_dir, fsync_tree
from continual_trainer.ledger import RestoredFrom, RunRecord
from continual_trainer.objectstore import RetryPolicy, S3Location, parse_s3_uri
from continual_trainer.snapshot.create import sha256_file
from continual_trainer.snapshot.errors import with_store_errors
from continual_trainer.snapshot.job import JobConfig, Layout
from continual_trainer.snapshot.manifest import (
    MANIFEST_NAME,
    RestoreResult,
    SnapshotManifest,
    is_snapshot_id,
    parse_manifest,
    rfc3339,
)
from continual_trainer.snapshot.store import SnapshotStore, TransferOptions

log = logging.getLogger(__name__)

SOURCE_FIELD = "spec.restoreFrom (local: --source)"
RUN_RECORD = "ledger/run.json"
_FIX = (
    "restore another snapshot (a committed one has a manifest.json: list them with "
    "`aws s3 ls s3://BUCKET/PREFIX/`), or take a new snapshot of the original run"
)


@dataclass(frozen=True)
class RestoreOptions:
    """The command line of ``restore``."""

    source: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transfer: TransferOptions = field(default_factory=TransferOptions)


def source(uri: str) -> tuple[S3Location, str]:
    """The destination prefix and the snapshot id of ``s3://bucket/prefix/<snapshotId>/``."""
    try:
        location = parse_s3_uri(uri.rstrip("/") + "/")
    except ValueError as exc:
        raise PermanentError(f"{SOURCE_FIELD}: {exc}", reason="InvalidSnapshotSource") from exc
    head, _, sid = location.key.rstrip("/").rpartition("/")
    if not is_snapshot_id(sid):
        raise PermanentError(
            f"{SOURCE_FIELD} is {uri!r}: it must name one snapshot, s3://bucket/prefix/<snapshotId>/ (an id "
            "like 20261201T030000Z-step00000120, as status.lastSnapshot.uri shows)",
            reason="InvalidSnapshotSource",
        )
    return S3Location(location.bucket, f"{head}/" if head else ""), sid


def restore(job: JobConfig, options: RestoreOptions, *, client: Any = None) -> RestoreResult:
    """Restore the snapshot ``options.source`` into the run folder of ``job`` (see the module docstring)."""
    prefix, sid = source(options.source)
    layout = Layout(Path(job.run_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(layout.lock):
            if client is None:
                from continual_trainer.objectstore import make_client

                client = make_client(job.object_store)
            store = SnapshotStore(client, prefix, options.transfer)
            return _restore_locked(job, options, store, sid, layout)
    except BlockingIOError as exc:
        raise TransientError(
            f"another process holds the lock on {layout.lock}: a restore never runs beside a trainer; retried",
            reason="RunBusy",
        ) from exc


def _restore_locked(
    job: JobConfig, options: RestoreOptions, store: SnapshotStore, sid: str, layout: Layout
) -> RestoreResult:
    uri = store.uri(sid)

    def call(op: Callable[[], Any]) -> Any:
        return with_store_errors(op, options.retry, uri, SOURCE_FIELD)

    manifest = _manifest(call(lambda: store.read(sid, MANIFEST_NAME)), store.uri(sid, MANIFEST_NAME))
    done = _already_restored(layout, manifest, uri)
    if done is not None:
        log.info("%s was already restored into %s: nothing to do", uri, layout.root)
        return _result(uri, manifest, done.restored_at)
    _undo_interrupted(layout)
    _refuse_state(layout, manifest)
    staging = layout.restore_staging
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        call(lambda: _fetch(store, sid, manifest, staging))
        _verify(staging, manifest, uri)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    restored_at = rfc3339(dt.datetime.now(dt.UTC))
    _take_over(staging, job, manifest, uri, restored_at)
    for path, target in manifest.links.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        (staging / path).symlink_to(target)
    fsync_tree(staging)
    _move_into_place(staging, layout, manifest)
    log.info("restored %s into %s (step %s)", uri, layout.root, manifest.global_step)
    return _result(uri, manifest, restored_at)


def _manifest(data: bytes | None, where: str) -> SnapshotManifest:
    if data is None:
        raise PermanentError(
            f"{where} does not exist: the snapshot is incomplete (an interrupted upload never gets one) or "
            f"the URI in {SOURCE_FIELD} is wrong; nothing was written to the volume. {_FIX[0].upper()}{_FIX[1:]}",
            reason="SnapshotManifestMissing",
        )
    try:
        return parse_manifest(data)
    except ValueError as exc:
        raise PermanentError(
            f"{where} is corrupt ({exc}); nothing was written to the volume. {_FIX[0].upper()}{_FIX[1:]}",
            reason="SnapshotManifestCorrupt",
        ) from exc


def _already_restored(layout: Layout, manifest: SnapshotManifest, uri: str) -> RestoredFrom | None:
    """The provenance of an earlier, committed restore of this very snapshot (a retried job)."""
    try:
        record = RunRecord.model_validate(json.loads((layout.root / RUN_RECORD).read_text()))
    except (OSError, ValueError):
        return None
    done = record.restored_from
    if done is not None and done.snapshot_id == manifest.snapshot_id and done.uri == uri:
        return done
    return None


def _undo_interrupted(layout: Layout) -> None:
    """Take back the files an interrupted restore already moved (it never reached its commit)."""
    marker = layout.restore_marker
    if not marker.exists() or (layout.root / RUN_RECORD).exists():
        marker.unlink(missing_ok=True)
        return
    moved = json.loads(marker.read_text()).get("files", [])
    folders: set[Path] = set()
    for name in moved:
        path = layout.root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        folders.update(p for p in path.parents if p.is_relative_to(layout.root) and p != layout.root)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # only the folders the restore made, once empty
            folder.rmdir()
    log.warning(
        "an interrupted restore had moved %s files into %s: taken back, restoring again",
        len(moved),
        layout.root,
    )
    marker.unlink()


def _refuse_state(layout: Layout, manifest: SnapshotManifest) -> None:
    """A restore never overwrites: refuse a folder with training state, or any file the snapshot brings."""
    found = [
        p.relative_to(layout.root).as_posix()
        for p in (
            [layout.root / RUN_RECORD]
            + sorted(layout.ledger.glob("batches/*.json"))
            + sorted(layout.checkpoints.glob("checkpoint-*"))
            + sorted(layout.adapters.glob("step-*"))
            + [layout.root / f.path for f in manifest.files]
            + [layout.root / p for p in manifest.links]
        )
        if p.exists() or p.is_symlink()
    ]
    if found:
        shown = ", ".join(dict.fromkeys(found[:5]))
        raise PermanentError(
            f"the run folder {layout.root} already holds training state ({shown}): a restore never overwrites "
            "it. Restore into a new run (another storage.subPath or storage.existingClaim; local: another "
            "--volume), or move the folder aside first",
            reason="RunFolderNotEmpty",
        )


def _fetch(store: SnapshotStore, sid: str, manifest: SnapshotManifest, staging: Path) -> None:
    try:
        store.download(sid, [f.path for f in manifest.files], staging)
    except Exception as exc:
        from continual_trainer.objectstore import error_code

        if error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
            missing = [f.path for f in manifest.files if not (staging / f.path).is_file()]
            name = missing[0] if missing else "a file"
            raise PermanentError(
                f"{store.uri(sid, name)}: listed in the manifest but missing from the store: the snapshot is "
                f"damaged; nothing was written to the volume. {_FIX[0].upper()}{_FIX[1:]}",
                reason="SnapshotFileMissing",
            ) from exc
        raise


def _verify(staging: Path, manifest: SnapshotManifest, uri: str) -> None:
    """Every downloaded file has the manifest's size and sha256, or nothing is restored."""
    for entry in manifest.files:
        path = staging / entry.path
        size = path.stat().st_size
        problem = None
        if size != entry.size:
            problem = f"has {size} bytes, the manifest says {entry.size}"
        elif sha256_file(path) != entry.sha256:
            problem = f"does not match its sha256 in the manifest ({entry.sha256[:12]}...)"
        if problem is not None:
            raise PermanentError(
                f"{uri}{entry.path} {problem}: the snapshot was altered or damaged in the store; the restore "
                f"is refused and nothing was written to the volume. {_FIX[0].upper()}{_FIX[1:]}",
                reason="SnapshotFileCorrupt",
            )


def _take_over(staging: Path, job: JobConfig, manifest: SnapshotManifest, uri: str, restored_at: str) -> None:
    """The restored run record names the new run as owner, and keeps the old one as provenance."""
    path = staging / RUN_RECORD
    record = RunRecord.model_validate(json.loads(path.read_text()))
    provenance = RestoredFrom(
        run=record.run or manifest.run,
        snapshot_id=manifest.snapshot_id,
        uri=uri,
        global_step=manifest.global_step,
        restored_at=restored_at,
    )
    updated = record.model_copy(update={"run": job.run, "restored_from": provenance})
    folder = job.base_model_folder()
    if folder is not None and record.model is not None and record.model.path is not None:
        # An absolute path: the trainer reads it relative to whatever its data root is (identity._place).
        model = record.model.model_copy(update={"path": folder.as_posix()})
        base = record.base_model.model_copy(update={"path": folder.as_posix()})
        updated = updated.model_copy(update={"model": model, "base_model": base})
    atomic_write_json(path, updated.model_dump(mode="json", by_alias=True))


def _move_into_place(staging: Path, layout: Layout, manifest: SnapshotManifest) -> None:
    """Rename every verified file into the run folder, the run record last (the commit)."""
    names = [f.path for f in manifest.files if f.path != RUN_RECORD] + list(manifest.links) + [RUN_RECORD]
    atomic_write_json(layout.restore_marker, {"snapshotId": manifest.snapshot_id, "files": names})
    parents: set[Path] = set()
    for name in names:
        dest = layout.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        (staging / name).rename(dest)
        parents.add(dest.parent)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(parent)
    layout.restore_marker.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(layout.root)


def _result(uri: str, manifest: SnapshotManifest, completed_at: str) -> RestoreResult:
    return RestoreResult(
        uri=uri,
        snapshot_id=manifest.snapshot_id,
        global_step=manifest.global_step,
        batches=manifest.batches,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        completed_at=completed_at,
        inbox=manifest.inbox,
    )
