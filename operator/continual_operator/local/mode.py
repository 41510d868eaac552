"""Local mode: the operator's planner on one machine, with trainer processes instead of Jobs.

The same run manifest a user applies to a cluster (``ContinualTrainingRun`` YAML) drives it, and the same
pure planner decides what to do; only the executor differs:

* **batches** come from an inbox folder (every file or folder in it is a batch, in name order; new ones are
  picked up while ``--watch`` runs) and/or ``TrainingBatch`` manifests;
* **Jobs** are ``continual-trainer`` subprocesses; their exit code and termination-message file play the
  part of the pod status the planner reads;
* **the volume** is a local folder standing for ``/data``: the trainer config rendered for the pod is
  rewritten to local paths;
* **status** is written to ``status.json`` (the run's CR status, same shape) and ``batches.json`` (each
  batch's CR status) in the state folder, and events are printed and appended to ``events.jsonl``.

Editing the manifest while it runs works as ``kubectl apply`` does: ``suspend: true`` stops the current
trainer at a checkpoint and starts nothing new; a new learning rate applies from the next batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from prometheus_client import start_http_server
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.inbox.local import LocalS3Inbox, client_for, inbox_spec
from continual_operator.inbox.store import InboxStoreError
from continual_operator.local import executor
from continual_operator.local.executor import LocalJob, local_trainer_config, localize
from continual_operator.local.folder_inbox import (
    DEFAULT_MARKER,
    DEFAULT_SETTLE_SECONDS,
    Change,
    FolderInbox,
    NotABatch,
)
from continual_operator.local.state import (
    LOCAL_NAMESPACE,
    LocalModeError,
    claim,
    load_sources,
    locked,
    run_uid,
    save_sources,
)
from continual_operator.naming import object_name_problem
from continual_operator.observe.metrics import Metrics
from continual_operator.planning.actions import (
    CreateWorkload,
    DeleteWorkload,
    EmitEvent,
    Plan,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.executor import Executed
from continual_operator.planning.planner import PlanContext, plan
from continual_operator.planning.status import describe_validation_error, rfc3339
from continual_operator.workloads import resources
from continual_operator.workloads.views import JobView
from continual_trainer.fsutil import atomic_write_json
from continual_trainer.progress import read_status, status_patch
from continual_trainer.records import ProgressEvent

__all__ = [
    "LocalJob",
    "LocalModeError",
    "LocalOptions",
    "load_run",
    "local_trainer_config",
    "localize",
    "run_local",
]

log = logging.getLogger(__name__)

TERMINAL_PHASES = {"Succeeded", "Failed"}

#: Exit codes of ``continual-training local`` / ``demo`` (docs/local.md).
EXIT_OK = 0
EXIT_FAILED = 1  # a batch failed, or the run halted
EXIT_INVALID = 2  # a bad manifest or folder, another run's state, another local mode on the volume
EXIT_SOURCE_CHANGED = 3  # an inbox entry changed after its batch started (it is not retrained)
#: Interrupted: 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), after the trainer stopped.
EXIT_SIGNAL_BASE = 128


@dataclass(frozen=True)
class LocalOptions:
    """Where local mode reads and writes, and how it takes inbox entries."""

    manifest: Path
    volume: Path
    state: Path
    inbox: Path | None = None
    #: ``--inbox s3://bucket/prefix/``: the S3 inbox, with the operator's rules (docs/inbox.md).
    s3_inbox: str | None = None
    batch_manifests: tuple[Path, ...] = ()
    watch: bool = False
    poll_seconds: float = 2.0
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    marker: str = DEFAULT_MARKER
    trainer_command: tuple[str, ...] = (sys.executable, "-m", "continual_trainer.cli")
    #: Seconds a stopped trainer gets to save its checkpoint before it is killed.
    stop_grace_seconds: float = 60.0
    #: ``--metrics-port``: serve the operator's Prometheus metrics on 127.0.0.1 (docs/observability.md).
    metrics_port: int | None = None


# -- reading the inputs --------------------------------------------------------------------------------
def _read_yaml(path: Path, what: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise LocalModeError(f"cannot read the {what} {path}: {exc}") from exc


def _metadata(where: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The document's metadata, with a name a cluster would accept (or a :class:`LocalModeError`)."""
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise LocalModeError(
            f"{where}: metadata.name is missing: give the {doc.get('kind')} a name "
            "(metadata: {name: my-name}), as a cluster requires"
        )
    problem = object_name_problem(metadata["name"])
    if problem is not None:
        raise LocalModeError(f"{where}: metadata.name: {problem}")
    return metadata


