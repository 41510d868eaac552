"""One pod's life on the pretend node: bind, wait for its volumes and config, run its containers as
local processes, report status like a kubelet, and honour deletion.

A `PodWorker` is one thread per pod, started by `podrunner.PodRunner` when it sees a new pod. The
sequence follows the kubelet's:

1. bind the pod to the runner's Node (the scheduler's job; there is none), so that its deletion is
   graceful and waits for "the kubelet" like on a real cluster;
2. prepare: materialise volumes and turn each container into a `Launch` (`podlaunch.py`); while
   something is missing the pod stays Pending with the kubelet's waiting reason
   (`ContainerCreating`, `CreateContainerConfigError`), retried every half second;
3. run init containers one by one, then the containers together (`sandbox.py`), restarting them as
   `restartPolicy` says (with back-off), and patch `pods/status` at every transition;
4. stop: on deletion (SIGTERM, SIGKILL after the grace period, then the final delete with grace 0 that
   only a kubelet sends), on `terminate()` (the same without deletion: an eviction or a preemption), or
   when a process is killed by the test (`signal()`), which is just a crash to the pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .kubeapi import JSON, ApiError, RawApi, is_status
from .podenv import PodNotReadyError
from .podlaunch import LaunchSettings, plan_launches
from .podstatus import ContainerState, now, pod_status, termination_message
from .sandbox import Launch, MountPoints, spawn

DEFAULT_GRACE_SECONDS = 30
_BACKOFF_START, _BACKOFF_MAX = 1.0, 10.0
_POLL = 0.1


@dataclass(frozen=True)
class RunnerSettings:
    """What every pod worker needs from its runner (one parameter object instead of ten)."""

    api: RawApi
    launch: LaunchSettings
    node_name: str
    bind: bool
    pods_root: Path
    mountpoints: MountPoints
    on_error: Callable[[str], None]


@dataclass
class ContainerProcess:
    """One run of one container: the handle tests use to watch it, read its log or kill it."""

    namespace: str
    pod: str
    container: str
    attempt: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Popen's return code: negative N for death by signal N (the pod status says 128 + N)."""
        return self.process.poll()

    @property
    def alive(self) -> bool:
        return self.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class _Container:
    spec: JSON
    init: bool
    state: ContainerState
    launch: Launch | None = None
    termination_file: Path | None = None
    fallback_to_logs: bool = False
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    restart_at: float | None = None
    history: list[ContainerProcess] = field(default_factory=list)


