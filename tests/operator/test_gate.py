"""The API request pool: a bounded number of calls at once, the oldest reconcile's first, cancelled calls
skipped, nothing left running after a shutdown (cluster/gate.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from continual_operator.cluster.gate import PriorityExecutor, current_rank, ranked


async def test_waiting_calls_run_lowest_rank_first_then_first_come_and_cancelled_ones_never() -> None:
    pool = PriorityExecutor(1, name="test")
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def blocker() -> str:
        started.set()
        release.wait(10)
        return "blocker"

    def call(name: str) -> str:
        order.append(name)
        return name

    try:
        first = pool.submit(0.0, blocker)
        assert started.wait(10)
        # Queued while the one worker is busy: a late reconcile, two older ones, one cancelled, one between.
        late = pool.submit(9.0, lambda: call("rank-9"))
        older = [pool.submit(1.0, lambda n=n: call(n)) for n in ("rank-1a", "rank-1b")]
        cancelled = pool.submit(0.5, lambda: call("cancelled"))
        between = pool.submit(5.0, lambda: call("rank-5"))
        assert cancelled.cancel()
        assert pool.waiting == 5
        release.set()
        results = [f.result(10) for f in (first, *older, between, late)]
        assert results == ["blocker", "rank-1a", "rank-1b", "rank-5", "rank-9"]
        assert order == ["rank-1a", "rank-1b", "rank-5", "rank-9"]
        assert cancelled.cancelled()
        # From a task: awaited, with its error handed back as raised.
        assert await pool.run(0.0, lambda: 42) == 42
        with pytest.raises(ZeroDivisionError):
            await pool.run(0.0, lambda: 1 / 0)
    finally:
        release.set()
        pool.shutdown()


def test_a_shutdown_cancels_what_waits_and_refuses_more() -> None:
    pool = PriorityExecutor(1, name="test")
    started, release = threading.Event(), threading.Event()
    running = pool.submit(0.0, lambda: (started.set(), release.wait(10)))
    assert started.wait(10)
    waiting = pool.submit(1.0, lambda: "never")
    pool.shutdown()
    assert waiting.cancelled()
    release.set()
    assert running.result(10) == (None, True)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(0.0, lambda: None)
    for thread in pool._threads:
        thread.join(10)
        assert not thread.is_alive()


async def test_requests_rank_by_their_reconciles_start_and_outside_one_by_when_they_are_sent() -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    assert before <= current_rank() <= loop.time()
    with ranked(12.5):
        assert current_rank() == 12.5
        with ranked(3.0):
            assert current_rank() == 3.0
        assert current_rank() == 12.5
    assert current_rank() >= before


def test_an_executor_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        PriorityExecutor(0)