def load_run(path: Path, generation: int = 1) -> ContinualTrainingRun:
    """Parse the run manifest as a cluster would; a bad one is a :class:`LocalModeError` naming the field.

    Keys are read by their manifest spelling only (``learningRate``, not ``learning_rate``): local mode
    accepts exactly the manifests the CRD accepts.
    """
    docs = _read_yaml(path, "run manifest")
    body = docs[0] if len(docs) == 1 else None
    if not isinstance(body, dict) or body.get("kind") != "ContinualTrainingRun":
        raise LocalModeError(
            f"{path}: expected one ContinualTrainingRun manifest (kind: ContinualTrainingRun) in the file"
        )
    name = _metadata(str(path), body)["name"]
    metadata = {
        **body["metadata"],
        "namespace": LOCAL_NAMESPACE,
        "uid": run_uid(name),
        "generation": generation,
    }
    metadata.setdefault("creationTimestamp", "2000-01-01T00:00:00Z")
    try:
        return ContinualTrainingRun.model_validate(
            {**body, "metadata": metadata, "status": {}}, by_alias=True, by_name=False
        )
    except ValidationError as exc:
        raise LocalModeError(f"{path}: invalid run: {describe_validation_error(exc, prefix='')}") from exc


@dataclass
class ManifestBatches:
    """The ``TrainingBatch`` documents found, and the documents that are not batches of this run."""

    batches: list[TrainingBatch] = field(default_factory=list)
    not_batches: list[NotABatch] = field(default_factory=list)


def manifest_batches(
    run: str, paths: Sequence[Path], first_seen: dict[str, int], reserved: Mapping[str, str] | None = None
) -> ManifestBatches:
    """``TrainingBatch`` documents (one or many per file, files or folders of files) naming this run.

    A batch of another run is not trained here and is listed (with the run it names) in the summary; a
    name already used by an inbox batch (``reserved``: name -> inbox file) is refused the same way.
    """
    files = [f for p in paths for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    found = ManifestBatches()
    for path in files:
        for number, doc in enumerate(_read_yaml(path, "batch manifest"), start=1):
            where = f"{path} (document {number})"
            if not isinstance(doc, dict) or doc.get("kind") != "TrainingBatch":
                kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
                if kind not in {"ContinualTrainingRun", "NoneType"}:
                    found.not_batches.append(NotABatch(where, f"kind {kind}, not a TrainingBatch"))
                continue
            name = _metadata(where, doc)["name"]
            spec = doc.get("spec")
            owner = spec.get("runName") if isinstance(spec, dict) else None
            if owner != run:
                found.not_batches.append(
                    NotABatch(f"{where} {name}", f"spec.runName is {owner!r}, not this run ({run!r})")
                )
                continue
            if reserved and name in reserved:
                found.not_batches.append(
                    NotABatch(
                        f"{where} {name}",
                        f"the inbox file {reserved[name]} is batch {name!r} already: rename this TrainingBatch",
                    )
                )
                continue
            seen = first_seen.setdefault(name, len(first_seen))
            body = {**doc, "metadata": {**doc["metadata"], **_meta(name, seen)}, "status": {}}
            try:
                found.batches.append(TrainingBatch.model_validate(body, by_alias=True, by_name=False))
            except ValidationError as exc:
                raise LocalModeError(
                    f"{where}: invalid batch {name!r}: {describe_validation_error(exc, prefix='')}"
                ) from exc
    return found


def _meta(name: str, seen: int) -> dict[str, Any]:
    created = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seen)
    return {
        "name": name,
        "namespace": LOCAL_NAMESPACE,
        "uid": f"{LOCAL_NAMESPACE}-{name}",
        "generation": 1,
        "creationTimestamp": rfc3339(created),
    }


