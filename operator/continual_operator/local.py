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

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from continual_operator import resources
from continual_operator.actions import (
    CreateJob,
    DeleteJob,
    EmitEvent,
    Plan,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.planner import plan
from continual_operator.status import describe_validation_error, rfc3339
from continual_operator.views import JobPhase, JobView
from continual_trainer.config import TrainerConfig
from continual_trainer.fsutil import atomic_write_json
from continual_trainer.progress import read_status, status_patch
from continual_trainer.records import ProgressEvent

log = logging.getLogger(__name__)

TERMINAL_PHASES = {"Succeeded", "Failed", "Skipped"}


class LocalModeError(Exception):
    """A problem with local mode's input (manifest, folders): the CLI prints it and exits non-zero."""


@dataclass(frozen=True)
class LocalOptions:
    """Where local mode reads and writes."""

    manifest: Path
    volume: Path
    state: Path
    inbox: Path | None = None
    batch_manifests: tuple[Path, ...] = ()
    watch: bool = False
    poll_seconds: float = 2.0
    trainer_command: tuple[str, ...] = (sys.executable, "-m", "continual_trainer.cli")


# -- reading the inputs --------------------------------------------------------------------------------
def load_run(path: Path, generation: int = 1) -> ContinualTrainingRun:
    """Parse the run manifest; a bad one is a :class:`LocalModeError` naming the field."""
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LocalModeError(f"cannot read the run manifest {path}: {exc}") from exc
    if not isinstance(body, dict) or body.get("kind") != "ContinualTrainingRun":
        raise LocalModeError(f"{path}: expected a ContinualTrainingRun manifest (kind: ContinualTrainingRun)")
    metadata = {"namespace": "local", "uid": "local", **body.get("metadata", {}), "generation": generation}
    metadata.setdefault("creationTimestamp", "2000-01-01T00:00:00Z")
    try:
        return ContinualTrainingRun.model_validate({**body, "metadata": metadata, "status": {}})
    except ValidationError as exc:
        raise LocalModeError(f"{path}: invalid run: {describe_validation_error(exc)}") from exc


def batch_name(path: Path) -> str:
    """A DNS-label-like batch name from a file name (``Batch 001.jsonl`` -> ``batch-001``)."""
    stem = path.name.split(".", 1)[0] if path.is_file() else path.name
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not name:
        raise LocalModeError(f"{path}: cannot derive a batch name from this file name; rename it")
    return name[:63].rstrip("-")


def inbox_batches(run: str, inbox: Path, first_seen: dict[str, int]) -> list[TrainingBatch]:
    """Every non-hidden file or folder of the inbox is a batch; creation order is the order first seen."""
    if not inbox.is_dir():
        raise LocalModeError(f"the inbox {inbox} is not a folder")
    out = []
    for path in sorted(p for p in inbox.iterdir() if not p.name.startswith(".")):
        name = batch_name(path)
        seen = first_seen.setdefault(name, len(first_seen))
        out.append(_batch(run, name, str(path.resolve()), seen))
    return out


def manifest_batches(run: str, paths: Sequence[Path], first_seen: dict[str, int]) -> list[TrainingBatch]:
    """``TrainingBatch`` documents (one or many per file, files or folders of files) naming this run."""
    files = [f for p in paths for f in (sorted(p.glob("*.y*ml")) if p.is_dir() else [p])]
    out = []
    for path in files:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        except (OSError, yaml.YAMLError) as exc:
            raise LocalModeError(f"cannot read the batch manifest {path}: {exc}") from exc
        for doc in docs:
            if doc.get("kind") != "TrainingBatch" or doc.get("spec", {}).get("runName") != run:
                continue
            name = str(doc.get("metadata", {}).get("name", ""))
            seen = first_seen.setdefault(name, len(first_seen))
            body = {**doc, "metadata": {**_meta(name, seen), **doc.get("metadata", {})}, "status": {}}
            try:
                out.append(TrainingBatch.model_validate(body))
            except ValidationError as exc:
                raise LocalModeError(
                    f"{path}: invalid batch {name!r}: {describe_validation_error(exc)}"
                ) from exc
    return out


def _meta(name: str, seen: int) -> dict[str, Any]:
    created = dt.datetime(2000, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seen)
    return {
        "name": name,
        "namespace": "local",
        "uid": f"local-{name}",
        "generation": 1,
        "creationTimestamp": rfc3339(created),
    }


def _batch(run: str, name: str, data: str, seen: int) -> TrainingBatch:
    return TrainingBatch.model_validate(
        {"metadata": _meta(name, seen), "spec": {"runName": run, "data": {"path": data}}, "status": {}}
    )


# -- the executor --------------------------------------------------------------------------------------
def localize(pod_path: str, volume: Path) -> str:
    """Map a path as the pod sees it (under ``/data``) to the local folder standing for the volume."""
    if pod_path == resources.DATA_MOUNT or pod_path.startswith(resources.DATA_MOUNT + "/"):
        return str(volume / pod_path[len(resources.DATA_MOUNT) :].lstrip("/"))
    return pod_path


def local_trainer_config(config: TrainerConfig, volume: Path, termination: Path) -> TrainerConfig:
    """The pod's trainer config with local paths, no Kubernetes progress sink, and a local message file."""
    base = config.base_model
    if base.path is not None:
        base = base.model_copy(update={"path": localize(base.path, volume)})
    data = config.batch.data
    if data.path is not None:  # uri data is read from the store, not the volume
        data = data.model_copy(update={"path": localize(data.path, volume)})
    batch = config.batch.model_copy(update={"data": data})
    return config.model_copy(
        update={
            "run_dir": localize(config.run_dir, volume),
            "base_model": base,
            "batch": batch,
            "progress": config.progress.model_copy(update={"kubernetes": None, "stdout": True}),
            "termination_message_path": str(termination),
        }
    )


@dataclass
class LocalJob:
    """A trainer process standing in for a Job."""

    view: JobView
    process: subprocess.Popen[bytes] | None
    termination: Path
    log_path: Path


@dataclass
class LocalRun:
    """The state of one run in local mode: the objects a cluster would store, and the processes."""

    options: LocalOptions
    out: Callable[[str], None] = print
    run: ContinualTrainingRun | None = None
    batches: dict[str, TrainingBatch] = field(default_factory=dict)
    jobs: dict[str, LocalJob] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)
    _spec_seen: dict[str, Any] = field(default_factory=dict)
    _last_progress: float = 0.0

    # -- one reconcile ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the manifest and the batches (as a watch would), keeping statuses."""
        saved = self._load_saved() if self.run is None else None
        generation = (self.run.metadata.generation or 1) if self.run is not None else 1
        run = load_run(self.options.manifest, generation)
        if saved is not None:
            run = run.model_copy(update={"status": type(run.status).model_validate(saved[0])})
        if self.run is not None:
            if run.spec.model_dump() != self.run.spec.model_dump():
                run = load_run(self.options.manifest, generation + 1)
            run = run.model_copy(update={"status": self.run.status})
        self.run = run
        found = []
        if self.options.inbox is not None:
            found += inbox_batches(run.metadata.name, self.options.inbox, self.first_seen)
        found += manifest_batches(run.metadata.name, self.options.batch_manifests, self.first_seen)
        for batch in found:
            old = self.batches.get(batch.metadata.name)
            if old is None and saved is not None and batch.metadata.name in saved[1]:
                status = type(batch.status).model_validate(saved[1][batch.metadata.name])
                old = batch.model_copy(update={"status": status})
            self.batches[batch.metadata.name] = (
                batch if old is None else old.model_copy(update={"spec": batch.spec})
            )

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
        for job in self.jobs.values():
            if job.process is None or job.process.poll() is None:
                continue
            code = job.process.returncode
            message = job.termination.read_text() if job.termination.exists() else None
            if code < 0:  # killed by a signal: report it as a container runtime would (128 + signal)
                code = 128 - code
            phase: JobPhase = "Succeeded" if code == 0 else "Failed"
            job.view = dataclasses.replace(job.view, phase=phase, exit_code=code, termination_message=message)
            job.process = None

    def reconcile(self) -> Plan:
        """Plan with the pure planner and carry the plan out locally."""
        assert self.run is not None
        decided = plan(
            self.run, list(self.batches.values()), [j.view for j in self.jobs.values()], now=_now()
        )
        for action in decided.actions:
            if isinstance(action, CreateJob):
                self._create(action)
            elif isinstance(action, DeleteJob):
                self._delete(action)
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
        self._mirror_progress()
        self._write_status()
        return decided

    # -- actions ---------------------------------------------------------------------------------------
    def _create(self, action: CreateJob) -> None:
        assert self.run is not None
        batch = self.batches[action.batch]
        pod_config = resources.get_trainer_config(self.run, batch, action.abandon_batches)
        jobs_dir = self.options.state / "jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        termination = jobs_dir / f"{action.job_name}.termination.json"
        termination.unlink(missing_ok=True)
        config = local_trainer_config(pod_config, self.options.volume, termination)
        config_path = jobs_dir / f"{action.job_name}.yaml"
        config_path.write_text(resources.render_trainer_config(config))
        log_path = jobs_dir / f"{action.job_name}.log"
        env = dict(os.environ)
        if self.run.spec.base_model.path is not None:
            env.setdefault("HF_HUB_OFFLINE", "1")
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                [*self.options.trainer_command, "--config", str(config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C goes to us; we forward SIGTERM so the trainer checkpoints
            )
        view = JobView(name=action.job_name, batch=action.batch, attempt=action.attempt, created=_now())
        self.jobs[action.job_name] = LocalJob(view, process, termination, log_path)

    def _delete(self, action: DeleteJob) -> None:
        job = self.jobs.get(action.name)
        if job is None:
            return
        if job.process is not None and job.process.poll() is None:
            job.process.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits "preempted"
            job.view = dataclasses.replace(job.view, deleting=True)
            return
        del self.jobs[action.name]

    def _patch_batch(self, action: UpdateBatchStatus) -> None:
        batch = self.batches[action.batch]
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

    # -- loop ------------------------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing runs and nothing is left to start (every batch finished, or the run halted)."""
        assert self.run is not None
        if any(j.view.writing for j in self.jobs.values()):
            return False
        if self.run.status.phase in {"Halted", "Failed", "Suspended"}:
            return True
        return all(b.status.phase in TERMINAL_PHASES for b in self.batches.values())

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM every trainer (they checkpoint), wait for them, then give up on stragglers."""
        running = [
            j.process for j in self.jobs.values() if j.process is not None and j.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


def run_local(options: LocalOptions, out: Callable[[str], None] = print) -> int:
    """Train every batch of the run; return 0 when all succeeded, 1 when any failed or the run halted."""
    state = LocalRun(options, out=out)
    try:
        while True:
            state.refresh()
            state.poll_jobs()
            decided = state.reconcile()
            if not options.watch and state.idle():
                break
            if decided.of(CreateJob):
                continue  # plan again at once: record the Job as Training
            time.sleep(min(decided.requeue_after or options.poll_seconds, options.poll_seconds))
    except KeyboardInterrupt:
        out("interrupted: stopping the trainer at a checkpoint (SIGTERM)")
        state.stop()
        return 130
    assert state.run is not None
    phases = {n: b.status.phase for n, b in state.batches.items()}
    failed = sorted(n for n, p in phases.items() if p == "Failed")
    status = state.run.status
    out(
        f"run {state.run.metadata.name}: phase {status.phase}, global step {status.global_step}, "
        f"{sum(p == 'Succeeded' for p in phases.values())}/{len(phases)} batches succeeded"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; status in {options.state / 'status.json'}"
    )
    return 1 if failed or status.phase in {"Halted", "Failed"} else 0


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
