"""``create``: upload what continues the run exactly, commit it with its manifest, then apply retention.

Under the run's volume lock (no trainer runs beside it):

1. select the files: the checkpoint the last completed batch ended at (validated against its own
   checkpoint manifest), the run record and the records of finished batches, the exported adapter
   ``adapters/latest`` points at (and the link), ``history.jsonl``; a batch in progress is left out: a
   snapshot is the run as it was at the end of its last completed batch;
2. hash every file (sha256, size), write the in-progress marker, upload the files (multipart, parallel);
3. commit: ``manifest.json``, create-only (``If-None-Match: *``);
4. retention of this run's committed snapshots (keep the newest ``keep`` and the pinned), then sweep the
   incomplete ones (:mod:`.retention`). A failure here leaves the new snapshot committed: it is logged and
   reported, and the next snapshot deletes what this one could not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_trainer import checkpoints as ckpts
from continual_trainer.exitcodes import IntegrityError, PermanentError, TrainerError, TransientError
from continual_trainer.fsutil import exclusive_lock
from continual_trainer.identity import RunIdentity, owner_conflict
from continual_trainer.ledger import Ledger
from continual_trainer.objectstore import RetryPolicy, S3Location, make_client, parse_s3_uri
from continual_trainer.snapshot.errors import with_store_errors
from continual_trainer.snapshot.job import JobConfig, Layout
from continual_trainer.snapshot.manifest import (
    MANIFEST_NAME,
    MARKER_NAME,
    FileEntry,
    SnapshotManifest,
    SnapshotResult,
    parse_manifest,
    rfc3339,
    snapshot_id,
)
from continual_trainer.snapshot.retention import DEFAULT_SWEEP_GRACE, Incomplete, retire, same_run, sweepable
from continual_trainer.snapshot.store import CommitConflictError, Folder, SnapshotStore, TransferOptions

log = logging.getLogger(__name__)

#: Where the destination is set, for messages (the operator's field; local mode's flag).
DESTINATION_FIELD = "spec.snapshots.destination (local: --destination)"


@dataclass(frozen=True)
class CreateOptions:
    """The command line of ``create``."""

    destination: str
    keep: int = 7
    pins: frozenset[str] = frozenset()
    inbox_state: Any = None
    sweep_grace: dt.timedelta = DEFAULT_SWEEP_GRACE
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transfer: TransferOptions = field(default_factory=TransferOptions)
    #: The time snapshot ids are made of (tests set it: ids are per second).
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Selection:
    """The files of a snapshot (local path, relative name) and what they amount to."""

    files: list[tuple[Path, str]]
    links: dict[str, str]
    global_step: int
    batches: int
    last_batch: str


def destination(uri: str) -> S3Location:
    """The destination prefix (a URI without a trailing '/' is taken as a prefix)."""
    try:
        location = parse_s3_uri(uri if uri.endswith("/") or uri.count("/") == 2 else uri + "/")
    except ValueError as exc:
        raise PermanentError(f"{DESTINATION_FIELD}: {exc}", reason="InvalidSnapshotDestination") from exc
    return location if location.is_prefix else S3Location(location.bucket, location.key + "/")


def create(job: JobConfig, options: CreateOptions, *, client: Any = None) -> SnapshotResult:
    """Take a snapshot of the run folder of ``job`` (see the module docstring)."""
    if options.keep < 1:
        raise PermanentError(
            f"keep is {options.keep}: spec.snapshots.keep (local: --keep) must be at least 1",
            reason="InvalidSnapshotDestination",
        )
    dest = destination(options.destination)
    layout = Layout(Path(job.run_dir))
    if not layout.ledger.is_dir():
        raise _nothing(layout, "it has no ledger/")
    try:
        with exclusive_lock(layout.lock):
            selection = select(layout, job.run)
            store = SnapshotStore(
                client if client is not None else make_client(job.object_store), dest, options.transfer
            )
            return _upload(job, options, store, selection)
    except BlockingIOError as exc:
        raise TransientError(
            f"another process (a trainer) holds the lock on {layout.lock}: a snapshot never runs beside a "
            "trainer; it is retried once the batch is done",
            reason="RunBusy",
        ) from exc


def _nothing(layout: Layout, why: str) -> PermanentError:
    return PermanentError(
        f"nothing to snapshot in {layout.root}: {why}; a snapshot needs a completed batch (train one first)",
        reason="NothingToSnapshot",
    )


def select(layout: Layout, me: RunIdentity) -> Selection:
    """What continues the run exactly, as of its last completed batch (see the module docstring)."""
    ledger = Ledger(layout.root)
    run = ledger.read_run()
    last = ledger.last_completed()
    if run is None or last is None:
        raise _nothing(layout, "no batch has completed")
    if run.run is not None and owner_conflict(run.run, me):
        raise PermanentError(
            f"the run folder {layout.root} belongs to run {run.run.describe()}, not to {me.describe()}: "
            "a snapshot is taken by the run that owns the folder (check runDir / storage.subPath; local: "
            "--volume and --run)",
            reason="VolumeBelongsToAnotherRun",
        )
    step = last.target_step
    checkpoint = layout.checkpoints / f"checkpoint-{step}"
    reason = ckpts.validate(checkpoint, run.lora) if checkpoint.is_dir() else "it does not exist"
    if reason is not None:
        raise IntegrityError(
            f"{checkpoint}, where the last completed batch {last.batch_id!r} ended, is not valid ({reason}): "
            "nothing was uploaded. Train the next batch first (the trainer rebuilds a damaged batch-end "
            "checkpoint), then take the snapshot again",
            reason="SnapshotCheckpointInvalid",
        )
    paths = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    paths.append(ledger.root / "run.json")
    records = [r for r in ledger.batches() if r.state != "started"]
    paths += [ledger.batches_dir / f"{r.batch_id}.json" for r in records]
    links: dict[str, str] = {}
    latest = layout.adapters / "latest"
    target = str(latest.readlink()) if latest.is_symlink() else ""
    if target and "/" not in target and (layout.adapters / target).is_dir():
        paths += sorted(p for p in (layout.adapters / target).rglob("*") if p.is_file())
        links["adapters/latest"] = target
    if layout.history_file.is_file():
        paths.append(layout.history_file)
    files = [(p, p.relative_to(layout.root).as_posix()) for p in paths]
    done = sum(1 for r in records if r.state == "completed")
    return Selection(files, links, step, done, last.batch_id)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _upload(
    job: JobConfig, options: CreateOptions, store: SnapshotStore, selection: Selection
) -> SnapshotResult:
    started = options.clock()
    sid = snapshot_id(started, selection.global_step)
    uri = store.uri(sid)
    entries = [
        FileEntry(path=name, size=p.stat().st_size, sha256=sha256_file(p)) for p, name in selection.files
    ]

    def call(op: Callable[[], Any]) -> Any:
        return with_store_errors(op, options.retry, uri, DESTINATION_FIELD)

    if call(lambda: store.exists(sid, MANIFEST_NAME)):  # never upload over a committed snapshot's files
        raise TransientError(
            f"{uri} is already a committed snapshot (ids are per second): nothing was uploaded; retried",
            reason="SnapshotExists",
        )

    marker = {"run": job.run.model_dump(mode="json"), "host": socket.gethostname(), "pid": os.getpid()}
    marker["startedAt"] = rfc3339(started)
    call(lambda: store.put(sid, MARKER_NAME, json.dumps(marker).encode()))
    call(lambda: store.upload(sid, selection.files, on_done=_failpoint))
    manifest = SnapshotManifest(
        snapshot_id=sid,
        run=job.run,
        global_step=selection.global_step,
        batches=selection.batches,
        last_batch=selection.last_batch,
        created_at=rfc3339(started),
        committed_at=rfc3339(options.clock()),
        files=entries,
        links=selection.links,
        inbox=options.inbox_state,
    )
    call(lambda: _commit(store, sid, manifest.to_json()))
    log.info("snapshot %s committed: %s files, %s bytes", uri, len(entries), manifest.total_bytes)
    retired: list[str] = []
    swept: list[str] = []
    try:
        call(lambda: store.remove(sid, MARKER_NAME))
        retired, swept = _retain(job.run, options, store, sid)
    except TrainerError as exc:
        log.warning("snapshot %s is committed, but retention failed: %s", uri, exc.message)
    return SnapshotResult(
        uri=uri,
        snapshot_id=sid,
        global_step=selection.global_step,
        batches=selection.batches,
        files=len(entries),
        bytes=manifest.total_bytes,
        completed_at=manifest.committed_at,
        retired=retired,
        swept=swept,
    )


def _commit(store: SnapshotStore, sid: str, body: bytes) -> None:
    """The create-only commit; a manifest already there with the same bytes is our own earlier try."""
    try:
        store.commit(sid, body, MANIFEST_NAME)
    except CommitConflictError as exc:
        if store.read(sid, MANIFEST_NAME) != body:
            raise PermanentError(
                f"{exc}: another snapshot was committed under the same id; nothing of it was changed. Take "
                "the snapshot again (ids are per second)",
                reason="SnapshotExists",
            ) from exc


def _retain(
    me: RunIdentity, options: CreateOptions, store: SnapshotStore, current: str
) -> tuple[list[str], list[str]]:
    """Retention then sweeping (after the commit of ``current``); returns (retired, swept) ids."""
    folders = store.folders(MANIFEST_NAME, MARKER_NAME)
    ours = [sid for sid, f in folders.items() if f.committed and _taken_by(store, sid, me)]
    retired = retire(ours, set(options.pins), options.keep)
    for sid in retired:
        store.delete(folders[sid], MANIFEST_NAME)
        log.info("retention: deleted snapshot %s", store.uri(sid))
    incomplete = [_incomplete(store, f) for f in folders.values() if not f.committed]
    swept = sweepable(incomplete, me, dt.datetime.now(dt.UTC), options.sweep_grace, current)
    for sid in swept:
        store.delete(folders[sid], MANIFEST_NAME)
        log.info("swept the incomplete snapshot %s", store.uri(sid))
    return retired, swept


def _taken_by(store: SnapshotStore, sid: str, me: RunIdentity) -> bool:
    data = store.read(sid, MANIFEST_NAME)
    try:
        return data is not None and same_run(parse_manifest(data).run, me)
    except ValueError:
        log.warning("%s has an unreadable manifest: retention leaves it alone", store.uri(sid, MANIFEST_NAME))
        return False


def _incomplete(store: SnapshotStore, folder: Folder) -> Incomplete:
    writer = None
    if folder.has_marker:
        try:
            data = store.read(folder.snapshot_id, MARKER_NAME) or b"{}"
            writer = RunIdentity.model_validate(json.loads(data)["run"])
        except (ValueError, KeyError, TypeError):
            writer = None
    return Incomplete(folder.snapshot_id, writer, folder.last_write)


def _failpoint(done: int) -> None:
    """Tests: ``CONTINUAL_TRAINER_FAILPOINTS=snapshot-upload@N`` SIGKILLs the job after N files were uploaded
    (``=term``: SIGTERM, which ends the job as preempted, 85, before its commit)."""
    for item in os.environ.get("CONTINUAL_TRAINER_FAILPOINTS", "").split(","):
        point, _, rest = item.partition("@")
        at, _, action = rest.partition("=")
        if point == "snapshot-upload" and at.isdigit() and int(at) == done:
            signum = signal.SIGTERM if action == "term" else signal.SIGKILL
            print(f"failpoint snapshot-upload@{done}: {signum.name}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