def _batch(run: str, name: str, data: str, seen: int) -> TrainingBatch:
    return TrainingBatch.model_validate(
        {"metadata": _meta(name, seen), "spec": {"runName": run, "data": {"path": data}}, "status": {}}
    )


# -- the executor --------------------------------------------------------------------------------------
@dataclass
class LocalRun:
    """The state of one run in local mode: the objects a cluster would store, and the processes."""

    options: LocalOptions
    out: Callable[[str], None] = print
    run: ContinualTrainingRun | None = None
    batches: dict[str, TrainingBatch] = field(default_factory=dict)
    jobs: dict[str, LocalJob] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)
    inbox: FolderInbox | None = None
    #: What is not (or not yet) a batch, from the last look at the inbox and at the manifests.
    inbox_skipped: list[NotABatch] = field(default_factory=list)
    manifest_skipped: list[NotABatch] = field(default_factory=list)
    _reported: set[str] = field(default_factory=set)
    _manifest_names: set[str] = field(default_factory=set)
    _saved_phases: dict[str, str | None] = field(default_factory=dict)
    _spec_seen: dict[str, Any] = field(default_factory=dict)
    _last_progress: float = 0.0
    s3: LocalS3Inbox | None = None
    metrics: Metrics | None = None
    #: When this invocation first saw each batch: the local creationTimestamp only orders batches.
    _seen_at: dict[str, dt.datetime] = field(default_factory=dict)

    # -- one reconcile ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the manifest and the batches (as a watch would), keeping statuses."""
        saved = self._load_saved() if self.run is None else None
        if saved is not None:
            self._saved_phases = {n: b.get("phase") for n, b in saved[1].items()}
        generation = (self.run.metadata.generation or 1) if self.run is not None else 1
        run = load_run(self.options.manifest, generation)
        if saved is not None:
            run = run.model_copy(update={"status": type(run.status).model_validate(saved[0])})
        if self.run is not None:
            if run.spec.model_dump() != self.run.spec.model_dump():
                run = load_run(self.options.manifest, generation + 1)
            run = run.model_copy(update={"status": self.run.status})
        self.run = run
        inbox = self._folder_inbox()
        manifests = manifest_batches(
            run.metadata.name,
            self.options.batch_manifests,
            self.first_seen,
            reserved={r.name: r.source for r in inbox.records.values()} if inbox else None,
        )
        self._manifest_names = {b.metadata.name for b in manifests.batches}
        found = self._inbox_batches(run.metadata.name) + self._s3_batches(run) + manifests.batches
        self.manifest_skipped = manifests.not_batches
        for item in self.inbox_skipped + self.manifest_skipped:
            if not item.waiting and item.source not in self._reported:
                self._reported.add(item.source)
                self.out(f"not a batch: {item.source}: {item.reason}")
        for batch in found:
            old = self.batches.get(batch.metadata.name)
            if old is None and saved is not None and batch.metadata.name in saved[1]:
                status = type(batch.status).model_validate(saved[1][batch.metadata.name])
                old = batch.model_copy(update={"status": status})
            self.batches[batch.metadata.name] = (
                batch if old is None else old.model_copy(update={"spec": batch.spec})
            )

    def _inbox_batches(self, run: str) -> list[TrainingBatch]:
        """A batch per entry taken from the inbox (now or earlier: a deleted entry keeps its batch)."""
        self.inbox_skipped = []
        inbox = self._folder_inbox()
        if inbox is None:
            return []
        try:
            scan = inbox.scan()
        except FileNotFoundError as exc:
            raise LocalModeError(
                f"{exc}: create it, or point --inbox at the folder batches arrive in"
            ) from exc
        for change in scan.changes:
            self._source_changed(change)
        if scan.taken or scan.changes or scan.cleared:
            save_sources(self.options.state, inbox.records)
        self.inbox_skipped = list(scan.not_batches)
        for item in scan.not_batches:
            if item.waiting and item.source not in self._reported:
                self._reported.add(item.source)
                self.out(f"inbox: waiting for {item.source}: {item.reason}")
        out = []
        for record in inbox.records.values():
            seen = self.first_seen.setdefault(record.name, len(self.first_seen))
            out.append(_batch(run, record.name, str((inbox.folder / record.source).resolve()), seen))
        return out

    def _s3_batches(self, run: ContinualTrainingRun) -> list[TrainingBatch]:
        """A batch per object (or sub-prefix) taken from the S3 inbox, polled when due."""
        if self.options.s3_inbox is None:
            return []
        if self.s3 is None:
            spec = inbox_spec(run, self.options.s3_inbox, self.options.poll_seconds)
            self.s3 = LocalS3Inbox.load(spec, run.metadata.name, self.options.state, lambda: client_for(run))
        if self.s3.due(_now()):
            try:
                events = self.s3.poll(_now())
            except InboxStoreError as error:
                if not self.options.watch:
                    raise LocalModeError(f"inbox {self.options.s3_inbox}: {error}") from None
                events = [
                    EmitEvent(
                        "ContinualTrainingRun", run.metadata.name, "Warning", "InboxUnavailable", str(error)
                    )
                ]
            for event in events:
                self._event(event)
        out = []
        for batch in self.s3.batches():
            seen = self.first_seen.setdefault(batch.name, len(self.first_seen))
            body = {"runName": run.metadata.name, "order": batch.order, "data": {"uri": batch.uri}}
            out.append(TrainingBatch.model_validate({"metadata": _meta(batch.name, seen), "spec": body}))
        return out

    def _folder_inbox(self) -> FolderInbox | None:
        if self.inbox is None and self.options.inbox is not None:
            self.inbox = FolderInbox(
                self.options.inbox,
                load_sources(self.options.state),
                settle_seconds=self.options.settle_seconds,
                marker=self.options.marker,
                reserved=lambda: self._manifest_names,
            )
        return self.inbox

    def _source_changed(self, change: Change) -> None:
        """A taken entry changed. Before its batch ever started, the batch simply trains the new content
        (nothing was trained from the old one); after, it is a Warning and exit code 3."""
        record = change.record
        phase: str | None
        if record.name in self.batches:
            phase = self.batches[record.name].status.phase
        else:  # the first look of this invocation: the status saved by the last one
            phase = self._saved_phases.get(record.name)
        started = phase not in {None, "Queued"} or any(
            j.view.batch == record.name for j in self.jobs.values()
        )
        if not started and self.inbox is not None and self.inbox.accept(record.source, change.sha256):
            self._event(
                EmitEvent(
                    kind="TrainingBatch",
                    name=record.name,
                    type="Normal",
                    reason="SourceUpdated",
                    message=f"the inbox entry {record.source} changed before batch {record.name} started: "
                    "it trains the new content",
                )
            )
            return
        self._event(
            EmitEvent(
                kind="TrainingBatch",
                name=record.name,
                type="Warning",
                reason="SourceChanged",
                message=(
                    f"the inbox entry {record.source} changed after batch {record.name} started from it "
                    f"(sha256 {record.sha256[:12]}... -> {change.sha256[:12]}...; batch phase "
                    f"{phase or 'unknown'}): it is not retrained under this batch. To train the new content, "
                    f"drop it under a new file name; to clear this warning, restore the file or delete it "
                    f"(a deleted inbox entry is fine)"
                ),
            )
        )

    def changed_sources(self) -> list[str]:
        """Inbox entries whose content differs from what their batch started from (exit 3 while any is)."""
        if self.inbox is None:
            return []
        return sorted(r.source for r in self.inbox.records.values() if r.changed_sha256 is not None)

    def _load_saved(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Statuses and batch order from an earlier invocation: the state folder is local mode's etcd."""
        state = self.options.state
        try:
            run = json.loads((state / "status.json").read_text())
            batches = json.loads((state / "batches.json").read_text())
            self.first_seen.update(json.loads((state / "seen.json").read_text()))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LocalModeError(f"the local state in {state} is unreadable ({exc}); move it aside") from exc
        return run, batches

    def poll_jobs(self) -> None:
        """Turn finished processes into finished Job views (exit code + termination message)."""
        # The trainer's last progress first, while its Job still counts as running: a short batch may end
        # between two polls, and its loss and learning rate would otherwise never reach the status.
        if self.run is not None:
            self._mirror_progress()
        for job in self.jobs.values():
            executor.poll(job)

    def reconcile(self) -> Plan:
        """Plan with the pure planner and carry the plan out locally."""
        assert self.run is not None
        inbox = self.options.inbox
        # Inbox batches are confined to the inbox, the others to the volume: never in one process.
        context = PlanContext(data_roots=(str(inbox.resolve()),) if inbox is not None else ())
        decided = plan(
            self.run,
            list(self.batches.values()),
            list(executor.views(self.jobs)),
            now=_now(),
            context=context,
        )
        self.apply_now(decided)
        self._mirror_progress()
        self._write_status()
        return decided

    # -- the executor protocol (continual_operator.planning.executor) -----------------------------------
    async def apply(self, the_plan: Plan, *, now: dt.datetime) -> Executed:
        return self.apply_now(the_plan, now=now)

    async def workloads(self) -> list[JobView]:
        for job in self.jobs.values():
            executor.poll(job)
        return list(executor.views(self.jobs))

    def apply_now(self, the_plan: Plan, *, now: dt.datetime | None = None) -> Executed:
        """Carry out a plan's actions in order (the loop is synchronous; :meth:`apply` is this)."""
        assert self.run is not None
        created: list[str] = []
        for action in the_plan.actions:
            if isinstance(action, CreateWorkload):
                if action.job_name not in self.jobs:
                    view = action.workload.view(created=now or _now())
                    self.jobs[action.job_name] = executor.launch(action.workload, self._place(), view)
                    created.append(action.job_name)
            elif isinstance(action, DeleteWorkload):
                executor.delete(self.jobs, action.name)
            elif isinstance(action, UpdateBatchStatus):
                self._patch_batch(action)
            elif isinstance(action, UpdateRunStatus):
                self.run = self.run.model_copy(
                    update={
                        "status": type(self.run.status).model_validate(_merged(self.run.status, action.patch))
                    }
                )
            elif isinstance(action, EmitEvent):
                self._event(action)
        return Executed(tuple(created))

    def _place(self) -> executor.LocalPlace:
        options = self.options
        return executor.LocalPlace(options.volume, options.state, options.inbox, options.trainer_command)

    def _patch_batch(self, action: UpdateBatchStatus) -> None:
        batch = self.batches[action.batch]
        if self.metrics is not None and self.run is not None:
            self.metrics.batch_changed(self._key(), self._for_metrics(batch), action.patch)
        status = type(batch.status).model_validate(_merged(batch.status, action.patch))
        self.batches[action.batch] = batch.model_copy(update={"status": status})
        if action.patch.get("phase") == "Succeeded":
            s = status
            loss = f"{s.mean_loss:.4f}" if s.mean_loss is not None else "n/a"
            self.out(
                f"batch {action.batch}: steps {s.start_step}..{s.end_step}, {s.samples} samples, "
                f"{s.tokens} tokens, mean loss {loss}, checkpoint {s.checkpoint}"
            )

    def _event(self, event: EmitEvent) -> None:
        self.out(f"[{event.type}] {event.kind}/{event.name} {event.reason}: {event.message}")
        self.options.state.mkdir(parents=True, exist_ok=True)
        with (self.options.state / "events.jsonl").open("a") as handle:
            handle.write(json.dumps({"time": rfc3339(_now()), **event.__dict__}) + "\n")

    def _mirror_progress(self) -> None:
        """While a trainer runs, copy its progress (status.json on the volume) into the run's status,
        as the trainer's Kubernetes sink does in a cluster."""
        assert self.run is not None
        if not any(j.process is not None for j in self.jobs.values()):
            return
        run_dir = Path(localize(resources.run_dir(self.run.spec), self.options.volume))
        try:
            progress = read_status(run_dir / "status.json")
            if progress is None:
                return
            progress.pop("batchProgress", None)  # derived; status_patch recomputes it
            event = ProgressEvent.model_validate(progress)
        except (OSError, ValueError):  # being replaced, or from an older trainer: next time
            return
        patch = status_patch(event)["status"]
        self.run = self.run.model_copy(
            update={"status": type(self.run.status).model_validate(_merged(self.run.status, patch))}
        )
        now = time.monotonic()
        if event.kind == "progress" and now - self._last_progress > 5:
            self._last_progress = now
            self.out(
                f"  {event.batch_id}: step {event.global_step}/{event.batch_target_step}"
                + (f" loss {event.loss:.4f}" if event.loss is not None else "")
            )

    def _write_status(self) -> None:
        assert self.run is not None
        state = self.options.state
        state.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            state / "status.json", self.run.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        atomic_write_json(
            state / "batches.json",
            {
                n: b.status.model_dump(mode="json", by_alias=True, exclude_none=True)
                for n, b in sorted(self.batches.items())
            },
        )
        atomic_write_json(state / "seen.json", self.first_seen)
        if self.metrics is not None:
            self.metrics.run_phase(self._key(), self.run.status.phase)
            self.metrics.observe_run(
                self._key(), self.run, [self._for_metrics(b) for b in self.batches.values()]
            )

    def _key(self) -> tuple[str, str]:
        assert self.run is not None
        return LOCAL_NAMESPACE, self.run.metadata.name

    def _for_metrics(self, batch: TrainingBatch) -> TrainingBatch:
        """The batch as the metrics see it: created when this invocation first saw it."""
        seen = self._seen_at.setdefault(batch.metadata.name, _now())
        return batch.model_copy(
            update={"metadata": batch.metadata.model_copy(update={"creation_timestamp": seen})}
        )

    # -- loop ------------------------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing runs and nothing is left to start (every batch finished, or the run halted), and no
        inbox entry is still being written."""
        assert self.run is not None
        if any(j.view.writing for j in self.jobs.values()):
            return False
        if self.run.status.phase in {"Halted", "Failed", "Suspended"}:
            return True
        if any(item.waiting for item in self.inbox_skipped):
            return False
        if self.s3 is not None and self.s3.backlog:
            return False  # the last poll stopped at maxKeysPerPoll: more keys are waiting
        return all(b.status.phase in TERMINAL_PHASES for b in self.batches.values())

    def running(self) -> list[subprocess.Popen[bytes]]:
        return [j.process for j in self.jobs.values() if j.process is not None and j.process.poll() is None]

    def stop(self, interrupts: Interrupts, grace: float) -> str:
        """SIGTERM every trainer (it checkpoints and exits 85) and wait for it: never leave one behind.

        A further Ctrl-C while waiting only says what is going on; a third one (or the grace period
        running out) kills the trainer, which loses the steps since its last checkpoint (they are
        retrained, exactly, next time) but never the checkpoints. Returns what happened, for the user.
        """
        running = self.running()
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = False
        while any(p.poll() is None for p in running):
            if not killed and (interrupts.count >= 3 or time.monotonic() > deadline):
                for process in running:
                    if process.poll() is None:
                        process.kill()
                killed = True
            time.sleep(0.05)
        self.poll_jobs()
        if self.run is not None:  # None: interrupted before the first look at the manifest
            self._write_status()
        codes = sorted({p.returncode for p in running})
        if not running:
            return "no trainer was running"
        if killed:
            return "the trainer was killed: the steps since its last checkpoint are retrained next time"
        return f"the trainer saved a checkpoint and stopped (exit {', '.join(map(str, codes))})"


class Interrupts:
    """SIGINT, SIGTERM, SIGHUP while local mode runs: counted, never raised in the middle of a state write.

    The first asks the loop to stop the trainers at a checkpoint; the second is answered with what local
    mode waits for; the third kills the trainers (and still waits for them to exit). The handler only
    counts and writes with ``os.write`` (safe inside a signal handler, unlike ``print``).
    """

    def __init__(self) -> None:
        self.count = 0
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        self.signum = self.signum or signum
        if self.count == 2:
            message = "still waiting for the trainer to save its checkpoint; Ctrl-C once more kills it\n"
        elif self.count >= 3:
            message = "killing the trainer and waiting for it to exit\n"
        else:
            message = "stopping: the trainer saves a checkpoint first (Ctrl-C again: see what it waits for)\n"
        os.write(sys.stderr.fileno(), message.encode())

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        # SIGHUP too: a closed terminal must not leave the trainer (in its own session) unrecorded
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for number, previous in self._previous.items():
                # Once interrupted, local mode is on its way out: a Ctrl-C pressed again while it exits is
                # ignored, not raised as a KeyboardInterrupt in the middle of its shutdown.
                signal.signal(number, signal.SIG_IGN if self.count else previous)

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when a signal came."""
        deadline = time.monotonic() + seconds
        while not self.count and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def run_local(options: LocalOptions, out: Callable[[str], None] = print) -> int:
    """Train every batch of the run; the exit code is one of the ``EXIT_*`` constants (docs/local.md).

    Refused up front, before anything is written: another local mode on the same state folder or volume
    (a lock), and a state folder that belongs to another run.
    """
    name = load_run(options.manifest).metadata.name  # an invalid manifest is refused before any write
    with locked(options.state / "lock", options.volume / ".continual-local.lock"):
        claim(options.state, name)
        state = LocalRun(options, out=out)
        with _metrics_served(state, options.metrics_port, out):
            return _loop(state, options, out)


@contextmanager
def _metrics_served(state: LocalRun, port: int | None, out: Callable[[str], None]) -> Iterator[None]:
    """``--metrics-port``: the operator's metrics, fed from the status local mode writes, on 127.0.0.1."""
    if port is None:
        yield
        return
    state.metrics = Metrics()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=state.metrics.registry)
    out(f"metrics on http://127.0.0.1:{server.server_port}/metrics")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _loop(state: LocalRun, options: LocalOptions, out: Callable[[str], None]) -> int:
    """Reconcile until the run is idle (or, with --watch, until interrupted); the exit code."""
    interrupts = Interrupts()
    with interrupts.installed():
        while not interrupts.count:
            state.refresh()
            state.poll_jobs()
            decided = state.reconcile()
            if not options.watch and state.idle():
                break
            if decided.of(CreateWorkload):
                continue  # plan again at once: record the Job as Training
            interrupts.sleep(min(decided.requeue_after or options.poll_seconds, options.poll_seconds))
        if interrupts.count:
            what = state.stop(interrupts, options.stop_grace_seconds)
            out(f"interrupted: {what}. Run the same command again to continue")
            return EXIT_SIGNAL_BASE + (interrupts.signum or signal.SIGINT)
    return _summary(state, out)


