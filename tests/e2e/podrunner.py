"""`PodRunner`: the scheduler and kubelet of the end-to-end tests.

The control plane has no nodes. The runner registers one fake Node, watches Pods (one namespace or
all), and gives each new pod that is unbound or bound to its node a `podworker.PodWorker` thread, which
binds it, runs its containers as local processes with their volumes at their mount paths, and reports
status like a kubelet. It does not schedule: every pod goes to the one node, whatever its
nodeSelector, tolerations or resource requests say.

Tests use the runner to observe and disturb pods: `wait_for_process`, `wait_for_log`, `kill` (a
crash, e.g. SIGKILL → exit code 137), `terminate` (SIGTERM with a grace period, e.g. an eviction),
`claim_path` (the host folder behind a PersistentVolumeClaim), and `describe()` for failure messages.
Internal failures (a bug in the runner, a pod feature it does not support) land in `errors`; the
`pod_runner` fixture fails the test when there are any, so they never go unnoticed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

from .kubeapi import JSON, ApiError, RawApi
from .podlaunch import CommandMap, LaunchSettings, local_command
from .podworker import ContainerProcess, PodWorker, RunnerSettings
from .sandbox import MountPoints
from .volumes import claim_folder
from .waiting import tail, wait_until

if TYPE_CHECKING:
    from .controlplane import ControlPlane

DEFAULT_NODE = "e2e-node"
DEFAULT_IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
_WATCH_SECONDS = 5
_STOP_GRACE = 2.0


#: The checkout: an editable install imports the project from here.
REPO_ROOT = Path(__file__).resolve().parents[2]


class PodRunner:
    """Runs the pods of a control plane as local processes (see the module docstring).

    `root` holds everything the runner writes: `claims/<namespace>/<claim>` (PVC contents),
    `pods/<namespace>/<pod>-<uid>/` (emptyDirs, projected files, termination messages, `logs/`).
    `command_map` turns a container's command into a local argv; `image_env` is the environment the
    image would set (`ENV` lines); `image_uid` the image's `USER` (None: root), used when a pod does not
    set `runAsUser`. `exposed_paths` are host folders a non-root process must reach (by default the
    Python installation; see `sandbox.py`).
    """

    def __init__(
        self,
        control_plane: ControlPlane,
        root: Path,
        *,
        namespace: str | None = None,
        command_map: CommandMap = local_command,
        node_name: str = DEFAULT_NODE,
        image_env: Mapping[str, str] | None = None,
        image_uid: int | None = None,
        bind: bool = True,
        path_prefix: Sequence[str] | None = None,
        exposed_paths: Sequence[Path] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.root = root
        self.namespace = namespace
        self.node_name = node_name
        self.errors: list[str] = []
        self._api_client = control_plane.api_client()
        self.api = RawApi(self._api_client)
        venv_bin = str(Path(sys.executable).parent)
        self._mountpoints = MountPoints()
        self.settings = RunnerSettings(
            api=self.api,
            launch=LaunchSettings(
                api=self.api,
                claims_root=root / "claims",
                service_host=control_plane.host,
                service_port=control_plane.port,
                command_map=command_map,
                image_env=dict(DEFAULT_IMAGE_ENV if image_env is None else image_env),
                path_prefix=tuple(path_prefix if path_prefix is not None else [venv_bin]),
                exposed_paths=tuple(
                    exposed_paths
                    if exposed_paths is not None
                    else {
                        Path(os.path.realpath(sys.base_prefix)),
                        Path(os.path.realpath(sys.prefix)),
                        REPO_ROOT,  # an editable install's sources are part of the "image" too
                    }
                ),
                image_uid=image_uid,
            ),
            node_name=node_name,
            bind=bind,
            pods_root=root / "pods",
            mountpoints=self._mountpoints,
            on_error=self._record_error,
        )
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        #: While held (:meth:`hold`), new pods are noted, not started: their latest body, by uid.
        self._held: dict[str, JSON] | None = None
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._watch_loop, name="pod-runner-watch", daemon=True)

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> Self:
        """Register the node, start watching, and return once the first listing has been handled."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread.start()
        wait_until(
            self._synced.is_set,
            timeout=timeout,
            what="the pod runner's first pod listing",
            dump=self._errors_text,
        )
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop watching, stop every running pod (reported Failed, message "pod runner stopped"), clean up."""
        self._stop.set()
        self.api.close_watches()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if not worker.done.is_set():
                worker.terminate(_STOP_GRACE, "PodRunnerStopped", "pod runner stopped")
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.done.wait(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._thread.join(timeout=_WATCH_SECONDS + 20)
        self._mountpoints.cleanup()
        self._api_client.close()
        stuck = [f"{w.namespace}/{w.name}" for w in workers if not w.done.is_set()]
        if stuck:
            self._record_error(f"pods still running after stop(): {stuck}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- observing and disturbing pods --------------------------------------------------------------

    def hold(self) -> None:
        """Start no new pod until :meth:`release` (as a node that is full would): the benchmark keeps its
        trainers off the cores while it measures the operator's burst. Running pods go on."""
        with self._lock:
            if self._held is None:
                self._held = {}

    def release(self) -> None:
        """Start the pods that came while held (those still there, as last seen), and new ones again."""
        with self._lock:
            held, self._held = self._held or {}, None
        for pod in held.values():
            self._observe(pod, deleted=False)

    def claim_path(self, claim: str, namespace: str | None = None) -> Path:
        """The host folder behind PersistentVolumeClaim `claim` (it exists once a pod mounted it)."""
        return claim_folder(self.settings.launch.claims_root, self._ns(namespace), claim)

    def processes(
        self,
        pod_prefix: str = "",
        *,
        container: str | None = None,
        namespace: str | None = None,
        running_only: bool = False,
    ) -> list[ContainerProcess]:
        """Container processes of pods whose name starts with `pod_prefix`, in the order they started
        (per pod; pods in the order the runner saw them)."""
        with self._lock:
            workers = list(self._workers.values())
        found = []
        for worker in workers:
            if (namespace or self.namespace) not in (None, worker.namespace) or not worker.name.startswith(
                pod_prefix
            ):
                continue
            found += [
                process
                for process in worker.processes()
                if (container is None or process.container == container)
                and (process.alive or not running_only)
            ]
        return found

    def wait_for_process(
        self,
        pod_prefix: str = "",
        *,
        container: str | None = None,
        namespace: str | None = None,
        timeout: float = 60,
    ) -> ContainerProcess:
        """The first running process of a matching pod; waits up to `timeout` seconds for one."""

        def running() -> ContainerProcess | None:
            found = self.processes(pod_prefix, container=container, namespace=namespace, running_only=True)
            return found[0] if found else None

        return wait_until(
            running,
            timeout=timeout,
            what=f"a running process of pod {pod_prefix}*",
            dump=lambda: self.describe(namespace),
        )

    def wait_for_log(
        self,
        pattern: str,
        pod_prefix: str = "",
        *,
        container: str | None = None,
        namespace: str | None = None,
        timeout: float = 60,
    ) -> re.Match[str]:
        """Wait until the log of a matching container (any run) matches the regex `pattern`."""
        regex = re.compile(pattern, re.MULTILINE)

        def matched() -> re.Match[str] | None:
            for process in self.processes(pod_prefix, container=container, namespace=namespace):
                match = regex.search(process.log())
                if match:
                    return match
            return None

        return wait_until(
            matched,
            timeout=timeout,
            what=f"log of {pod_prefix}* to match {pattern!r}",
            dump=lambda: self.describe(namespace),
        )

    def kill(self, pod: str, signum: int = signal.SIGKILL, namespace: str | None = None) -> None:
        """Send `signum` to the pod's running processes: a crash (the pod's restartPolicy applies)."""
        self._worker(pod, namespace).signal(signum)

    def terminate(
        self,
        pod: str,
        *,
        grace: float | None = None,
        reason: str | None = None,
        message: str | None = None,
        namespace: str | None = None,
    ) -> None:
        """Stop the pod like a kubelet evicting it: SIGTERM, SIGKILL after `grace` seconds (default: the
        pod's terminationGracePeriodSeconds), no restart. With `reason` (e.g. "Evicted") the pod ends
        Failed with that status reason and message; otherwise its phase follows the exit codes."""
        self._worker(pod, namespace).terminate(grace, reason, message)

    def pending_reason(self, pod: str, namespace: str | None = None) -> str | None:
        """Why the pod is still Pending ("ContainerCreating: persistentvolumeclaim ... not found"), if it is."""
        pending = self._worker(pod, namespace).pending
        return str(pending) if pending else None

    def log_path(self, pod: str, container: str | None = None, namespace: str | None = None) -> Path:
        """The log file of the pod's latest container run."""
        processes = [p for p in self._worker(pod, namespace).processes() if container in (None, p.container)]
        if not processes:
            raise LookupError(f"pod {pod} has not run {container or 'any container'} yet")
        return processes[-1].log_path

    def describe(self, namespace: str | None = None) -> str:
        """Pods (phase, container states) and process log tails, for timeout messages."""
        namespace = namespace or self.namespace
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        lines = ["--- pods ---"]
        try:
            lines += [_describe_pod(pod) for pod in self.api.get(path)["items"]]
        except ApiError as error:
            lines.append(f"(listing pods failed: {error})")
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if namespace not in (None, worker.namespace):
                continue
            if worker.pending:
                lines.append(f"{worker.name}: pending: {worker.pending}")
            lines += [_describe_process(process) for process in worker.processes()]
        if self.errors:
            lines.append(self._errors_text())
        return "\n".join(lines)

    # --- internals ----------------------------------------------------------------------------------

    def _ns(self, namespace: str | None) -> str:
        resolved = namespace or self.namespace
        if resolved is None:
            raise ValueError("this runner watches all namespaces: pass namespace=")
        return resolved

    def _worker(self, pod: str, namespace: str | None) -> PodWorker:
        with self._lock:
            matches = [
                w
                for w in self._workers.values()
                if w.name == pod and (namespace or self.namespace) in (None, w.namespace)
            ]
        if not matches:
            raise LookupError(f"the pod runner has not seen pod {pod!r}\n{self.describe(namespace)}")
        return matches[-1]

    def _record_error(self, message: str) -> None:
        self.errors.append(message)

    def _errors_text(self) -> str:
        return "--- pod runner errors ---\n" + "\n".join(self.errors) if self.errors else ""

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux"},
            },
        }
        try:
            self.api.create("/api/v1/nodes", node)
        except ApiError as error:
            if error.status != 409:
                raise
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "110"}
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "e2e pod runner"}
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
        }
        self.api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": status})

    def _watch_loop(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods" if self.namespace else "/api/v1/pods"
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    listing = self.api.get(path)
                    for pod in listing["items"]:
                        self._observe(pod, deleted=False)
                    resource_version = listing["metadata"]["resourceVersion"]
                    self._synced.set()
                for event in self.api.watch(path, {"resourceVersion": resource_version}, _WATCH_SECONDS):
                    if event["type"] == "ERROR":  # typically 410 Gone: our resourceVersion is too old
                        resource_version = None
                        break
                    resource_version = event["object"]["metadata"]["resourceVersion"]
                    self._observe(event["object"], deleted=event["type"] == "DELETED")
                    if self._stop.is_set():
                        break
            except Exception as error:  # the watch must survive; the error is recorded
                if self._stop.is_set():
                    break
                self._record_error(f"pod watch: {type(error).__name__}: {error}")
                resource_version = None
                self._stop.wait(1)

    def _observe(self, pod: JSON, *, deleted: bool) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") not in (None, "", self.node_name):
            return
        with self._lock:
            worker = self._workers.get(metadata["uid"])
            if worker is None and self._held is not None:
                if deleted:
                    self._held.pop(metadata["uid"], None)
                else:
                    self._held[metadata["uid"]] = pod
                return
        if worker is not None and not worker.done.is_set():
            worker.observe(pod, deleted=deleted)
            return
        if deleted:
            return
        if metadata.get("deletionTimestamp"):
            # Nothing runs for it (any more): as its kubelet, finish the deletion.
            if spec.get("nodeName") == self.node_name:
                self._delete_now(pod)
            return
        if worker is not None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        worker = PodWorker(self.settings, pod)
        with self._lock:  # the watch and a release may both see it: one worker
            if metadata["uid"] in self._workers:
                return
            self._workers[metadata["uid"]] = worker
        worker.start()

    def _delete_now(self, pod: JSON) -> None:
        metadata = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
        try:
            self.api.delete(f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}", body)
        except ApiError as error:
            if error.status not in (404, 409):
                self._record_error(f"deleting pod {metadata['name']}: {error}")


def _describe_process(process: ContainerProcess) -> str:
    return (
        f"--- {process.pod}/{process.container} run {process.attempt} pid {process.pid} "
        f"rc {process.returncode} ({process.log_path}) ---\n{tail(process.log(), 25)}"
    )


def _describe_pod(pod: JSON) -> str:
    metadata, status = pod["metadata"], pod.get("status", {})
    states = []
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        kind = next(iter(state), "?")
        detail = state.get(kind) or {}
        summary = detail.get("reason", "") or ""
        if kind == "terminated":
            summary = f"exit {detail.get('exitCode')} {summary} {detail.get('message', '')[:200]!r}"
        states.append(
            f"{container['name']}={kind}({summary.strip()}, restarts {container.get('restartCount', 0)})"
        )
    deleting = " deleting" if metadata.get("deletionTimestamp") else ""
    return (
        f"{metadata['namespace']}/{metadata['name']}: {status.get('phase')}{deleting} "
        f"node={pod['spec'].get('nodeName') or '-'} {' '.join(states)}"
    )
