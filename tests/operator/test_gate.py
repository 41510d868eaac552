"""The API request pool: a bounded number of calls at once, the oldest reconcile's first, cancelled calls
skipped, nothing left running after a shutdown (cluster/gate.py); and a reconcile whose first write
still waits its turn gives way to a newer one of the run (cluster/k8s.py giving_way)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kube_world import (
    BATCHES,
    JOBS,
    NS,
    RUN,
    RUNS,
    SERVICE_ACCOUNTS,
    KubeWorld,
    batch_body,
    result,
    run_body,
)

from continual_operator.cluster.gate import PriorityExecutor, current_rank, ranked
from continual_operator.cluster.k8s import KubernetesStorage
from continual_operator.cluster.reconciler import REPORT_RANK_DELAY_SECONDS, Reconciler
from continual_operator.errors import ConflictError
from continual_operator.naming import job_name


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


# -- giving way: a reconcile whose first write has not gone out yet ----------------------------------------
@pytest.fixture
async def reconciler(world: KubeWorld) -> AsyncIterator[Reconciler]:
    """A reconciler without a view (it reads afresh, inline) on ``world``, closed after the test."""
    reconciler = Reconciler(world.storage())
    try:
        yield reconciler
    finally:
        await reconciler.close()
        reconciler.storage.close()


class _HeldWrites:
    """Holds every write of a storage in the request queue (before its turn comes) until released."""

    def __init__(self, storage: KubernetesStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queued, self.release = asyncio.Event(), asyncio.Event()
        original = storage._executor.run

        async def run(rank: float, call: Callable[[], Any]) -> Any:
            if getattr(call, "__qualname__", "").startswith("_GiveWay.guard") and not self.release.is_set():
                self.queued.set()
                await self.release.wait()
            return await original(rank, call)

        monkeypatch.setattr(storage._executor, "run", run)


async def _waiting(reconciler: Reconciler, key: tuple[str, str]) -> None:
    for _ in range(1000):
        if key in reconciler._waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second reconcile never waited for the run")


async def test_a_reconcile_gives_way_before_its_first_write_to_a_newer_one_that_waits(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run alone plans a status patch; its first batch arrives while that patch waits its turn: the
    newer reconcile writes everything (Job and statuses), the older one's patch never goes out."""
    world.add(RUNS, run_body())
    held = _HeldWrites(reconciler.storage, monkeypatch)
    key = (NS, RUN)
    first = asyncio.create_task(reconciler.reconcile(key))
    await asyncio.wait_for(held.queued.wait(), 10)  # its first write (the run's status) waits
    world.add(BATCHES, batch_body("b1"))
    second = asyncio.create_task(reconciler.reconcile(key))
    await _waiting(reconciler, key)
    held.release.set()
    assert await first is None
    plan = await second
    assert plan is not None and plan.actions
    assert world.names(JOBS) == [job_name(RUN, "b1", 1)]
    assert len(world.status_patches(RUNS, RUN)) == 1, "the older plan's run status went out too"
    assert (world.get(RUNS, RUN) or {})["status"]["observedGeneration"] == 1
    results = reconciler.metrics.reconciles
    assert results.labels(result="superseded")._value.get() == 1
    assert results.labels(result="ok")._value.get() == 1