def _summary(state: LocalRun, out: Callable[[str], None]) -> int:
    """Count what was found and what trained; the exit code."""
    assert state.run is not None
    options = state.options
    if state.inbox is not None:
        records, skipped = state.inbox.records, state.inbox_skipped
        out(
            f"inbox {_shown(state.inbox.folder)}: {len(records) + len(skipped)} entries -> {len(records)} batches"
            + (f"; not batches: {_listed(skipped)}" if skipped else "")
        )
    if state.manifest_skipped:
        out(f"batch manifests: not trained here: {_listed(state.manifest_skipped)}")
    phases = {n: b.status.phase for n, b in state.batches.items()}
    failed = sorted(n for n, p in phases.items() if p == "Failed")
    status = state.run.status
    out(
        f"run {state.run.metadata.name}: phase {status.phase}, global step {status.global_step}, "
        f"{sum(p == 'Succeeded' for p in phases.values())}/{len(phases)} batches succeeded"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; status in {_shown(options.state / 'status.json')}"
    )
    changed = state.changed_sources()
    if changed:
        out(
            f"changed after their batch started (not retrained; see {_shown(options.state / 'events.jsonl')}): "
            f"{', '.join(changed)}. Drop new content under a new name; restore or delete these files"
        )
    if failed or status.phase in {"Halted", "Failed"}:
        return EXIT_FAILED
    return EXIT_SOURCE_CHANGED if changed else EXIT_OK


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _listed(items: Sequence[NotABatch]) -> str:
    return "; ".join(f"{n.source} ({n.reason})" for n in items)


def _merged(model: Any, patch: Any) -> dict[str, Any]:
    current = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key, value in dict(patch).items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
    return dict(current)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
