"""The operator's status page (``--status-page-port``): the cluster source against kmock, in headless chromium.

kmock serves the runs, batches and Events (the Events posted through the operator's own
``KubernetesStorage.post_event``); the page is :mod:`continual_operator.observe.page` with
:class:`~continual_operator.cluster.page.ClusterSource`, read through :mod:`continual_operator.cluster.k8s` on
the test's event loop while the browser runs in a thread of its own (Playwright's sync API refuses a
running loop).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kubernetes
import pytest
from tests.observe.test_status_page import CHROMIUM, CHROMIUM_ARGS, CURVE_SIZE, image_size
from tests.operator.kube_world import BATCHES, EVENTS, NS, RUNS, T0, KubeWorld, batch_body, run_body

from continual_operator.cli import build_parser
from continual_operator.cluster import page as web_cluster
from continual_operator.cluster.k8s import KubernetesStorage
from continual_operator.cluster.page import ClusterSource
from continual_operator.observe import page as web

RUN_STATUS = {
    "phase": "Halted",
    "globalStep": 4,
    "batchesCompleted": 1,
    "batchesFailed": 1,
    "conditions": [
        {"type": "Degraded", "status": "True", "reason": "BatchFailed", "message": "batch b2 failed"},
    ],
}
FAILED = "line 2 of inbox/b2.jsonl is not JSON: fix the file and create the batch again"


class Clock:
    """The cache's clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> AsyncIterator[tuple[KubeWorld, web.StatusPage, Clock]]:
    world = KubeWorld(kmock)
    kmock.resources[EVENTS] = kmock_info_with_list()
    world.add(RUNS, run_body(status=RUN_STATUS))
    world.add(RUNS, run_body("second", status={"phase": "Idle"}))
    elsewhere = run_body("elsewhere", status={"phase": "Training"})
    elsewhere["metadata"]["namespace"] = "not-watched"
    world.add(RUNS, elsewhere)
    world.add(
        BATCHES,
        batch_body(
            "b1",
            status={"phase": "Succeeded", "startStep": 0, "endStep": 4, "meanLoss": 2.5, "attempts": 1},
        ),
    )
    world.add(
        BATCHES,
        batch_body("b2", created=1, status={"phase": "Failed", "attempts": 3, "message": FAILED}),
    )
    world.add(BATCHES, batch_body("s1", run="second", status={"phase": "Queued"}))
    storage = world.storage()
    now = T0 + dt.timedelta(hours=1)
    await storage.post_event(involved("TrainingBatch", "b2"), "Warning", "BatchFailed", FAILED, now=now)
    await storage.post_event(involved("ContinualTrainingRun", "demo"), "Warning", "Halted", "halted", now=now)
    await storage.post_event(involved("TrainingBatch", "s1"), "Normal", "Queued", "queued", now=now)
    clock = Clock()
    source = ClusterSource(storage, asyncio.get_running_loop(), [NS], clock=clock, title=NS)
    page = web.start(source, 0)
    yield world, page, clock
    page.close()
    storage.close()


def kmock_info_with_list() -> kmock.ResourceInfo:
    """Events as kube_world has them, plus LIST (the page reads them)."""
    return kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"create", "list"})


def involved(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "continual.dev/v1alpha1", "kind": kind, "name": name, "namespace": NS}


