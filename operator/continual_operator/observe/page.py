"""A small read-only status page: runs, conditions, batches, curve, events.

The page is drawn from a :class:`PageSource`; each executor brings its own. Local mode (``--serve PORT``,
:mod:`continual_operator.local.page`) uses :class:`RunSource`: what
it keeps in its state folder (the run's CR status in ``status.json``, each batch's in ``batches.json``,
``events.jsonl``) and the training curve drawn from the run's volume (:mod:`continual_operator.observe.curve`,
rendered by :mod:`continual_operator.observe.report`). The operator (``--status-page-port``) uses
:class:`continual_operator.cluster.page.ClusterSource`: the runs, batches and Events of the watched
namespaces, read from the API server. The page reloads itself every few seconds, so a curve grows
while a batch trains.

Read-only by construction: the handler has GET and HEAD on fixed paths and nothing else (anything else
is 404, other methods 501 from the standard library), and a source has no method that writes. Local mode
binds 127.0.0.1 unless told otherwise. Python's ``http.server`` is enough for a few browsers; it is not
meant to face the internet.
"""

from __future__ import annotations

import html
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from continual_operator.observe.curve import load_curve
from continual_operator.observe.report import PAGE_STYLE, ReportError, render_png

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


@dataclass(frozen=True)
class RunView:
    """One run as the page shows it, whatever it was read from.

    ``status`` is the run's CR status, ``batches`` each batch's status by batch name, ``events`` the
    newest first (``time``, ``type``, ``kind``, ``name``, ``reason``, ``message``). ``curve_path`` is where
    the page gets the curve's PNG (None: nothing to draw yet, ``curve_note`` says why); ``curve_note``
    also says what the curve is drawn from.
    """

    name: str
    status: dict[str, Any]
    batches: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    curve_path: str | None
    curve_note: str = ""
    namespace: str | None = None

    @property
    def anchor(self) -> str:
        """The HTML id of the run's section: ``run-<name>`` (``run-<namespace>-<name>`` on a cluster)."""
        return f"run-{self.namespace}-{self.name}" if self.namespace else f"run-{self.name}"

    @property
    def title(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class PageSource(Protocol):
    """What the page is drawn from: local mode's state folder, or the cluster (``web_cluster``)."""

    @property
    def title(self) -> str:
        """Shown in the page's title."""
        ...

    def runs(self) -> list[RunView]:
        """The runs to show, as of now."""
        ...

    def curve_png(self, path: str) -> bytes | None:
        """The PNG served at ``path`` (a ``RunView.curve_path``); None when no run has that path."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """What ``/status.json`` answers."""
        ...


@dataclass(frozen=True)
class RunSource:
    """Where one run's state lives: local mode's state folder and the run's folder on the volume."""

    name: str
    state: Path
    run_dir: Path
    _curves: _CurveCache = field(default_factory=_CurveCache, compare=False, repr=False)

    @property
    def title(self) -> str:
        return self.name

    @property
    def _curve_path(self) -> str:
        return f"/runs/{self.name}/curve.png"

    def runs(self) -> list[RunView]:
        has_curve = (self.run_dir / "history.jsonl").exists()
        return [
            RunView(
                name=self.name,
                status=_read_json(self.state / "status.json") or {},
                batches=_read_json(self.state / "batches.json") or {},
                events=_events(self.state),
                curve_path=self._curve_path if has_curve else None,
                curve_note="" if has_curve else "No training curve yet.",
            )
        ]

    def curve_png(self, path: str) -> bytes | None:
        return self._curves.get(self) if path == self._curve_path else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "run": self.name,
            "status": _read_json(self.state / "status.json"),
            "batches": _read_json(self.state / "batches.json"),
        }


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
    return f'<table class="conditions"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


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
    return f'<table class="batches"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


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
    return f'<table class="events"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _run_html(run: RunView) -> str:
    status = run.status
    name = html.escape(run.title)
    phase = html.escape(str(status.get("phase", "not started")))
    step = html.escape(str(status.get("globalStep", 0)))
    note = f'<p class="curve-note">{html.escape(run.curve_note)}</p>' if run.curve_note else ""
    curve = (
        f'<img class="curve" src="{html.escape(run.curve_path)}" alt="training loss of run {name}">'
        if run.curve_path
        else ""
    )
    return (
        f'<section class="run" id="{html.escape(run.anchor)}"><h2>Run {name}</h2>'
        f'<p>Phase <strong class="phase">{phase}</strong>, global step {step}; batches: '
        f"{status.get('batchesCompleted', 0)} completed, {status.get('batchesQueued', 0)} queued, "
        f"{status.get('batchesFailed', 0)} failed.</p>"
        f"<h3>Conditions</h3>{_conditions_html(status)}<h3>Curve</h3>{curve}{note}"
        f"<h3>Batches</h3>{_batches_html(run.batches)}<h3>Recent events</h3>{_events_html(run.events)}"
        "</section>"
    )


def render_page(source: PageSource) -> str:
    """The status page of every run of ``source``, as of now."""
    runs = source.runs()
    title = html.escape(source.title)
    body = "".join(_run_html(run) for run in runs) or "<p>No run yet.</p>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>continual-training: {title}</title>'
        f"<style>{PAGE_STYLE}</style></head><body>"
        f"<h1>continual-training</h1>{body}</body></html>\n"
    )


def make_handler(source: PageSource, *, quiet: bool = True) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one source: GET and HEAD only, no other method exists on it."""

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
                elif path == "/status.json":
                    body, kind = json.dumps(source.snapshot()).encode(), "application/json"
                elif path.endswith("/curve.png") and (png := source.curve_png(path)) is not None:
                    body, kind = png, "image/png"
                else:
                    self.send_error(HTTPStatus.NOT_FOUND, "the page has /, /status.json and the curves")
                    return
            except (OSError, ReportError, SourceUnavailableError) as exc:
                self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
            if not quiet:
                super().log_message(format, *args)
            # local mode's output is the training's; page requests would drown it

    return Handler


class SourceUnavailableError(Exception):
    """The source cannot be read right now (the API server did not answer): the page answers 503."""


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


def start(source: PageSource, port: int, host: str = "127.0.0.1", *, quiet: bool = True) -> StatusPage:
    """Serve ``source``'s page on ``host:port`` (port 0: any free one; see ``StatusPage.url``)."""
    server = ThreadingHTTPServer((host, port), make_handler(source, quiet=quiet))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="status-page", daemon=True)
    thread.start()
    return StatusPage(server, thread)
