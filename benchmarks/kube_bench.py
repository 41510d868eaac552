"""Pieces of the operator benchmarks on the real control plane (``operator_scale.py``).

* :func:`audit_args` / :func:`count_audit`: a kube-apiserver audit log (Metadata level, ServiceAccounts
  only) and the exact count of the requests one identity made, by verb and resource;
* :class:`OperatorProcess`: ``continual-training operator`` as a subprocess with its own identity, its
  memory (VmRSS sampled, VmHWM from the kernel), CPU time and Prometheus metrics;
* :class:`Watcher`: a list+watch in a thread that timestamps every event on arrival (client side, monotonic
  clock), re-listing after a 410 Gone;
* :func:`fake_trainer_command_map`: the pod runner's command map that swaps the trainer for ``fake_trainer.py``;
* manifests, RBAC for the operator, percentiles, ``/proc`` readers.

The harness (``tests/e2e``) is imported from the repository root.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import urllib3  # noqa: E402
from tests.e2e.controlplane import ControlPlane  # noqa: E402
from tests.e2e.kubeapi import ApiError, RawApi  # noqa: E402
from tests.e2e.podlaunch import ContainerCommand  # noqa: E402

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
GROUP_VERSION = "continual.dev/v1alpha1"
RUNS_PATH = "/apis/continual.dev/v1alpha1/namespaces/{ns}/continualtrainingruns"
BATCHES_PATH = "/apis/continual.dev/v1alpha1/namespaces/{ns}/trainingbatches"
JOBS_PATH = "/apis/batch/v1/namespaces/{ns}/jobs"
LABEL_RUN = "continual.dev/run"
ANNOTATION_BATCH = "continual.dev/batch"
ANNOTATION_RUN = "continual.dev/run"
OPERATOR_ACCOUNT = "continual-operator"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- statistics -----------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of durations in seconds."""
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": percentile(values, 50) * 1000,
        "p90": percentile(values, 90) * 1000,
        "p99": percentile(values, 99) * 1000,
        "max": max(values) * 1000,
        "mean": sum(values) / len(values) * 1000,
    }


# -- the control plane ----------------------------------------------------------------------------------
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
  # Every request of a ServiceAccount (the operators under test; trainer pods get no token here), with
  # its verb, resource and response code but no bodies.
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


def audit_args(workdir: Path) -> tuple[list[str], Path]:
    """kube-apiserver flags for an audit log of ServiceAccount requests, and the log's path."""
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    log = workdir / "audit.log"
    return [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={log}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",  # no rotation: one file to count
    ], log


@dataclass
class AuditCounts:
    """The requests of one user, from the audit log (one request = one auditID)."""

    total: int = 0
    by_verb_resource: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_code: Counter[int] = field(default_factory=Counter)
    errors: Counter[tuple[str, str, int]] = field(default_factory=Counter)


def count_audit(
    log: Path, username: str, start: float | None = None, end: float | None = None
) -> AuditCounts:
    """Count the requests ``username`` made (received between ``start`` and ``end``, Unix times, if given).

    Every request leaves a RequestReceived event; a watch leaves ResponseStarted and, when it ends,
    ResponseComplete. Counting distinct auditIDs counts each request exactly once, open watches included.
    Response codes come from the ResponseComplete stage.
    """
    counts = AuditCounts()
    seen: set[str] = set()
    if not log.exists():
        return counts
    with log.open() as handle:
        for line in handle:
            event = json.loads(line)
            if (event.get("user") or {}).get("username") != username:
                continue
            if start is not None or end is not None:
                received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
                if (start is not None and received < start) or (end is not None and received >= end):
                    continue
            ref = event.get("objectRef") or {}
            # Requests without an object are API discovery (kopf's, at startup): one row for them all.
            resource = ref.get("resource") or "(discovery: /api, /apis/...)"
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            verb = event.get("verb", "?")
            if event["auditID"] not in seen:
                seen.add(event["auditID"])
                counts.total += 1
                counts.by_verb_resource[verb, resource] += 1
            if event.get("stage") == "ResponseComplete":
                code = int((event.get("responseStatus") or {}).get("code") or 0)
                counts.by_code[code] += 1
                if code >= 300:
                    counts.errors[verb, resource, code] += 1
    return counts


def child_processes(names: Iterable[str]) -> dict[str, int]:
    """PIDs of this process's children with these command names (the control plane's components)."""
    wanted = {name[:15] for name in names}  # /proc/<pid>/comm is cut at 15 characters
    found: dict[str, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and comm in wanted:
            found[comm] = int(entry.name)
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            values[key] = int(rest.split()[0])
    return values


# -- objects --------------------------------------------------------------------------------------------
def create_namespace(api: RawApi, name: str) -> None:
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def create_claim(api: RawApi, namespace: str, name: str) -> None:
    api.create(
        f"/api/v1/namespaces/{namespace}/persistentvolumeclaims",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def grant_operator_identity(api: RawApi, namespace: str, account: str = OPERATOR_ACCOUNT) -> str:
    """A ServiceAccount for the operator, bound to cluster-admin; returns its user name.

    cluster-admin rather than the chart's ClusterRole: the benchmark counts requests, not permissions (the
    e2e tests check the chart's RBAC). The operator needs more than namespace rights anyway: kopf reads
    CRDs, and the per-run Roles it creates require holding (or being able to escalate to) what they grant.
    """
    api.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
    )
    api.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"bench-{namespace}-{account}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )
    return f"system:serviceaccount:{namespace}:{account}"


def run_manifest(name: str, claim: str, *, progress: bool = False) -> dict[str, Any]:
    """A run on an existing claim (folder runs/<name>), CPU-only; progress reporting off by default.

    With progress off the trainer pod gets no API credentials (and the fake trainer reports none anyway),
    so the operator's requests are all there is to count.
    """
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ContinualTrainingRun",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"path": "models/fake"},
            "storage": {"existingClaim": claim, "subPath": f"runs/{name}"},
            "resources": {"gpus": 0},
            "image": "fake-trainer:bench",
            "progress": {"enabled": progress},
            "terminationGracePeriodSeconds": 5,
        },
    }