def look_in_browser(url: str) -> dict[str, Any]:
    """What the page shows, read by headless chromium (in this thread: no event loop here)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            demo = page.locator(f"section#run-{NS}-demo")
            seen = {
                "sections": page.locator("section.run h2").all_inner_texts(),
                "phase": demo.locator(".phase").inner_text(),
                "curve": image_size(page, f"section#run-{NS}-demo img.curve"),
                "succeeded": demo.locator(".batches tr.state-Succeeded").count(),
                "failed": demo.locator(".batches tr.state-Failed").all_inner_texts(),
                "degraded": demo.locator(".conditions tr.condition-Degraded").inner_text(),
                "warnings": demo.locator(".events tr.event-Warning").all_inner_texts(),
                "demo_events": demo.locator(".events tbody tr").count(),
                "note": demo.locator(".curve-note").inner_text(),
                "second_curve": page.locator(f"section#run-{NS}-second img.curve").count(),
            }
            page.close()
            return seen
        finally:
            browser.close()


async def test_the_operator_s_page_shows_the_watched_runs_and_the_failed_batch(cluster):
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium (as .ci/run does)")
    world, page, _ = cluster
    seen = await asyncio.to_thread(look_in_browser, page.url)
    assert seen["sections"] == [f"Run {NS}/demo", f"Run {NS}/second"]  # not the unwatched namespace's
    assert seen["phase"] == "Halted"
    assert seen["curve"] == CURVE_SIZE
    assert seen["succeeded"] == 1
    assert len(seen["failed"]) == 1
    assert "b2" in seen["failed"][0]
    assert "inbox/b2.jsonl" in seen["failed"][0]
    assert "True" in seen["degraded"]
    assert len(seen["warnings"]) == 2  # the run's and its failed batch's, not the other run's Normal one
    assert any("BatchFailed" in w and "TrainingBatch/b2" in w for w in seen["warnings"])
    assert seen["demo_events"] == 2
    assert "batch status" in seen["note"]  # says what the curve is drawn from
    assert seen["second_curve"] == 0  # no finished batch: nothing drawn
    writes = [r for r in world.server if r.method not in {"GET", "HEAD"} and r.resource != EVENTS]
    assert writes == []  # the page wrote nothing to the cluster


def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    """One request to our own 127.0.0.1 page (S310 does not apply)."""
    request = urllib.request.Request(url, data=b"{}" if method != "GET" else None, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def test_the_operator_s_page_refuses_writes_and_reads_the_cluster_once_per_period(cluster):
    world, page, clock = cluster
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        code, _ = await asyncio.to_thread(fetch, page.url, method)
        assert code == 501, method
    assert (await asyncio.to_thread(fetch, page.url + "runs/ml/nope/curve.png"))[0] == 404
    for _ in range(3):
        code, _ = await asyncio.to_thread(fetch, page.url)
        assert code == 200
    code, body = await asyncio.to_thread(fetch, page.url + "status.json")
    assert code == 200
    assert b'"run": "demo"' in body
    assert len(world.requests("GET", RUNS)) == 1  # four loads within the cache period: one LIST
    clock.now += 60
    codes = await asyncio.gather(*(asyncio.to_thread(fetch, page.url) for _ in range(4)))
    assert [code for code, _ in codes] == [200] * 4
    assert len(world.requests("GET", RUNS)) == 2  # four browsers at once after the period: one LIST
    assert {r.method for r in world.server if r.resource != EVENTS} == {"GET"}


def test_the_operator_flag_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["operator"]).status_page_port is None  # off by default
    monkeypatch.setenv("CONTINUAL_STATUS_PAGE_PORT", "8090")
    args = build_parser().parse_args(["operator"])
    assert (args.status_page_port, args.status_page_host) == (8090, "127.0.0.1")
    args = build_parser().parse_args(
        ["operator", "--status-page-port", "9000", "--status-page-host", "10.0.0.7"]
    )
    assert (args.status_page_port, args.status_page_host) == (9000, "10.0.0.7")


async def test_an_operator_watching_the_cluster_shows_every_namespace_s_runs(cluster):
    world, _, _ = cluster
    storage = world.storage()
    source = ClusterSource(storage, asyncio.get_running_loop(), None)
    try:
        runs = await asyncio.to_thread(source.runs)
    finally:
        storage.close()
    assert sorted(run.title for run in runs) == ["ml/demo", "ml/second", "not-watched/elsewhere"]


async def test_an_api_server_that_does_not_answer_is_a_503_naming_the_call():
    storage = KubernetesStorage(
        kubernetes.client.ApiClient(kubernetes.client.Configuration(host="http://127.0.0.1:9")),
        request_timeout=2,
    )
    page = web.start(ClusterSource(storage, asyncio.get_running_loop(), [NS]), 0)
    try:
        code, body = await asyncio.to_thread(fetch, page.url)
    finally:
        page.close()
        storage.close()
    assert code == 503
    assert b"continualtrainingruns" in body  # the failed call, named


async def test_without_matplotlib_the_page_says_how_to_get_the_curve(
    cluster, monkeypatch: pytest.MonkeyPatch
):
    world, _, _ = cluster
    monkeypatch.setattr(web_cluster, "_can_draw", lambda: False)  # as in the operator image
    storage = world.storage()
    source = ClusterSource(storage, asyncio.get_running_loop(), [NS])
    try:
        demo = (await asyncio.to_thread(source.runs))[0]
        assert await asyncio.to_thread(source.curve_png, f"/runs/{NS}/demo/curve.png") is None
    finally:
        storage.close()
    assert demo.curve_path is None
    assert "continual-training[report]" in demo.curve_note
    assert demo.batches["b1"]["meanLoss"] == 2.5  # the table still has the numbers
