"""What the operator's end-to-end tests build, watch and explain: runs on a prepared volume, a recording
of every change the operator makes, and the diagnostics a failing test prints.

* **Manifests**: `run_manifest` is the quickstart run (`continual_operator/demo/run.yaml`, the same
  training settings as the README's step ranges 0..6, 6..12, 12..18), adapted to a cluster: any
  storage, progress reported into the run's status, a 1 s back-off, no GPU. `batch_manifest` is one
  `TrainingBatch` per demo data file.
* **The volume**: `prepare_volume` puts the tiny model at `models/tiny-llama` and the demo batches in
  the run folder's `inbox/` on a claim's host folder before the first pod mounts it, owned by the
  trainer's uid as fsGroup would leave them.
* **Recordings**: `WatchRecorder` keeps every watch event of a collection (a background thread), so
  that tests assert on everything that happened, not on what a poll happened to see: every Job ever
  created, every status the trainer patched, how many Jobs were active at once.
* **`World`**: the test's namespace as the operator sees it, with `dump()` (operator log, pods and
  their logs, Events, run/batch/Job summaries) for every wait and, through `explained()`, for every
  failed assertion.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .kubeapi import JSON, ApiError, RawApi
from .operator_process import OperatorProcess
from .podrunner import PodRunner
from .podworker import ContainerProcess
from .waiting import wait_until

if TYPE_CHECKING:
    from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "trainer_image" / "continual_trainer" / "demo_data"
#: (TrainingBatch name, data file): the README's three toy batches.
DEMO_BATCHES = (
    ("batch-001", "batch-001.jsonl"),
    ("batch-002", "batch-002.jsonl"),
    ("batch-003", "batch-003.txt"),
)
#: The step range each demo batch trains with the demo settings (the README's quickstart output).
DEMO_STEPS = {"batch-001": (0, 6), "batch-002": (6, 12), "batch-003": (12, 18)}
MODEL_PATH = "models/tiny-llama"
TRAINER_UID = 1000
GROUP_VERSION = "continual.dev/v1alpha1"


# --- manifests and the volume -----------------------------------------------------------------------


def run_manifest(name: str, storage: JSON, *, training: JSON | None = None, **spec: Any) -> JSON:
    """The quickstart run as a cluster takes it; `training` keys override the demo's training settings,
    other keyword arguments whole `spec` keys."""
    demo = yaml.safe_load(resources.files("continual_operator.demo").joinpath("run.yaml").read_text())
    body = copy.deepcopy(demo["spec"])
    # One Job per batch unless a test coalesces: the scenarios create batches one by one, and which of them
    # a coalesced Job would take depends on how fast the operator sees them (tests/e2e/test_coalesce.py).
    body["training"] |= {"maxBatchesPerJob": 1} | (training or {})
    body |= {
        "baseModel": {"path": MODEL_PATH},
        "storage": storage,
        "resources": {"gpus": 0},
        "image": "continual-training/trainer:e2e",
        # At most one status patch per 0.1 s: about one per step of the tiny model.
        "progress": {"enabled": True, "minIntervalSeconds": 0.1, "everySteps": 1},
        "failurePolicy": {"maxRetriesPerBatch": 2, "backoffSeconds": 1},
        "terminationGracePeriodSeconds": 30,
    }
    body |= spec
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ContinualTrainingRun",
        "metadata": {"name": name},
        "spec": body,
    }


def pvc_manifest(name: str) -> JSON:
    """A 1Gi ReadWriteOnce claim (the pod runner bind-mounts a folder for it)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def status(obj: JSON) -> JSON:
    """An object's status ({} before the operator wrote one)."""
    return obj.get("status") or {}


def condition(obj: JSON, type_: str) -> JSON:
    """The condition ``type_`` of an object's status."""
    return next(c for c in status(obj).get("conditions") or [] if c["type"] == type_)


def batch_manifest(name: str, run: str, data_file: str) -> JSON:
    """A TrainingBatch whose data is `inbox/<data_file>` in the run folder."""
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "TrainingBatch",
        "metadata": {"name": name},
        "spec": {"runName": run, "data": {"path": f"inbox/{data_file}"}},
    }


def prepare_volume(claim_folder: Path, model: Path, run_sub_path: str) -> Path:
    """The model and the demo batches on a claim's host folder; returns the run folder."""
    shutil.copytree(model, claim_folder / MODEL_PATH)
    run_folder = claim_folder / run_sub_path
    inbox = run_folder / "inbox"
    inbox.mkdir(parents=True)
    for _, data_file in DEMO_BATCHES:
        shutil.copy2(DEMO_DATA / data_file, inbox / data_file)
    for entry in [claim_folder, *claim_folder.rglob("*")]:
        os.chown(entry, TRAINER_UID, TRAINER_UID)
    return run_folder


# --- recordings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One watch event: ADDED/MODIFIED/DELETED (or LISTED for what existed when recording began)."""

    type: str
    object: JSON
    at: float  # time.monotonic()

    @property
    def name(self) -> str:
        return str(self.object["metadata"]["name"])