async def test_once_a_write_went_out_the_plan_runs_to_its_end_and_a_replan_does_not_give_way_again(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1"))
    key = (NS, RUN)
    # A plan whose first write went out before the newer reconcile waited: it makes its Job. (Its later
    # writes wait until the newer reconcile waits for the run.)
    started, proceed = asyncio.Event(), threading.Event()
    storage = reconciler.storage
    original = storage._call
    writes = itertools.count(1)

    def call(method: str, path: str, *args: Any) -> Any:
        if method != "GET" and next(writes) > 1:
            proceed.wait(10)
        answer = original(method, path, *args)
        if method != "GET":
            loop.call_soon_threadsafe(started.set)
        return answer

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(storage, "_call", call)
    first = asyncio.create_task(reconciler.reconcile(key))
    await asyncio.wait_for(started.wait(), 10)
    second = asyncio.create_task(reconciler.reconcile(key))
    await _waiting(reconciler, key)
    proceed.set()
    assert await first is not None
    assert world.names(JOBS) == [job_name(RUN, "b1", 1)]
    await second

    # A reconcile that gave way is replaced by one that does not give way in turn.
    world.add(BATCHES, batch_body("b2", created=1))
    world.finish_job(job_name(RUN, "b1", 1), exit_code=0, message=result("b1", 0, 5))
    held = _HeldWrites(storage, monkeypatch)
    third = asyncio.create_task(reconciler.reconcile(key))
    await asyncio.wait_for(held.queued.wait(), 10)
    fourth = asyncio.create_task(reconciler.reconcile(key))
    await _waiting(reconciler, key)
    held.release.set()
    assert await third is None
    fifth = asyncio.create_task(reconciler.reconcile(key))  # waits while the fourth one writes
    assert await fourth is not None
    await fifth
    assert world.names(JOBS) == [job_name(RUN, "b1", 1), job_name(RUN, "b2", 1)]
    assert reconciler.metrics.reconciles.labels(result="superseded")._value.get() == 1


async def test_a_plan_that_only_reports_ranks_after_the_plans_that_start_workloads(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run alone plans its status only; a run with a batch, reconciled after it, plans a Job: the writes
    that start it rank first, the reports after it as late as the first run's (REPORT_RANK_DELAY_SECONDS)."""
    other = "other"
    world.add(RUNS, run_body())
    world.add(RUNS, run_body(other, storage={"existingClaim": "other-data"}))
    world.add(BATCHES, batch_body("o1", run=other))
    storage = reconciler.storage
    writes: list[tuple[float, str, str]] = []
    original = storage._request

    async def request(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method != "GET":
            writes.append((current_rank(), method, path))
        return await original(method, path, **kwargs)

    monkeypatch.setattr(storage, "_request", request)
    loop = asyncio.get_running_loop()
    first_started = loop.time()
    await reconciler.reconcile((NS, RUN))
    alone, second_started = len(writes), loop.time()
    await reconciler.reconcile((NS, other))
    alone_writes, other_writes = writes[:alone], writes[alone:]
    assert [path.rsplit("/", 2)[-2:] for _, _, path in alone_writes] == [[RUN, "status"]]
    job = next(i for i, (_, _, path) in enumerate(other_writes) if path.endswith("/jobs"))
    starts, after = other_writes[: job + 1], other_writes[job + 1 :]
    # The batch marked as starting, the per-run objects and the Job: at the reconcile's own rank.
    assert {path.rsplit("/", 1)[-1] for _, _, path in starts} >= {"status", "serviceaccounts", "jobs"}
    assert len({rank for rank, _, _ in starts}) == 1
    report = alone_writes[0][0]
    assert first_started + REPORT_RANK_DELAY_SECONDS <= report <= second_started + REPORT_RANK_DELAY_SECONDS
    assert all(second_started <= rank < report for rank, _, _ in starts)
    # Its reports after the Job (the run's status) rank as late as a plan that only reports.
    assert [path.rsplit("/", 2)[-2:] for _, _, path in after][:1] == [[other, "status"]]
    assert all(rank == starts[0][0] + REPORT_RANK_DELAY_SECONDS for rank, _, _ in after)


# -- a run's first objects: created while its batch is marked as starting ----------------------------------
def _slow_batch_patches(
    storage: KubernetesStorage, monkeypatch: pytest.MonkeyPatch, answer: tuple[int, str, bytes] | None = None
) -> dict[str, tuple[float, float]]:
    """Record when each write went out and came back; batch status patches take 1 s (or answer ``answer``)."""
    spans: dict[str, tuple[float, float]] = {}
    original = storage._call

    def call(method: str, path: str, *args: Any) -> tuple[int, str | None, bytes]:
        started = time.monotonic()
        try:
            if method == "PATCH" and "/trainingbatches/" in path:
                time.sleep(1.0)
                if answer is not None:
                    return answer
            return original(method, path, *args)
        finally:
            if method != "GET":
                spans.setdefault(
                    f"{method} {path.rsplit('/', 2)[-2 if path.endswith('/status') else -1]}",
                    (started, time.monotonic()),
                )

    monkeypatch.setattr(storage, "_call", call)
    return spans


async def test_a_runs_first_objects_are_created_while_its_batch_is_marked_as_starting(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1"))
    spans = _slow_batch_patches(reconciler.storage, monkeypatch)
    await reconciler.reconcile((NS, RUN))
    marked, account, job = spans["PATCH b1"], spans["POST serviceaccounts"], spans["POST jobs"]
    assert account[0] < marked[1], "the ServiceAccount waited for the batch's status patch"
    assert job[0] >= max(marked[1], account[1]), (
        "the Job went out before the batch was marked or its account existed"
    )
    assert world.names(JOBS) == [job_name(RUN, "b1", 1)]


async def test_a_plan_stopped_before_its_workload_leaves_its_run_objects_and_nothing_running(
    world: KubeWorld, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.add(RUNS, run_body())
    world.add(BATCHES, batch_body("b1"))
    conflict = (409, "Conflict", json.dumps({"kind": "Status", "reason": "Conflict", "code": 409}).encode())
    _slow_batch_patches(reconciler.storage, monkeypatch, conflict)
    with pytest.raises(ConflictError):
        await reconciler.reconcile((NS, RUN))
    left = [t for t in asyncio.all_tasks() if "create_run_objects" in t.get_coro().__qualname__]
    assert left == [], "the per-run objects' creation was left running"
    assert world.names(JOBS) == []
    assert len(world.requests("POST", SERVICE_ACCOUNTS)) == 1
