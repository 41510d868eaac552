"""Fixtures of the end-to-end tier: one control plane per session, a namespace and a pod runner per test.

Fixtures, from the outside in:

* `control_plane` (session): a started `ControlPlane`; skips the test when `KUBEBUILDER_ASSETS` is
  missing (see README.md). Its startup time is printed in the terminal summary.
* `api_client` (session): a `kubernetes.client.ApiClient` for the admin; `raw_api` the same as a
  plain-JSON `RawApi`.
* `crds` (session): every CRD in the repository's `crds/` folder installed (CEL rules stripped, see
  `crds.py`), as an `InstalledCrds`. The control plane already installed them before its controller
  manager started (so that the garbage collector watches them at once); this re-applies them.
* `namespace` (function): a fresh namespace named after the test; its pods are force-deleted and the
  namespace deleted afterwards.
* `make_pod_runner` (function): a factory of started `PodRunner`s (keyword arguments as `PodRunner`'s;
  default namespace: the test's) that are stopped at teardown, failing the test if a runner recorded
  internal errors. `pod_runner` is one such runner with the defaults.
* `world` (function): the operator under test, started with the chart's RBAC and watching the test's
  namespace, as an `operator_world.World` (skips when the chart cannot be rendered).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from .controlplane import AssetsMissingError, ControlPlane, assets_from_env
from .crds import InstalledCrds, install_crds
from .kubeapi import ApiError, RawApi
from .operator_process import HelmUnavailableError, helm_binary, running_operator
from .operator_world import World
from .podrunner import PodRunner
from .sandbox import probe

REPO = Path(__file__).resolve().parents[2]
REPO_CRDS = REPO / "crds"
HARNESS_CRDS = Path(__file__).resolve().parent / "testdata"
_started: list[ControlPlane] = []


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        assets = assets_from_env()
    except AssetsMissingError as error:
        pytest.skip(str(error))
    # CRDs go in before the controller manager starts, so that its garbage collector knows them.
    plane = ControlPlane(
        assets, tmp_path_factory.mktemp("control-plane"), crd_folders=[HARNESS_CRDS, REPO_CRDS]
    )
    plane.start()
    _started.append(plane)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    client = control_plane.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def raw_api(api_client: kubernetes.client.ApiClient) -> RawApi:
    return RawApi(api_client)


@pytest.fixture(scope="session")
def crds(raw_api: RawApi) -> InstalledCrds:
    return install_crds(raw_api, REPO_CRDS)


@pytest.fixture
def namespace(raw_api: RawApi, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    raw_api.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    try:
        yield name
    finally:
        # No kubelet remains to finish graceful pod deletions: force them, then drop the namespace.
        try:
            raw_api.request("DELETE", f"/api/v1/namespaces/{name}/pods", body={"gracePeriodSeconds": 0})
            raw_api.delete(f"/api/v1/namespaces/{name}")
        except ApiError as error:
            if error.status != 404:
                raise


@pytest.fixture
def make_pod_runner(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., PodRunner]]:
    reason = probe()
    if reason:
        pytest.skip(reason)
    runners: list[PodRunner] = []

    def make(**kwargs: Any) -> PodRunner:
        kwargs.setdefault("namespace", namespace)
        runner = PodRunner(control_plane, tmp_path / f"runner-{len(runners)}", **kwargs)
        runners.append(runner)
        return runner.start()

    yield make
    errors = []
    for runner in runners:
        runner.stop()
        errors += runner.errors
    if errors:
        pytest.fail("pod runner errors:\n" + "\n".join(errors))


@pytest.fixture
def pod_runner(make_pod_runner: Callable[..., PodRunner]) -> PodRunner:
    return make_pod_runner()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for plane in _started:
        terminalreporter.write_line(
            f"e2e control plane {plane.server}: started in {plane.startup_seconds:.1f}s (assets {plane.assets})"
        )
        for folder, error in plane.crd_errors.items():
            terminalreporter.write_line(
                f"e2e control plane: CRDs in {folder} were not pre-installed: {error}"
            )


@pytest.fixture
def world(
    control_plane: ControlPlane, crds: object, namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> Iterator[World]:
    """The operator, started with the chart's RBAC, watching the test's namespace."""
    try:
        helm_binary()
    except HelmUnavailableError as error:
        pytest.skip(f"the chart's RBAC cannot be rendered: {error}")
    with running_operator(control_plane, namespace, tmp_path / "operator") as (operator, _):
        world = World(control_plane, namespace, pod_runner, operator)
        try:
            yield world
        finally:
            world.close()