class PodWorker:
    """Runs one pod; see the module docstring. Thread-safe entry points: observe, signal, terminate."""

    def __init__(self, settings: RunnerSettings, pod: JSON) -> None:
        self.settings = settings
        self.pod = pod
        metadata = pod["metadata"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        self.pod_dir = settings.pods_root / self.namespace / f"{self.name}-{self.uid[:8]}"
        self.log_dir = self.pod_dir / "logs"
        self.pending: PodNotReadyError | None = None
        self.phase = "Pending"
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._kill_deadline: float | None = None
        self._stop_reason: tuple[str, str] | None = None
        self._deletion_requested = False
        self._gone = False
        self._start_time = now()
        spec = pod["spec"]
        self._init = [self._container(c, init=True) for c in spec.get("initContainers") or []]
        self._main = [self._container(c, init=False) for c in spec["containers"]]
        self.thread = threading.Thread(target=self._main_loop, name=f"pod-{self.name}", daemon=True)

    @staticmethod
    def _container(spec: JSON, *, init: bool) -> _Container:
        return _Container(spec=spec, init=init, state=ContainerState(spec["name"], spec.get("image", "")))

    # --- entry points for the runner (other threads) -------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def processes(self) -> list[ContainerProcess]:
        """Every container process this pod has had, oldest first."""
        with self._lock:
            return [process for c in [*self._init, *self._main] for process in c.history]

    def observe(self, pod: JSON, *, deleted: bool) -> None:
        """A watch event for this pod: a deletion request or the pod's disappearance stops it."""
        metadata = pod["metadata"]
        if deleted:
            self._gone = True
            self._begin_stop(self._grace(pod, None))
        elif metadata.get("deletionTimestamp"):
            self._deletion_requested = True
            self._begin_stop(self._grace(pod, metadata.get("deletionGracePeriodSeconds")))

    def signal(self, signum: int) -> None:
        """Send `signum` to the pod's running processes (to the test, a crash; no stop is implied)."""
        with self._lock:
            running = [c.popen for c in [*self._init, *self._main] if c.state.running and c.popen is not None]
        for popen in running:
            _signal_group(popen, signum)

    def terminate(self, grace: float | None, reason: str | None, message: str | None) -> None:
        """Stop the pod as a kubelet would for an eviction: SIGTERM, SIGKILL after `grace` seconds."""
        with self._lock:
            if reason:
                self._stop_reason = (reason, message or "")
        self._begin_stop(self._grace(self.pod, grace))

    # --- the pod's thread ---------------------------------------------------------------------------

    def _main_loop(self) -> None:
        try:
            self._run()
        except Exception:
            detail = traceback.format_exc()
            self.settings.on_error(f"pod {self.namespace}/{self.name}: {detail}")
            self._signal_all(signal.SIGKILL)
            try:
                self._report("Failed", reason="PodRunnerError", message=detail.strip().splitlines()[-1])
            except Exception as error:  # already failing; record and carry on
                self.settings.on_error(
                    f"pod {self.namespace}/{self.name}: could not report the failure: {error}"
                )
        finally:
            if self._deletion_requested and not self._gone:
                self._final_delete()
            self.done.set()

    def _run(self) -> None:
        if self.settings.bind and not self.pod["spec"].get("nodeName"):
            self._bind()
        if not self._prepare_until_ready():
            return
        for container in self._init:
            self._supervise([container], restart_policy=self._restart_policy(init=True))
            terminated = container.state.terminated
            if self._stopping or terminated is None or terminated["exitCode"] != 0:
                for main in self._main:
                    main.state.set_waiting("PodInitializing")
                self._finish()
                return
        self._supervise(self._main, restart_policy=self._restart_policy(init=False))
        self._finish()

    def _bind(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": self.name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.settings.node_name},
        }
        try:
            self.settings.api.create(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/binding", body)
        except ApiError as error:
            if error.status == 404:
                self._gone = True
                self._begin_stop(0)
            elif error.status != 409:  # 409: already bound, fine
                raise

    def _prepare_until_ready(self) -> bool:
        reported = ""
        while not self._stopping:
            try:
                self._prepare()
            except PodNotReadyError as error:
                self.pending = error
                if str(error) != reported:
                    for container in [*self._init, *self._main]:
                        container.state.set_waiting(error.reason, error.message)
                    self._report("Pending")
                    reported = str(error)
                self._sleep(0.5)
            else:
                self.pending = None
                return True
        self._finish()
        return False

    def _prepare(self) -> None:
        containers = [*self._init, *self._main]
        planned = plan_launches(self.settings.launch, self.pod, self.pod_dir, [c.spec for c in containers])
        for container, plan in zip(containers, planned, strict=True):
            container.launch = plan.launch
            container.termination_file = plan.termination_file
            container.fallback_to_logs = plan.fallback_to_logs
            self.settings.mountpoints.ensure(plan.launch)

    def _restart_policy(self, *, init: bool) -> str:
        policy = str(self.pod["spec"].get("restartPolicy") or "Always")
        return "OnFailure" if init and policy == "Always" else policy

    def _supervise(self, group: list[_Container], restart_policy: str) -> None:
        """Run `group` until every container has exited for good, restarting per `restart_policy`."""
        for container in group:
            if not self._stopping:
                self._start_process(container)
        self._report("Running" if not group[0].init else "Pending")
        while True:
            self._sleep(_POLL)
            with self._lock:
                deadline = self._kill_deadline
            if deadline is not None and time.monotonic() >= deadline:
                self._signal_all(signal.SIGKILL)
                with self._lock:
                    self._kill_deadline = None
            changed = False
            for container in group:
                if (
                    container.popen is not None
                    and container.state.running
                    and container.popen.poll() is not None
                ):
                    self._record_exit(container)
                    changed = True
                    if not self._stopping and _should_restart(restart_policy, container):
                        delay = min(_BACKOFF_START * 2**container.state.restart_count, _BACKOFF_MAX)
                        container.restart_at = time.monotonic() + delay
                        container.state.last_state = {"terminated": container.state.terminated}
                        container.state.set_waiting(
                            "CrashLoopBackOff", "back-off restarting failed container"
                        )
                if container.restart_at is not None and (
                    self._stopping or time.monotonic() >= container.restart_at
                ):
                    container.restart_at = None
                    if not self._stopping:
                        container.state.restart_count += 1
                        self._start_process(container)
                    changed = True
            if changed:
                self._report("Running" if not group[0].init else "Pending")
            if not any(c.state.running or c.restart_at is not None for c in group):
                return

    def _start_process(self, container: _Container) -> None:
        assert container.launch is not None
        assert container.termination_file is not None
        attempt = container.state.restart_count
        name = container.spec["name"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / (f"{name}.log" if attempt == 0 else f"{name}.{attempt}.log")
        container.termination_file.write_bytes(b"")  # a fresh message file per container instance
        with log_path.open("wb") as log:
            popen = spawn(container.launch, log)
        with self._lock:
            container.popen, container.log_path = popen, log_path
            container.state.set_running(popen.pid, now())
            container.history.append(
                ContainerProcess(self.namespace, self.name, name, attempt, popen, log_path)
            )

    def _record_exit(self, container: _Container) -> None:
        assert container.termination_file is not None
        assert container.log_path is not None
        assert container.popen is not None
        returncode = container.popen.poll()
        assert returncode is not None
        message = termination_message(
            container.termination_file.read_bytes(),
            container.log_path.read_text(errors="replace"),
            failed=returncode != 0,
            fallback_to_logs=container.fallback_to_logs,
        )
        with self._lock:
            container.state.set_terminated(returncode, message, now())

    def _finish(self) -> None:
        """Report the final phase once every container has stopped."""
        with self._lock:
            stop_reason = self._stop_reason
        if stop_reason is not None:
            self._report("Failed", reason=stop_reason[0], message=stop_reason[1])
            return
        exits = [
            c.state.terminated or c.state.last_state.get("terminated") for c in [*self._init, *self._main]
        ]
        if all(t is None for t in exits):
            self._report("Failed", reason="Terminated", message="pod stopped before its containers ran")
            return
        failed = any(t is None or t["exitCode"] != 0 for t in exits)
        self._report("Failed" if failed else "Succeeded")

    # --- stopping -----------------------------------------------------------------------------------

    def _grace(self, pod: JSON, override: float | None) -> float:
        if override is not None:
            return float(override)
        value = pod["spec"].get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE_SECONDS if value is None else value)

    def _begin_stop(self, grace: float) -> None:
        with self._lock:
            deadline = time.monotonic() + grace
            first = not self._stopping
            self._stopping = True
            if first or self._kill_deadline is None or deadline < self._kill_deadline:
                self._kill_deadline = deadline
        if first:
            self._signal_all(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        self._wake.set()

    def _signal_all(self, signum: int) -> None:
        with self._lock:
            running = [c.popen for c in [*self._init, *self._main] if c.popen is not None and c.state.running]
        for popen in running:
            _signal_group(popen, signum)

    def _final_delete(self) -> None:
        """The kubelet's last word on a deleted pod: remove it now that its containers are gone."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.settings.api.delete(f"/api/v1/namespaces/{self.namespace}/pods/{self.name}", body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    # --- status -------------------------------------------------------------------------------------

    def _report(self, phase: str, *, reason: str | None = None, message: str | None = None) -> None:
        if self._gone:
            return
        with self._lock:
            self.phase = phase
            status = pod_status(
                phase,
                [c.state for c in self._init],
                [c.state for c in self._main],
                self._start_time,
                reason=reason,
                message=message,
            )
        try:
            self.settings.api.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status}
            )
        except ApiError as error:
            if not is_status(error, 404):
                raise
            self._gone = True

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()


def _should_restart(policy: str, container: _Container) -> bool:
    terminated = container.state.terminated
    failed = terminated is not None and terminated["exitCode"] != 0
    return policy == "Always" or (policy == "OnFailure" and failed)


def _signal_group(popen: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the container's whole process group (the command and whatever it spawned)."""
    try:
        os.killpg(popen.pid, signum)
    except ProcessLookupError:
        return