class WatchRecorder:
    """Records every event of one collection from a background watch (its own API connection).

    `on_event` runs in the watch thread for each event (keep it quick); its exceptions are recorded in
    `errors` and fail `stop()`, so that a broken assertion inside a callback is never lost.
    """

    def __init__(self, api: RawApi, path: str, on_event: Callable[[Recorded], None] | None = None) -> None:
        self.api = api
        self.path = path
        self.on_event = on_event
        self.events: list[Recorded] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"recorder {path}", daemon=True)

    def start(self) -> WatchRecorder:
        self._thread.start()
        wait_until(self._synced.is_set, timeout=30, what=f"the first listing of {self.path}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self.api.close_watches()
        self._thread.join(timeout=30)
        if self.errors:
            raise AssertionError(f"watch recorder of {self.path}:\n" + "\n".join(self.errors))

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.events)

    def _record(self, event_type: str, obj: JSON) -> None:
        record = Recorded(event_type, obj, time.monotonic())
        with self._lock:
            self.events.append(record)
        if self.on_event is not None:
            try:
                self.on_event(record)
            except Exception as error:  # reported by stop()
                self.errors.append(f"on_event({event_type} {record.name}): {type(error).__name__}: {error}")

    def _loop(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    listing = self.api.get(self.path)
                    for item in listing["items"]:
                        self._record("LISTED", item)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self._synced.set()
                for event in self.api.watch(self.path, {"resourceVersion": resource_version}, 30):
                    if event["type"] == "ERROR":  # 410 Gone: list again (events in between are lost)
                        self.errors.append(f"watch expired: {event['object']}")
                        resource_version = None
                        break
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    self._record(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except Exception as error:
                if self._stop.is_set():
                    break
                self.errors.append(f"watch failed: {type(error).__name__}: {error}")
                self._stop.wait(0.5)


def job_has(job: JSON, *conditions: str) -> bool:
    """The Job controller set one of these conditions (Complete, Failed) on the Job."""
    found = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in conditions and c["status"] == "True" for c in found)


def job_finished(job: JSON) -> bool:
    return job_has(job, "Complete", "Failed")


class ActiveJobs:
    """From Job watch events: which Jobs exist and have not finished, and the most ever at once.

    A Job being deleted (foreground, while its pod checkpoints) still counts until it is gone, as it
    does for the operator's single-writer rule.
    """

    def __init__(self) -> None:
        self.active: dict[str, str] = {}  # uid -> name
        self.most = 0
        self.overlaps: list[list[str]] = []

    def __call__(self, record: Recorded) -> None:
        uid = record.object["metadata"]["uid"]
        if record.type == "DELETED" or job_finished(record.object):
            self.active.pop(uid, None)
        else:
            self.active[uid] = record.name
        self.most = max(self.most, len(self.active))
        if len(self.active) > 1:
            self.overlaps.append(sorted(self.active.values()))


# --- the namespace as the operator sees it ----------------------------------------------------------


def trainer_events(log: str) -> list[JSON]:
    """The trainer's JSON progress lines (batch-started, progress, checkpoint, batch-finished)."""
    events = []
    for line in log.splitlines():
        if line.startswith("{") and '"kind"' in line:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill
    return events


class World:
    """The test's namespace, its pod runner and its operator; paths, reads, waits and diagnostics."""

    def __init__(
        self, control_plane: ControlPlane, namespace: str, pod_runner: PodRunner, operator: OperatorProcess
    ) -> None:
        self.control_plane = control_plane
        self._client = control_plane.api_client()
        self.api = RawApi(self._client)
        self._recorders: list[tuple[WatchRecorder, Any]] = []
        self.namespace = namespace
        self.pod_runner = pod_runner
        self.operator = operator
        ns = f"/namespaces/{namespace}"
        self.runs_path = f"/apis/{GROUP_VERSION}{ns}/continualtrainingruns"
        self.batches_path = f"/apis/{GROUP_VERSION}{ns}/trainingbatches"
        self.jobs_path = f"/apis/batch/v1{ns}/jobs"
        self.pods_path = f"/api/v1{ns}/pods"
        self.config_maps_path = f"/api/v1{ns}/configmaps"
        self.claims_path = f"/api/v1{ns}/persistentvolumeclaims"
        self.events_path = f"/api/v1{ns}/events"

    def record(self, path: str, on_event: Callable[[Recorded], None] | None = None) -> WatchRecorder:
        """A started `WatchRecorder` on its own connection; `close()` stops it."""
        client = self.control_plane.api_client()
        recorder = WatchRecorder(RawApi(client), path, on_event).start()
        self._recorders.append((recorder, client))
        return recorder

    def close(self) -> None:
        """Stop the recorders (raising what their callbacks raised) and close the connections."""
        errors = []
        for recorder, client in self._recorders:
            try:
                recorder.stop()
            except AssertionError as error:
                errors.append(str(error))
            client.close()
        self._recorders.clear()
        self._client.close()
        if errors:
            raise AssertionError("\n".join(errors))

    # -- objects ----------------------------------------------------------------------------------------
    def create(self, manifest: JSON) -> JSON:
        """Create a run, a batch or a claim in the namespace (as the admin)."""
        paths = {
            "ContinualTrainingRun": self.runs_path,
            "TrainingBatch": self.batches_path,
            "PersistentVolumeClaim": self.claims_path,
        }
        return self.api.create(paths[manifest["kind"]], manifest)

    def run(self, name: str) -> JSON:
        return self.api.get(f"{self.runs_path}/{name}")

    def batch(self, name: str) -> JSON:
        return self.api.get(f"{self.batches_path}/{name}")

    def jobs(self, run: str | None = None) -> list[JSON]:
        query = {"labelSelector": f"continual.dev/run={run}"} if run else None
        return list(self.api.get(self.jobs_path, query)["items"])

    def config_maps(self, run: str) -> list[JSON]:
        return list(
            self.api.get(self.config_maps_path, {"labelSelector": f"continual.dev/run={run}"})["items"]
        )

    def events(self) -> list[JSON]:
        return list(self.api.get(self.events_path)["items"])

    def exists(self, path: str) -> bool:
        try:
            self.api.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    # -- waits ------------------------------------------------------------------------------------------
    def wait(
        self, condition: Callable[[], Any], what: str, timeout: float = 90, interval: float = 0.2
    ) -> Any:
        return wait_until(condition, timeout=timeout, what=what, interval=interval, dump=self.dump)

    def wait_run(self, name: str, check: Callable[[JSON], bool], what: str, timeout: float = 90) -> JSON:
        def reached() -> JSON | None:
            run = self.run(name)
            return run if check(run) else None

        return self.wait(reached, f"run {name}: {what}", timeout)

    def wait_batch_phase(self, name: str, phase: str, timeout: float = 120) -> JSON:
        def reached() -> JSON | None:
            batch = self.batch(name)
            return batch if (batch.get("status") or {}).get("phase") == phase else None

        return self.wait(reached, f"batch {name} {phase}", timeout)

    def wait_trainer_event(
        self, job: str, check: Callable[[JSON], bool], what: str, timeout: float = 90, *, skip: int = 0
    ) -> tuple[ContainerProcess, JSON]:
        """The first trainer event that passes `check` in the log of a process of the Job's pods (after
        the first `skip` processes: those of a pod seen before), polled every 20 ms, so that a test acts
        on the trainer's progress within the same step, not a second later."""

        def seen() -> tuple[ContainerProcess, JSON] | None:
            for process in self.pod_runner.processes(job)[skip:]:
                found = next((e for e in trainer_events(process.log()) if check(e)), None)
                if found is not None:
                    return process, found
            return None

        return self.wait(seen, f"trainer of {job}: {what}", timeout, interval=0.02)

    # -- diagnostics ------------------------------------------------------------------------------------
    def dump(self) -> str:
        """Everything a failed wait or assertion needs to be understood without re-running it."""
        sections = [self.operator.log_tail(120), self.pod_runner.describe(self.namespace)]
        try:
            sections.append(self._summary())
        except ApiError as error:
            sections.append(f"(listing objects failed: {error})")
        return "\n".join(sections)

    def _summary(self) -> str:
        lines = ["--- runs ---"]
        lines += [
            f"{run['metadata']['name']}: spec.suspend={run['spec'].get('suspend')} "
            f"status={json.dumps(run.get('status'))}"
            for run in self.api.get(self.runs_path)["items"]
        ]
        lines.append("--- batches ---")
        lines += [
            f"{batch['metadata']['name']}: {json.dumps(batch.get('status'))}"
            for batch in self.api.get(self.batches_path)["items"]
        ]
        lines.append("--- jobs ---")
        for job in self.api.get(self.jobs_path)["items"]:
            deleting = " deleting" if job["metadata"].get("deletionTimestamp") else ""
            lines.append(f"{job['metadata']['name']}{deleting}: {json.dumps(job.get('status'))}")
        lines.append("--- events ---")
        for event in sorted(self.events(), key=lambda e: e.get("lastTimestamp") or ""):
            involved = event["involvedObject"]
            lines.append(
                f"{event.get('lastTimestamp')} {event['type']} {involved['kind']}/{involved['name']} "
                f"{event['reason']}: {event.get('message', '')[:300]}"
            )
        return "\n".join(lines)

    @contextmanager
    def explained(self) -> Iterator[None]:
        """Print `dump()` when the block fails (pytest shows a failed test's stdout)."""
        try:
            yield
        except BaseException:
            print(self.dump())  # the failure report
            raise


def signal_pending(pid: int, signum: int) -> bool:
    """Whether `signum` waits to be delivered to process `pid` (e.g. while it is stopped)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    bit = 1 << (signum - 1)
    return any(
        int(line.split()[1], 16) & bit
        for line in text.splitlines()
        if line.startswith(("SigPnd:", "ShdPnd:"))
    )
