"""A small read-only status page for local mode (``--serve PORT``): runs, conditions, batches, curve, events.

It shows what local mode keeps in its state folder (the run's CR status in ``status.json``, each batch's
in ``batches.json``, ``events.jsonl``) and the training curve drawn from the run's volume
(:mod:`continual_operator.curve`, rendered by :mod:`continual_operator.report`). The page reloads itself
every few seconds, so a curve grows while a batch trains.

Read-only by construction: the handler answers GET and HEAD on three fixed paths and nothing else
(anything else is 404, other methods 501 from the standard library), reads only the state folder and the
run's folder, and binds 127.0.0.1 unless told otherwise. Python's ``http.server`` is enough for one
user's browser; it is not meant to face a network.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from continual_operator import resources
from continual_operator.curve import load_curve
from continual_operator.local import LocalOptions, load_run, localize
from continual_operator.report import PAGE_STYLE, ReportError, render_png

#: Seconds between reloads of the page.
REFRESH_SECONDS = 5
#: Events shown, newest first.
EVENTS_SHOWN = 20
BATCH_COLUMNS = (
    "phase",
    "startStep",
    "endStep",
    "samples",
    "tokens",
    "meanLoss",
    "attempts",
    "reason",
    "message",
)


@dataclass(frozen=True)
class RunSource:
    """Where one run's state lives: local mode's state folder and the run's folder on the volume."""

    name: str
    state: Path
    run_dir: Path

    @classmethod
    def for_local(cls, options: LocalOptions) -> RunSource:
        """The run a local-mode invocation trains."""
        run = load_run(options.manifest)
        run_dir = Path(localize(resources.run_dir(run.spec), options.volume))
        return cls(run.metadata.name, options.state, run_dir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or being replaced: show nothing this time
        return None


def _events(state: Path) -> list[dict[str, Any]]:
    try:
        lines = (state / "events.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in reversed(lines[-EVENTS_SHOWN:]):
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line being appended
    return events


def _cells(values: list[str], tag: str = "td") -> str:
    return "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)


def _conditions_html(status: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr class="condition-{html.escape(str(c.get("type")))}">'
        + _cells([str(c.get(k, "")) for k in ("type", "status", "reason", "message", "lastTransitionTime")])
        + "</tr>"
        for c in status.get("conditions", [])
    )
    head = _cells(["type", "status", "reason", "message", "since"], "th")
    return f'<table id="conditions"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _batches_html(batches: dict[str, Any]) -> str:
    if not batches:
        return "<p>No batch yet.</p>"
    head = _cells(["batch", *BATCH_COLUMNS], "th")
    rows = "".join(
        f'<tr class="state-{html.escape(str(s.get("phase", "")))}" data-batch="{html.escape(name)}">'
        + _cells([name, *(str(s.get(k, "")) for k in BATCH_COLUMNS)])
        + "</tr>"
        for name, s in batches.items()
    )
    return f'<table id="batches"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _events_html(events: list[dict[str, Any]]) -> str:
    if not events:
        return "<p>No event yet.</p>"
    head = _cells(["time", "type", "object", "reason", "message"], "th")
    rows = "".join(
        f'<tr class="event-{html.escape(str(e.get("type")))}">'
        + _cells([str(e.get(k, "")) for k in ("time", "type")] + [f"{e.get('kind')}/{e.get('name')}"])
        + _cells([str(e.get(k, "")) for k in ("reason", "message")])
        + "</tr>"
        for e in events
    )
    return f'<table id="events"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def render_page(source: RunSource) -> str:
    """The status page of one run, as of now."""
    status = _read_json(source.state / "status.json") or {}
    batches = _read_json(source.state / "batches.json") or {}
    name = html.escape(source.name)
    phase = html.escape(str(status.get("phase", "not started")))
    step = html.escape(str(status.get("globalStep", 0)))
    curve = (
        f'<img id="curve" src="/runs/{name}/curve.png" alt="training loss and learning rate of run {name}">'
        if (source.run_dir / "history.jsonl").exists()
        else "<p>No training curve yet.</p>"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>continual-training: {name}</title>'
        f"<style>{PAGE_STYLE}</style></head><body>"
        f'<h1>continual-training</h1><section class="run" id="run-{name}"><h2>Run {name}</h2>'
        f'<p>Phase <strong class="phase">{phase}</strong>, global step {step}; batches: '
        f"{status.get('batchesCompleted', 0)} completed, {status.get('batchesQueued', 0)} queued, "
        f"{status.get('batchesFailed', 0)} failed.</p>"
        f"<h3>Conditions</h3>{_conditions_html(status)}<h3>Curve</h3>{curve}"
        f"<h3>Batches</h3>{_batches_html(batches)}<h3>Recent events</h3>{_events_html(_events(source.state))}"
        "</section></body></html>\n"
    )


@dataclass
class _CurveCache:
    """The last PNG drawn, kept while the history file is unchanged (the page reloads every few seconds)."""

    key: tuple[int, int] | None = None
    png: bytes = b""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, source: RunSource) -> bytes:
        history = source.run_dir / "history.jsonl"
        stat = history.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        with self.lock:
            if key != self.key:
                curve = load_curve(source.run_dir)
                curve.name = source.name
                self.png, self.key = render_png(curve), key
            return self.png


def make_handler(source: RunSource) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one run (GET and HEAD only)."""
    cache = _CurveCache()
    curve_path = f"/runs/{source.name}/curve.png"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in {"/", "/index.html"}:
                    body, kind = render_page(source).encode(), "text/html; charset=utf-8"
                elif path == curve_path:
                    body, kind = cache.get(source), "image/png"
                elif path == "/status.json":
                    body, kind = self._status_json(), "application/json"
                else:
                    self.send_error(HTTPStatus.NOT_FOUND, "the page has /, /status.json and the curve")
                    return
            except (FileNotFoundError, ReportError) as exc:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _status_json(self) -> bytes:
            data = {
                "run": source.name,
                "status": _read_json(source.state / "status.json"),
                "batches": _read_json(source.state / "batches.json"),
            }
            return json.dumps(data).encode()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
            pass  # local mode's output is the training's; page requests would drown it

    return Handler


@dataclass
class StatusPage:
    """A status page served from a background thread."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start(source: RunSource, port: int, host: str = "127.0.0.1") -> StatusPage:
    """Serve ``source``'s page on ``host:port`` (port 0: any free one; see ``StatusPage.url``)."""
    server = ThreadingHTTPServer((host, port), make_handler(source))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="status-page", daemon=True)
    thread.start()
    return StatusPage(server, thread)


def run_with_page(
    options: LocalOptions, port: int, train: Callable[[], int], out: Callable[[str], None] = print
) -> int:
    """Local mode with its status page: serve, train, then (without --watch) keep serving until Ctrl-C."""
    page = start(RunSource.for_local(options), port)
    out(f"status page: {page.url}")
    code: int | None = None
    try:
        code = train()
        if not options.watch:
            out(f"done (exit code {code}); the status page stays up at {page.url}: Ctrl-C to stop")
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    return 130 if code is None else code
