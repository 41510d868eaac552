"""The operator's API requests: a bounded pool of threads that serves the oldest reconcile first.

The operator sends at most ``api_workers`` requests at once (one pool thread each). When more wait, the
order they go in decides how long each reconcile takes: a reconcile makes its writes one after another
(the ServiceAccount, Role and RoleBinding before the Job they let start, the batch's status after), so
in a plain first-come queue every write of a reconcile waits behind everything queued since its last
one, and a burst of reconciles (200 runs whose first batches land together) all progress together and
all finish late.

:class:`PriorityExecutor` runs the waiting requests in rank order (:func:`current_rank`):

* first the writes that **start or stop training** (per-run objects, workloads, their deletion), then
  those that **report** (status patches and Events, :func:`reporting`): during a burst a run's Job does
  not wait behind other runs' status patches, and the reports follow as soon as the burst thins;
* within each, the request of the **oldest reconcile** first (:func:`ranked`: when the reconcile
  started), so reconciles finish in about the order they started while the total work stays the same.

Nothing waits forever: every later reconcile ranks after the ones waiting now, and writes that start
training are one Job (or gang) per run at a time. A request outside a reconcile (the status page, the
engine discovery) ranks as a reconcile starting when it is sent. The threads take the next request
themselves as soon as one ends, without waiting for the event loop (which is busiest exactly when many
requests wait).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: A request's rank (lower goes first): ``(0, started)`` for a write that starts or stops training or a
#: read, ``(1, started)`` for a report; ``started`` is when its reconcile started (loop time).
Rank = tuple[int, float]
#: When the current task's reconcile started (None: not in a reconcile).
_STARTED: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "continual_reconcile_started", default=None
)
#: Whether the current task's requests report (status patches, Events).
_REPORTING: contextvars.ContextVar[bool] = contextvars.ContextVar("continual_reporting", default=False)


@contextlib.contextmanager
def ranked(started: float) -> Iterator[None]:
    """Rank the requests sent inside the block by ``started`` (a reconcile's: the loop time it started)."""
    token = _STARTED.set(started)
    try:
        yield
    finally:
        _STARTED.reset(token)


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """The requests sent inside the block report (a status patch, an Event): they go after the writes
    that start or stop training."""
    token = _REPORTING.set(True)
    try:
        yield
    finally:
        _REPORTING.reset(token)


def current_rank() -> Rank:
    """The rank of a request sent now: reporting or not, and its reconcile's start (or now, outside one)."""
    started = _STARTED.get()
    return (
        1 if _REPORTING.get() else 0,
        started if started is not None else asyncio.get_running_loop().time(),
    )


_Item = tuple[Rank, int, Callable[[], Any] | None, "concurrent.futures.Future[Any] | None"]
_LAST: Rank = (2, float("inf"))


class PriorityExecutor:
    """``workers`` threads running submitted calls lowest rank first, then first come."""

    def __init__(self, workers: int, *, name: str = "k8s-api") -> None:
        if workers < 1:
            raise ValueError(f"an executor needs at least one worker, not {workers}")
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, rank: Rank, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``call`` at ``rank``; its future (cancelling it before it starts skips the call)."""
        if self._closed:
            raise RuntimeError("the executor is shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((rank, next(self._order), call, future))
        return future

    async def run(self, rank: Rank, call: Callable[[], T]) -> T:
        """Run ``call`` in a worker thread at ``rank`` and await its result."""
        return await asyncio.wrap_future(self.submit(rank, call))

    @property
    def waiting(self) -> int:
        """How many calls wait for a worker (roughly: the queue is shared with the threads)."""
        return self._queue.qsize()

    def shutdown(self) -> None:
        """Cancel the calls not started; the threads end after the calls they run."""
        self._closed = True
        while True:
            try:
                *_, future = self._queue.get_nowait()
            except queue.Empty:
                break
            if future is not None:
                future.cancel()
        for _ in self._threads:
            self._queue.put((_LAST, next(self._order), None, None))

    def _work(self) -> None:
        while True:
            _, _, call, future = self._queue.get()
            if call is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = call()
            except BaseException as error:  # handed to the awaiting task, whatever it is
                future.set_exception(error)
            else:
                future.set_result(result)