def batch_manifest(name: str, run: str, order: int) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "TrainingBatch",
        "metadata": {"name": name},
        "spec": {"runName": run, "data": {"path": f"inbox/{name}.jsonl"}, "order": order},
    }


def fake_trainer_command_map(request: ContainerCommand) -> list[str]:
    """The pod runner's command map: ``fake_trainer.py`` instead of the trainer, other commands as they are.

    The script stays where it is (the pod's emptyDir at /tmp would hide a copy under /tmp); pass
    :func:`runner_exposed_paths` to the runner so that the pod's user (uid 1000) can reach it.
    """
    if request.command[:1] == ["continual-trainer"]:
        return [sys.executable, str(FAKE_TRAINER), *request.command[1:], *request.args]
    return request.argv


def runner_exposed_paths() -> list[Path]:
    """The pod runner's default exposed paths (the Python installation) plus this folder."""
    paths = {Path(os.path.realpath(sys.base_prefix)), Path(os.path.realpath(sys.prefix)), FAKE_TRAINER.parent}
    return sorted(paths)


# -- watching -------------------------------------------------------------------------------------------
Handler = Callable[[str, dict[str, Any], float], None]


class Watcher:
    """List, then watch, a collection in a thread; ``handler(type, object, monotonic_time)`` per event.

    The listing is delivered as ``LISTED`` events. The watch resumes from the last resourceVersion when
    the server ends it, and re-lists after 410 Gone. ``stop()`` ends it.
    """

    def __init__(
        self, control_plane: ControlPlane, path: str, handler: Handler, query: dict[str, str] | None = None
    ) -> None:
        self._client = control_plane.api_client()
        self.api = RawApi(self._client)
        self.path = path
        self.query = dict(query or {})
        self.handler = handler
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch {path}", daemon=True)

    def start(self, timeout: float = 30) -> Watcher:
        self._thread.start()
        if not self._listed.wait(timeout):
            raise TimeoutError(f"no first listing of {self.path} in {timeout}s: {self.errors}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self.api.close_watches()
        self._thread.join(timeout=20)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.api.get(self.path, self.query)
                now = time.monotonic()
                for item in listing.get("items") or []:
                    self.handler("LISTED", item, now)
                self._listed.set()
                self._watch(listing["metadata"]["resourceVersion"])
            except (ApiError, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                if self._stop.is_set():
                    return
                self.errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.5)

    def _watch(self, version: str) -> None:
        """Watch from ``version`` until stopped; return to re-list after 410 Gone."""
        while not self._stop.is_set():
            query = {**self.query, "resourceVersion": version, "allowWatchBookmarks": "true"}
            for event in self.api.watch(self.path, query, timeout_seconds=60):
                now = time.monotonic()
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return
                    raise ValueError(f"watch error: {obj}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self.handler(str(kind), obj, now)


# -- the operator ---------------------------------------------------------------------------------------
class OperatorProcess:
    """``continual-training operator --standalone --namespace NS --metrics-port P`` under a kubeconfig.

    Samples VmRSS every ``sample_seconds`` while it runs; :meth:`stop` sends SIGTERM (kopf shuts down
    cleanly) and, before that, reads the kernel's peak (VmHWM) and the CPU time.
    """

    def __init__(
        self, namespace: str, kubeconfig: Path, log_path: Path, metrics_port: int, log_level: str = "WARNING"
    ) -> None:
        self.namespace = namespace
        self.metrics_port = metrics_port
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env["KUBECONFIG"] = str(kubeconfig)
        executable = Path(sys.executable).parent / "continual-training"
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(executable),
                f"--log-level={log_level}",
                "operator",
                "--standalone",
                "--namespace",
                namespace,
                "--metrics-port",
                str(metrics_port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.rss_samples: list[tuple[float, int]] = []
        self.final: dict[str, float] = {}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="operator-rss", daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _sample(self, sample_seconds: float = 0.5) -> None:
        while not self._stop.wait(sample_seconds):
            try:
                self.rss_samples.append((time.monotonic(), memory_kib(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the metrics endpoint answers (the startup handler ran); fail if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.metrics()
            except OSError:
                time.sleep(0.2)
            else:
                return
        raise TimeoutError(
            f"the operator's metrics endpoint did not answer in {timeout}s:\n{self.log_tail()}"
        )

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus samples, ``name{labels}`` -> value."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def snapshot(self) -> dict[str, float]:
        """RSS now, peak RSS (VmHWM), CPU seconds."""
        memory = memory_kib(self.pid)
        return {"rss_kib": memory["VmRSS"], "hwm_kib": memory["VmHWM"], "cpu_s": cpu_seconds(self.pid)}

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.final = self.snapshot()
            self._stop.set()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._stop.set()
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
