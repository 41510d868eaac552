"""The status page (``--serve PORT``) and the HTML report, in a real headless browser (Debian's chromium).

The page is served by the real CLI: a quickstart volume with one good batch and one with broken data,
trained by ``continual-training demo --serve 0`` (the second fails for good, the run halts), which then
keeps serving.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CURVE_SIZE = [1200, 700]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium (as .ci/run does)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def image_size(page: Any, selector: str) -> list[int]:
    """The decoded size of an image: [0, 0] if the browser could not load or decode it."""
    page.wait_for_function(f"document.querySelector('{selector}').complete")
    return page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]")


def test_the_html_report_opens_in_the_browser_with_its_curve_and_table(browser, demo_report: Path):
    page = browser.new_page()
    page.goto((demo_report / "demo-report.html").as_uri())
    assert image_size(page, "#curve") == CURVE_SIZE
    rows = page.locator("table tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).locator("td").nth(0).inner_text() == "batch-001"
    page.close()


class Served:
    """``continual-training demo --serve 0`` in the background, its output read line by line."""

    def __init__(self, volume: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "continual_operator.cli", "demo", "--volume", str(volume), "--serve", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = 300) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line starting {prefix!r}; output: {''.join(self.seen)[-3000:]}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line.strip()


@pytest.fixture(scope="module")
def served(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    # The quickstart's model and first batch; not its run folder, whose ledger names the model's path.
    volume = tmp_path_factory.mktemp("served") / "volume"
    shutil.copytree(demo_volume / "models", volume / "models")
    (volume / "inbox").mkdir()
    shutil.copy(demo_volume / "inbox" / "batch-001.jsonl", volume / "inbox")
    (volume / "inbox" / "batch-002.jsonl").write_text('{"text": "fine"}\nnot json at all\n')
    server = Served(volume)
    try:
        url = server.wait_for("status page: ").removeprefix("status page: ")
        server.wait_for("done (exit code 1)")  # the broken batch failed for good: the run halted
        yield server, url
    finally:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def test_the_status_page_shows_the_run_its_curve_and_the_failed_batch(browser, served):
    _, url = served
    page = browser.new_page()
    page.goto(url)
    run = page.locator("section#run-demo")
    assert run.locator(".phase").inner_text() == "Halted"
    assert image_size(page, "section#run-demo img.curve") == CURVE_SIZE
    assert run.locator(".batches tr.state-Succeeded").count() == 1
    failed = run.locator(".batches tr.state-Failed")
    assert failed.count() == 1
    assert "Failed" in failed.inner_text()
    assert "batch-002.jsonl" in failed.inner_text()  # the message names the broken file
    degraded = run.locator(".conditions tr.condition-Degraded").inner_text()
    assert "True" in degraded
    assert run.locator(".events tr.event-Warning").count() >= 1
    page.close()


def test_the_status_page_is_read_only(served):
    """GET and HEAD on fixed paths only (urllib on our own 127.0.0.1 URL: S310 does not apply)."""
    _, url = served
    with urllib.request.urlopen(url + "status.json", timeout=10) as answer:  # noqa: S310
        status = json.loads(answer.read())
    assert status["run"] == "demo"
    assert status["status"]["phase"] == "Halted"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        request = urllib.request.Request(url, data=b"{}", method=method)  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        assert refused.value.code == 501
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url + "../status.json/../../etc/passwd", timeout=10)  # noqa: S310
    assert missing.value.code == 404


def test_the_page_process_stops_on_ctrl_c_with_the_run_s_exit_code(served):
    server, _ = served
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 1  # the run halted: local mode's exit code, kept
