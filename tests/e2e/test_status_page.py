"""The operator's status page on the real control plane, with the chart's RBAC (``statusPage.enabled``).

No pods are needed: the test writes what the operator and the trainer would (batch and run status,
Events posted through the operator's own ``KubernetesStorage``), then reads the page's source as the
operator's ServiceAccount, so the real API server applies the field selectors and the chart's RBAC
(``list`` on core Events only with the status page on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes
import pytest

from continual_operator.cluster.k8s import RUNS, KubernetesStorage
from continual_operator.cluster.page import ClusterSource
from continual_operator.errors import KubernetesApiError
from continual_operator.observe import page as web

from .controlplane import ControlPlane
from .kubeapi import RawApi
from .operator_process import OperatorProcess, OperatorRbac
from .operator_world import GROUP_VERSION, batch_manifest, run_manifest
from .waiting import wait_until

FAILED = "line 2 of inbox/b2.jsonl is not JSON: fix the file and create the batch again"
NOW = "2026-01-01T10:00:00Z"


def storage_from(kubeconfig: Path) -> KubernetesStorage:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return KubernetesStorage(kubernetes.client.ApiClient(configuration), instance="e2e-page")


def seed(raw_api: RawApi, namespace: str) -> None:
    """A halted run, one succeeded and one failed batch, and another run's batch."""
    root = f"/apis/{GROUP_VERSION}/namespaces/{namespace}"
    raw_api.create(f"{root}/continualtrainingruns", run_manifest("demo", {"existingClaim": "data"}))
    raw_api.create(f"{root}/continualtrainingruns", run_manifest("second", {"existingClaim": "other"}))
    for name, run in (("b1", "demo"), ("b2", "demo"), ("s1", "second")):
        raw_api.create(f"{root}/trainingbatches", batch_manifest(name, run, f"{name}.jsonl"))
    batch_status = {
        "b1": {"phase": "Succeeded", "startStep": 0, "endStep": 4, "meanLoss": 2.5, "attempts": 1},
        "b2": {"phase": "Failed", "attempts": 3, "message": FAILED},
    }
    for name, patch in batch_status.items():
        raw_api.patch(f"{root}/trainingbatches/{name}/status", {"status": patch})
    degraded = {
        "type": "Degraded",
        "status": "True",
        "reason": "BatchFailed",
        "message": "batch b2 failed",
        "lastTransitionTime": NOW,
    }
    raw_api.patch(
        f"{root}/continualtrainingruns/demo/status",
        {"status": {"phase": "Halted", "globalStep": 4, "conditions": [degraded]}},
    )


async def read_page(storage: KubernetesStorage, namespace: str) -> tuple[list[web.RunView], str]:
    now = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    involved = {"apiVersion": GROUP_VERSION, "namespace": namespace}
    await storage.post_event(
        involved | {"kind": "TrainingBatch", "name": "b2"}, "Warning", "BatchFailed", FAILED, now=now
    )
    await storage.post_event(
        involved | {"kind": "TrainingBatch", "name": "s1"}, "Normal", "Queued", "queued", now=now
    )
    source = ClusterSource(storage, asyncio.get_running_loop(), [namespace])
    page = web.start(source, 0)
    try:
        runs = await asyncio.to_thread(source.runs)

        def get() -> str:
            with urllib.request.urlopen(page.url, timeout=30) as answer:  # noqa: S310 (our 127.0.0.1 page)
                return str(answer.read().decode())

        html = await asyncio.to_thread(get)
    finally:
        page.close()
    return runs, html


def test_the_page_reads_runs_batches_and_events_as_the_operator_s_service_account(
    control_plane: ControlPlane, raw_api: RawApi, crds: object, namespace: str, tmp_path: Path
) -> None:
    rbac = OperatorRbac(control_plane, namespace, tmp_path / "rbac", status_page=True)
    storage = storage_from(rbac.apply())
    try:
        seed(raw_api, namespace)
        runs, html = asyncio.run(read_page(storage, namespace))
    finally:
        storage.close()
        rbac.remove()
    assert [run.title for run in runs] == [f"{namespace}/demo", f"{namespace}/second"]
    demo = runs[0]
    assert demo.status["phase"] == "Halted"
    assert demo.batches["b2"]["phase"] == "Failed"
    assert [(e["kind"], e["name"], e["reason"]) for e in demo.events] == [
        ("TrainingBatch", "b2", "BatchFailed")
    ]
    assert [(e["name"], e["reason"]) for e in runs[1].events] == [("s1", "Queued")]
    assert demo.curve_path == f"/runs/{namespace}/demo/curve.png"  # b1 finished: its mean loss is drawn
    assert 'class="state-Failed" data-batch="b2"' in html
    assert FAILED in html


def test_without_the_status_page_value_the_service_account_cannot_list_events(
    control_plane: ControlPlane, raw_api: RawApi, crds: object, namespace: str, tmp_path: Path
) -> None:
    rbac = OperatorRbac(control_plane, namespace, tmp_path / "rbac", status_page=False)
    storage = storage_from(rbac.apply())

    try:
        with pytest.raises(KubernetesApiError) as refused:
            asyncio.run(storage.list_events(namespace, RUNS))
    finally:
        storage.close()
        rbac.remove()
    assert refused.value.status == 403


def test_the_operator_process_serves_the_page_and_stops_it_on_shutdown(
    control_plane: ControlPlane, raw_api: RawApi, crds: object, namespace: str, tmp_path: Path
) -> None:
    rbac = OperatorRbac(control_plane, namespace, tmp_path / "rbac", status_page=True)
    kubeconfig = rbac.apply()
    root = f"/apis/{GROUP_VERSION}/namespaces/{namespace}"
    raw_api.create(f"{root}/continualtrainingruns", run_manifest("demo", {"existingClaim": "data"}))
    operator = OperatorProcess(
        kubeconfig, namespace, tmp_path / "operator.log", extra_args=("--status-page-port", "0")
    )
    try:
        operator.start()
        line = wait_until(
            lambda: next(
                (x for x in operator.log().splitlines() if "status page (read-only) at " in x), None
            ),
            timeout=30,
            what="the status page's address in the operator's log",
            dump=operator.log_tail,
        )
        url = line.split("status page (read-only) at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 (the operator's 127.0.0.1 page)
            html = answer.read().decode()
        assert f'id="run-{namespace}-demo"' in html
        operator.stop()
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(url, timeout=5)  # noqa: S310
    finally:
        operator.stop()
        rbac.remove()
