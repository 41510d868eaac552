"""The operator's API requests: a bounded pool of threads that serves the oldest reconcile first.

The operator sends at most ``api_workers`` requests at once (one pool thread each). When more wait, the
order they go in decides how long each reconcile takes: a reconcile makes its writes one after another
(the ServiceAccount, Role and RoleBinding before the Job they let start, the batch's status after), so
in a plain first-come queue every write of a reconcile waits behind everything queued since its last
one, and a burst of reconciles (200 runs whose first batches land together) all progress together and
all finish late.

:class:`PriorityExecutor` runs the waiting request of the *oldest* reconcile first (:func:`ranked`: its
rank is when the reconcile started), so reconciles finish in about the order they started while the
total work stays the same. Nothing waits forever: every later reconcile ranks after the ones waiting
now (a plan that only reports ranks a fixed few seconds later than its start,
:data:`~continual_operator.cluster.reconciler.REPORT_RANK_DELAY_SECONDS`). A request outside a reconcile (the status page, the engine discovery) ranks as a reconcile
starting when it is sent. The threads take the next request themselves as soon as one ends, without
waiting for the event loop (which is busiest exactly when many requests wait).
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

#: The rank of the current task's requests (lower goes first): when its reconcile started.
_RANK: contextvars.ContextVar[float | None] = contextvars.ContextVar("continual_request_rank", default=None)


@contextlib.contextmanager
def ranked(rank: float) -> Iterator[None]:
    """Rank the requests sent inside the block ``rank`` (a reconcile: the loop time it started at)."""
    token = _RANK.set(rank)
    try:
        yield
    finally:
        _RANK.reset(token)


def current_rank() -> float:
    """The rank of a request sent now: its reconcile's, or now (loop time) outside a reconcile."""
    rank = _RANK.get()
    return rank if rank is not None else asyncio.get_running_loop().time()


_Item = tuple[float, int, Callable[[], Any] | None, "concurrent.futures.Future[Any] | None"]


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

    def submit(self, rank: float, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``call`` at ``rank``; its future (cancelling it before it starts skips the call)."""
        if self._closed:
            raise RuntimeError("the executor is shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((rank, next(self._order), call, future))
        return future

    async def run(self, rank: float, call: Callable[[], T]) -> T:
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
            self._queue.put((float("inf"), next(self._order), None, None))

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
