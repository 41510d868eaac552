"""The status page's cluster source: runs, batches and Events of the watched namespaces, from the API server.

The operator serves :mod:`continual_operator.observe.page`'s page with this source (``--status-page-port``). It
reads through :class:`~continual_operator.cluster.k8s.KubernetesStorage` only (LISTs: runs, batches, Events;
nothing that writes) and keeps what it read for ``ttl_seconds``, so a browser reloading every few seconds,
or several browsers, cost one round of LISTs per period and not one per page load.

The curve. The operator does not mount the runs' volumes, so the per-step loss and learning rate
(``history.jsonl``) are out of its reach; what the page draws is what batch status has: each finished
batch's mean loss over its step range (a failed one dashed). The page says so, and ``continual-training
report`` on the volume draws the per-step curve. Drawing needs matplotlib (the ``report`` extra); in an
image without it the page says how to get it and shows the batch table only.

The storage is asynchronous and belongs to the operator's event loop; the page's HTTP threads hand each
read to that loop (:func:`asyncio.run_coroutine_threadsafe`) and wait, bounded, for the answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_operator.cluster.k8s import BATCHES, RUNS, KubernetesStorage
from continual_operator.errors import KubernetesApiError
from continual_operator.observe.curve import BatchCurve, RunCurve, StepPoint
from continual_operator.observe.page import (
    EVENTS_SHOWN,
    RunView,
    SourceUnavailableError,
    StatusPage,
    start,
)
from continual_operator.observe.report import render_png

#: Seconds a read of the cluster is reused (the page reloads every ``web.REFRESH_SECONDS``).
CACHE_SECONDS = 3.0
#: Seconds a page load waits for the API server before answering 503.
READ_TIMEOUT_SECONDS = 20.0
CURVE_NOTE = (
    "Drawn from batch status: each batch's mean loss over its step range (the operator does not mount "
    "the volume; `continual-training report --volume ...` on the volume draws the per-step curve)."
)
NO_PLOTTING = (
    "No curve: matplotlib is not installed where the operator runs (the default image leaves it out); "
    "an image built FROM it with `pip install 'continual-training[report]'` draws it here. The batch "
    "table below has each batch's mean loss."
)
_STATES = {"Succeeded": "completed", "Failed": "failed"}


@dataclass(frozen=True)
class _Read:
    """One round of LISTs, as the page uses it."""

    runs: list[RunView]
    curves: dict[str, RunCurve]
    raw: dict[str, Any]


def _event_row(event: dict[str, Any]) -> dict[str, Any]:
    involved = event.get("involvedObject") or {}
    return {
        "time": event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "",
        "type": event.get("type", ""),
        "kind": involved.get("kind", ""),
        "name": involved.get("name", ""),
        "reason": event.get("reason", ""),
        "message": event.get("message", ""),
    }


def status_curve(name: str, batches: dict[str, dict[str, Any]]) -> RunCurve | None:
    """The curve batch status can draw: one flat segment of mean loss per finished batch (None: none)."""
    drawn = []
    for batch_id, status in batches.items():
        start, end, loss = status.get("startStep"), status.get("endStep"), status.get("meanLoss")
        if not isinstance(start, int) or not isinstance(end, int) or not isinstance(loss, int | float):
            continue
        points = [StepPoint(start, float(loss), None), StepPoint(end, float(loss), None)]
        drawn.append(
            BatchCurve(
                batch_id=batch_id,
                state=_STATES.get(str(status.get("phase")), "running"),
                start_step=start,
                target_step=end,
                end_step=end,
                samples=int(status.get("samples") or 0),
                tokens=status.get("tokens"),
                mean_loss=float(loss),
                duration_seconds=None,
                attempts=int(status.get("attempts") or 0),
                preemptions=0,
                points=points,
            )
        )
    if not drawn:
        return None
    # run_dir names no folder here: the renderer never reads it (only the report's file names use it)
    return RunCurve(name=name, run_dir=Path(name), batches=drawn, marks=[], skipped_lines=[])


@dataclass
class ClusterSource:
    """The runs of ``namespaces`` (None or empty: of the whole cluster), read on ``loop``."""

    storage: KubernetesStorage
    loop: asyncio.AbstractEventLoop
    namespaces: Sequence[str] | None = None
    ttl_seconds: float = CACHE_SECONDS
    clock: Callable[[], float] = time.monotonic
    title: str = "cluster"
    _read: _Read | None = field(default=None, init=False, repr=False)
    _read_at: float = field(default=0.0, init=False, repr=False)
    _pngs: dict[str, tuple[Any, bytes]] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    #: One round of LISTs at a time: browsers that load at once after the period wait for it, not repeat it.
    _fetching: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    #: One drawing at a time: pyplot is not thread-safe (as in observe/page.py's curve cache).
    _drawing: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    # -- PageSource -----------------------------------------------------------------------------------
    def runs(self) -> list[RunView]:
        return self._current().runs

    def curve_png(self, path: str) -> bytes | None:
        read = self._current()
        curve = read.curves.get(path)
        if curve is None:
            return None
        key = [(b.batch_id, b.state, b.start_step, b.end_step, b.mean_loss) for b in curve.batches]
        with self._drawing:
            cached = self._pngs.get(path)
            if cached is None or cached[0] != key:
                cached = (key, render_png(curve))
                # only the runs of the last read: a deleted run's picture goes
                self._pngs = {p: v for p, v in self._pngs.items() if p in read.curves} | {path: cached}
            return cached[1]

    def snapshot(self) -> dict[str, Any]:
        return self._current().raw

    # -- reading --------------------------------------------------------------------------------------
    def _fresh(self) -> _Read | None:
        with self._lock:
            if self._read is not None and self.clock() - self._read_at < self.ttl_seconds:
                return self._read
        return None

    def _current(self) -> _Read:
        if (read := self._fresh()) is not None:
            return read
        with self._fetching:
            if (read := self._fresh()) is not None:  # another thread read it while this one waited
                return read
            return self._fetch_now()

    def _fetch_now(self) -> _Read:
        future = asyncio.run_coroutine_threadsafe(self._fetch(), self.loop)
        try:
            read = future.result(timeout=READ_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            future.cancel()
            raise SourceUnavailableError(
                f"the API server did not answer within {READ_TIMEOUT_SECONDS:.0f}s"
            ) from exc
        except KubernetesApiError as exc:
            raise SourceUnavailableError(str(exc)) from exc
        with self._lock:
            self._read, self._read_at = read, self.clock()
        return read

    async def _fetch(self) -> _Read:
        """Four LISTs per watched namespace (or four across the cluster): runs, batches, their Events."""
        scopes: list[str | None] = list(self.namespaces) if self.namespaces else [None]
        runs: list[RunView] = []
        curves: dict[str, RunCurve] = {}
        raw: dict[str, Any] = {"runs": []}
        for scope in scopes:
            run_items = await self.storage.list_runs(scope)
            batch_items = await self.storage.list_all_batches(scope)
            events = await self.storage.list_events(scope, RUNS) + await self.storage.list_events(
                scope, BATCHES
            )
            for run in sorted(run_items, key=_key):
                view, curve = _run_view(run, batch_items, events)
                runs.append(view)
                raw["runs"].append(
                    {
                        "namespace": view.namespace,
                        "run": view.name,
                        "status": view.status,
                        "batches": view.batches,
                    }
                )
                if curve is not None and view.curve_path is not None:
                    curves[view.curve_path] = curve
        return _Read(runs, curves, raw)


def _in(item: dict[str, Any], namespace: str) -> bool:
    return (item.get("metadata") or {}).get("namespace") == namespace


def _run_view(
    run: dict[str, Any], batch_items: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[RunView, RunCurve | None]:
    """One run's section: its batches (``spec.runName``) and the Events about it or them."""
    meta = run.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    mine = sorted(
        (b for b in batch_items if _in(b, namespace) and (b.get("spec") or {}).get("runName") == name),
        key=_key,
    )
    batches = {str(b["metadata"]["name"]): dict(b.get("status") or {}) for b in mine}
    about = {(RUNS.kind, name)} | {(BATCHES.kind, b) for b in batches}
    rows = sorted(
        (
            _event_row(e)
            for e in events
            if _in(e, namespace)
            and ((e.get("involvedObject") or {}).get("kind"), (e.get("involvedObject") or {}).get("name"))
            in about
        ),
        key=lambda r: str(r["time"]),
        reverse=True,
    )
    curve = status_curve(f"{namespace}/{name}", batches)
    drawn = curve is not None and _can_draw()
    if curve is None:
        note = "No finished batch yet: no curve to draw."
    else:
        note = CURVE_NOTE if drawn else NO_PLOTTING
    view = RunView(
        name=name,
        namespace=namespace,
        status=dict(run.get("status") or {}),
        batches=batches,
        events=rows[:EVENTS_SHOWN],
        curve_path=f"/runs/{namespace}/{name}/curve.png" if drawn else None,
        curve_note=note,
    )
    return view, curve


def _key(item: dict[str, Any]) -> tuple[str, str]:
    meta = item.get("metadata") or {}
    return (str(meta.get("creationTimestamp", "")), str(meta.get("name", "")))


def _can_draw() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def start_page(
    storage: KubernetesStorage,
    loop: asyncio.AbstractEventLoop,
    port: int,
    *,
    host: str = "127.0.0.1",
    namespaces: Sequence[str] | None = None,
) -> StatusPage:
    """Serve the cluster's status page in a thread of its own (reads run on ``loop``)."""
    title = ", ".join(namespaces) if namespaces else "all namespaces"
    return start(ClusterSource(storage, loop, namespaces, title=title), port, host)
