"""The chart's ``statusPage`` values: off by default; when on, the flag, the container port, a ClusterIP
Service and ``list`` on core Events (the page shows recent Events), and nothing else changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from tests.chart.test_chart import (  # noqa: F401  (helm, render, values_file: fixtures used below)
    K8S_VERSIONS,
    WATCHED,
    helm,
    only,
    operator_container,
    permissions,
    render,
    values_file,
)

ENABLED = {"statusPage": {"enabled": True, "port": 8090}}
Render = Callable[..., list[dict[str, Any]]]


def services(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}


def test_the_status_page_is_off_by_default(render: Render) -> None:  # noqa: F811
    docs = render({})
    args = operator_container(docs)["args"]
    assert "--status-page-port" not in args
    assert [p["name"] for p in operator_container(docs)["ports"]] == ["metrics", "health"]
    assert list(services(docs)) == ["continual-training-metrics"]
    assert permissions(only(docs, "ClusterRole")["rules"])[("", "events")] == {"create", "patch"}


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_the_enabled_status_page_has_its_flag_port_service_and_event_reads(
    render: Render,  # noqa: F811
    k8s: str,
) -> None:
    docs = render(ENABLED)
    container = operator_container(docs)
    args = container["args"]
    assert args[args.index("--status-page-port") + 1] == "8090"
    assert args[args.index("--status-page-host") + 1] == "0.0.0.0"  # noqa: S104 (inside the pod: its Service)
    assert {"name": "status-page", "containerPort": 8090, "protocol": "TCP"} in container["ports"]
    service = services(docs)["continual-training-status-page"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "status-page", "port": 8090, "targetPort": "status-page", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    granted = permissions(only(docs, "ClusterRole")["rules"])
    assert granted[("", "events")] == {"create", "patch", "list"}
    assert granted[("events.k8s.io", "events")] == {"create", "patch"}  # only what the page reads
    for doc in docs:
        if doc["kind"] not in {"ClusterKopfPeering", "KopfPeering"}:
            kubernetes_validate.validate(doc, k8s, strict=True)


def test_the_status_page_in_watched_namespaces_reads_events_there_only(render: Render) -> None:  # noqa: F811
    docs = render({**ENABLED, "watchNamespaces": WATCHED})
    without = render({"watchNamespaces": WATCHED})

    def roles(docs: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], set[str]]]:
        return {d["metadata"]["namespace"]: permissions(d["rules"]) for d in docs if d["kind"] == "Role"}

    before = roles(without)
    assert sorted(before) == sorted(WATCHED)
    for namespace, granted in roles(docs).items():
        assert granted == before[namespace] | {("", "events"): {"create", "patch", "list"}}
    assert ("", "events") not in permissions(only(docs, "ClusterRole")["rules"])


def test_status_page_values_are_checked(helm, values_file) -> None:  # noqa: F811
    result = helm(
        "template",
        "x",
        "charts/continual-training",
        "-f",
        values_file({"statusPage": {"port": 0, "enabled": True}}),
    )
    assert result.returncode != 0
    assert "statusPage" in result.stderr


def test_the_notes_say_how_to_reach_the_page(helm, values_file) -> None:  # noqa: F811
    def notes(values: dict[str, Any]) -> str:
        result = helm("install", "x", "charts/continual-training", "--dry-run", "-f", values_file(values))
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    assert "status-page" not in notes({})
    assert "port-forward svc/x-continual-training-status-page 8090" in notes(ENABLED)
