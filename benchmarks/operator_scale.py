"""Operator benchmarks on a real control plane, with a fake trainer that exits at once.

1. **Latency** from a TrainingBatch being created to its Job existing: one run, batches created one at a
   time (the next only after the previous one Succeeded), so each is measured on an idle operator. The
   clock starts just before the create request is sent and stops when a client-side watch on the
   namespace's trainer Jobs (label ``continual.dev/run``) delivers the Job's ADDED event.
2. **Scale**: R runs x B batches (default 200 x 5) created at once, all on one PersistentVolumeClaim
   (``subPath: runs/<run>``, progress reporting off, so trainer pods get no API credentials); wait until
   every batch is Succeeded, every run Idle, and the operator has drained its backlog. Reports the wall
   time, latencies under load, the operator's memory (VmRSS sampled every 0.5 s, and the kernel's peak
   VmHWM) and CPU, and its API requests counted exactly from the kube-apiserver audit log (the operator runs
   as its own ServiceAccount), by verb and resource, in total and per batch. Then ``--idle-seconds`` of the
   operator with nothing to do but its periodic resync.

Everything runs on this machine: etcd, kube-apiserver and kube-controller-manager (``KUBEBUILDER_ASSETS``),
the operator as a subprocess (``continual-training operator --standalone --namespace NS --metrics-port P``)
and the e2e harness's pod runner, which plays kubelet and runs ``fake_trainer.py`` for every Job pod.
Each phase has its own namespace, operator process and identity, so their numbers do not mix.

Each phase prints its section as it ends, with the goals of issue 11 measured so far (requests per batch,
peak RSS, API-server CPU per batch from 50 to 200 runs, first Job latency under load, idle requests per
minute, 1000 runs x 1 batch: RSS and whether it completed) next to the numbers measured and their ratio
to the numbers before the watch-fed view, and rewrites ``--json``: a run cut off later still reports.
``--scales 50x5,200x5,1000x1`` runs every set-up the goals name; the idle operator is measured once, after
the 200 x 5 phase (or the largest one run).

Usage: python benchmarks/operator_scale.py [--runs 200 --batches 5 --latency-batches 50] [--scales 50x5,200x5]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the e2e harness: tests.e2e
sys.path.insert(0, str(Path(__file__).resolve().parent))  # kube_bench
from tests.e2e.controlplane import AssetsMissingError, ControlPlane, assets_from_env, free_port
from tests.e2e.kubeapi import RawApi
from tests.e2e.podrunner import PodRunner
from tests.e2e.sandbox import probe

from continual_operator.cluster.handlers import OperatorOptions
from continual_operator.planning.planner import FINISHED_JOBS_KEPT
from kube_bench import (
    ANNOTATION_BATCH,
    BATCHES_PATH,
    FAKE_TRAINER,
    JOBS_PATH,
    LABEL_RUN,
    OPERATOR_ACCOUNT,
    REPO,
    RUNS_PATH,
    AuditCounts,
    OperatorProcess,
    Watcher,
    audit_args,
    batch_manifest,
    child_processes,
    count_audit,
    cpu_seconds,
    create_claim,
    create_namespace,
    fake_trainer_command_map,
    grant_operator_identity,
    machine_busy_seconds,
    run_manifest,
    runner_exposed_paths,
    summary_ms,
)

CLAIM = "bench-data"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
BENCH = "bench process (pod runner, watches, client)"
PODS = "pods (fake trainers)"
OPERATOR = "operator"
MACHINE = "machine"
OTHERS = "others"
RESYNC_SECONDS = OperatorOptions.resync_seconds


# -- what the watches see -------------------------------------------------------------------------------
@dataclass
class Tracker:
    """Client-side timestamps (monotonic) of Jobs and batches, fed by two watches."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    job_added: dict[str, float] = field(default_factory=dict)  # batch -> first Job of it seen
    job_complete: dict[str, float] = field(default_factory=dict)  # batch -> its Job seen Complete
    jobs_seen: set[str] = field(default_factory=set)
    jobs_live: set[str] = field(default_factory=set)  # not finished
    jobs_existing: set[str] = field(default_factory=set)
    run_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    succeeded: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def on_job(self, kind: str, job: dict[str, Any], now: float) -> None:
        meta = job.get("metadata") or {}
        batch = (meta.get("annotations") or {}).get(ANNOTATION_BATCH)
        name = meta.get("name", "?")
        conditions = {
            c.get("type")
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        }
        complete = "Complete" in conditions
        with self.cond:
            self.jobs_seen.add(name)
            if kind == "DELETED":
                self.jobs_existing.discard(name)
            else:
                self.jobs_existing.add(name)
            if kind == "DELETED" or conditions & {"Complete", "Failed"}:
                self.jobs_live.discard(name)
            else:
                self.jobs_live.add(name)
            if batch and kind != "DELETED":
                self.job_added.setdefault(batch, now)
                if complete:
                    self.job_complete.setdefault(batch, now)
            self.cond.notify_all()

    def on_run(self, kind: str, run: dict[str, Any], _now: float) -> None:
        name = (run.get("metadata") or {}).get("name", "?")
        with self.cond:
            if kind == "DELETED":
                self.run_status.pop(name, None)
            else:
                self.run_status[name] = run.get("status") or {}
            self.cond.notify_all()

    def on_batch(self, kind: str, batch: dict[str, Any], now: float) -> None:
        name = (batch.get("metadata") or {}).get("name", "?")
        status = batch.get("status") or {}
        with self.cond:
            if kind != "DELETED" and status.get("phase") == "Succeeded":
                self.succeeded.setdefault(name, now)
            elif kind != "DELETED" and status.get("phase") == "Failed":
                self.failed[name] = f"{status.get('reason')}: {status.get('message')}"
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


@dataclass
class Phase:
    """One phase's namespace, operator, pod runner and watches, and where its clocks started."""

    namespace: str
    user: str
    api: RawApi
    operator: OperatorProcess
    runner: PodRunner
    tracker: Tracker
    cpu_before: dict[str, float]
    wall_start: float


def component_cpu() -> dict[str, float]:
    """CPU seconds so far: the control plane's components, this process, its reaped children, the machine."""
    cpu = {name: cpu_seconds(pid) for name, pid in child_processes(COMPONENTS).items()}
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu[BENCH] = me.ru_utime + me.ru_stime
    cpu[PODS] = kids.ru_utime + kids.ru_stime
    cpu[MACHINE] = machine_busy_seconds()
    return cpu


@contextmanager
def phase(plane: ControlPlane, workdir: Path, label: str) -> Iterator[Phase]:
    """A fresh namespace with the claim, the operator (own ServiceAccount), a pod runner and the watches."""
    client = plane.api_client()
    api = RawApi(client)
    namespace = f"bench-{label}-{uuid.uuid4().hex[:5]}"
    create_namespace(api, namespace)
    user = grant_operator_identity(api, namespace)
    create_claim(api, namespace, CLAIM)
    kubeconfig = plane.service_account_kubeconfig(namespace, OPERATOR_ACCOUNT, expiration_seconds=4 * 3600)
    tracker = Tracker()
    runner = PodRunner(
        plane,
        workdir / f"runner-{label}",
        namespace=namespace,
        command_map=fake_trainer_command_map,
        exposed_paths=runner_exposed_paths(),
    ).start()
    watchers = [
        Watcher(plane, JOBS_PATH.format(ns=namespace), tracker.on_job, {"labelSelector": LABEL_RUN}).start(),
        Watcher(plane, BATCHES_PATH.format(ns=namespace), tracker.on_batch).start(),
        Watcher(plane, RUNS_PATH.format(ns=namespace), tracker.on_run).start(),
    ]
    cpu_before, wall_start = component_cpu(), time.time()
    operator = OperatorProcess(namespace, kubeconfig, workdir / f"operator-{label}.log", free_port())
    try:
        operator.wait_ready()
        yield Phase(namespace, user, api, operator, runner, tracker, cpu_before, wall_start)
    finally:
        operator.stop()
        for watcher in watchers:
            watcher.stop()
        runner.stop()
        if runner.errors:
            print(f"pod runner errors ({label}):\n  " + "\n  ".join(runner.errors[:10]))
        client.close()


def reconcile_count(operator: OperatorProcess) -> float:
    return sum(v for k, v in operator.metrics().items() if k.startswith("continual_reconciles_total"))


def wait_settled(
    operator: OperatorProcess, tracker: Tracker, runs: int, window: float = 20.0, limit: float = 300.0
) -> tuple[bool, float]:
    """Wait until the operator has drained its backlog; (settled, seconds waited).

    Settled: for ``window`` seconds no trainer Job was created or deleted, and the operator reconciled at
    most twice as often as its periodic resync alone would (every run once per ``RESYNC_SECONDS``), plus 2.
    """
    started = time.monotonic()
    allowed = 2 + 2 * runs * window / RESYNC_SECONDS
    history: list[tuple[float, float, tuple[int, int]]] = []
    while time.monotonic() - started < limit:
        with tracker.cond:
            jobs = (len(tracker.jobs_seen), len(tracker.jobs_existing))  # created, still there
        now = time.monotonic()
        history.append((now, reconcile_count(operator), jobs))
        old = [h for h in history if now - h[0] >= window]
        if old:
            then = old[-1]
            if history[-1][2] == then[2] and history[-1][1] - then[1] <= allowed:
                return True, now - started
        time.sleep(1.0)
    return False, time.monotonic() - started


def _cpu_delta(before: dict[str, float], after: dict[str, float], operator_cpu: float) -> dict[str, float]:
    cpu = {k: after[k] - before.get(k, 0.0) for k in after}
    cpu[OPERATOR] = operator_cpu
    ours = sum(v for k, v in cpu.items() if k != MACHINE)
    cpu[OTHERS] = max(0.0, cpu[MACHINE] - ours)
    return cpu


def measure_work(p: Phase, audit_log: Path) -> dict[str, Any]:
    """The phase's work so far: the operator's requests (audit log), metrics, memory and CPU."""
    end = time.time()
    snapshot = p.operator.snapshot()
    cpu = _cpu_delta(p.cpu_before, component_cpu(), snapshot["cpu_s"])
    samples = [kib for _, kib in p.operator.rss_samples]
    memory = snapshot | {"rss_max_sampled_kib": max(samples, default=0), "rss_samples": len(samples)}
    return {
        "seconds": end - p.wall_start,
        "audit": count_audit(audit_log, p.user, end=end),
        "metrics": p.operator.metrics(),
        "memory": memory,
        "cpu": cpu,
        "end": end,
    }


def measure_idle(p: Phase, audit_log: Path, seconds: float) -> dict[str, Any]:
    """What the operator costs while nothing happens: ``seconds`` of requests, reconciles and CPU."""
    start, cpu_before = time.time(), component_cpu()
    operator_before, reconciles_before = p.operator.snapshot()["cpu_s"], reconcile_count(p.operator)
    time.sleep(seconds)
    end = time.time()
    operator_cpu = p.operator.snapshot()["cpu_s"] - operator_before
    return {
        "seconds": end - start,
        "audit": count_audit(audit_log, p.user, start=start, end=end),
        "reconciles": reconcile_count(p.operator) - reconciles_before,
        "cpu": _cpu_delta(cpu_before, component_cpu(), operator_cpu),
    }


# -- phase 1: latency -----------------------------------------------------------------------------------
def latency_phase(
    plane: ControlPlane, workdir: Path, audit_log: Path, n: int, timeout: float
) -> dict[str, Any]:
    with phase(plane, workdir, "latency") as p:
        run = "lat"
        p.api.create(RUNS_PATH.format(ns=p.namespace), run_manifest(run, CLAIM))
        deadline = time.monotonic() + 60
        while not (p.api.get(f"{RUNS_PATH.format(ns=p.namespace)}/{run}").get("status") or {}).get("phase"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator never reconciled run {run}:\n{p.operator.log_tail()}")
            time.sleep(0.1)
        to_job: list[float] = []
        to_job_after_return: list[float] = []
        to_success: list[float] = []
        started = time.monotonic()
        for k in range(1, n + 1):
            name = f"{run}-b{k:03d}"
            t0 = time.monotonic()
            p.api.create(BATCHES_PATH.format(ns=p.namespace), batch_manifest(name, run, k))
            t1 = time.monotonic()
            tracker = p.tracker
            if not tracker.wait(lambda name=name, t=tracker: name in t.job_added, timeout):
                raise TimeoutError(f"no Job for batch {name} after {timeout}s:\n{p.operator.log_tail()}")
            to_job.append(tracker.job_added[name] - t0)
            to_job_after_return.append(tracker.job_added[name] - t1)
            if not tracker.wait(
                lambda name=name, t=tracker: name in t.succeeded or name in t.failed, timeout
            ):
                raise TimeoutError(f"batch {name} did not finish in {timeout}s:\n{p.operator.log_tail()}")
            if name in tracker.failed:
                raise RuntimeError(f"batch {name} failed: {tracker.failed[name]}")
            to_success.append(tracker.succeeded[name] - t0)
            if k % 10 == 0 or k == n:
                print(f"  latency: {k}/{n} batches, last create->Job {to_job[-1] * 1000:.0f} ms", flush=True)
        wall = time.monotonic() - started
        settled, waited = wait_settled(p.operator, p.tracker, runs=1, window=5.0)
        work = measure_work(p, audit_log)
    return {
        "batches": n,
        "wall_s": wall,
        "settled": settled,
        "settle_wait_s": waited,
        "create_to_job_ms": summary_ms(to_job),
        "create_returned_to_job_ms": summary_ms(to_job_after_return),
        "create_to_succeeded_ms": summary_ms(to_success),
        "work": work,
    }


# -- phase 2: scale -------------------------------------------------------------------------------------
def scale_phase(
    plane: ControlPlane,
    workdir: Path,
    audit_log: Path,
    runs: int,
    per_run: int,
    *,
    timeout: float,
    workers: int,
    idle_seconds: float,
    max_batches_per_job: int | None = None,
    pods_after_burst: bool = False,
) -> dict[str, Any]:
    with phase(plane, workdir, "scale") as p:
        tracker = p.tracker
        names = [f"r{i:03d}" for i in range(runs)]
        batch_names = [[f"{run}-b{k}" for k in range(1, per_run + 1)] for run in names]
        total = runs * per_run
        created_at: dict[str, float] = {}

        def create_run(run: str) -> None:
            manifest = run_manifest(run, CLAIM)
            if max_batches_per_job is not None:
                manifest["spec"]["training"] = {"maxBatchesPerJob": max_batches_per_job}
            p.api.create(RUNS_PATH.format(ns=p.namespace), manifest)

        def create_batch(item: tuple[str, str, int]) -> None:
            batch, run, order = item
            created_at[batch] = time.monotonic()
            p.api.create(BATCHES_PATH.format(ns=p.namespace), batch_manifest(batch, run, order))

        if pods_after_burst:
            p.runner.hold()  # a full node: the trainers start once every run's first Job exists
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(create_run, names))
            # First batches of every run first, then the second ones, ...
            items = [(batch_names[i][k], names[i], k + 1) for k in range(per_run) for i in range(runs)]
            list(pool.map(create_batch, items))
        create_seconds = time.monotonic() - started
        print(f"  scale: created {runs} runs and {total} batches in {create_seconds:.1f}s", flush=True)
        held_s = None
        if pods_after_burst:
            tracker.wait(lambda: all(chain[0] in tracker.job_added for chain in batch_names), timeout)
            held_s = time.monotonic() - started
            p.runner.release()
            print(f"  scale: pods held until t={held_s:.1f}s (every run's first Job created)", flush=True)

        deadline = started + timeout
        next_report = time.monotonic() + 10
        rss_curve: list[tuple[float, int, float]] = []
        done = False
        while time.monotonic() < deadline:
            done = tracker.wait(lambda: len(tracker.succeeded) + len(tracker.failed) >= total, 1.0)
            if done or p.operator.process.poll() is not None:
                break
            if time.monotonic() >= next_report:
                next_report += 10
                snap = p.operator.snapshot()
                with tracker.cond:
                    ok, bad, jobs, live = (
                        len(tracker.succeeded),
                        len(tracker.failed),
                        len(tracker.job_added),
                        len(tracker.jobs_live),
                    )
                rss_curve.append((time.monotonic() - started, ok, snap["rss_kib"] / 1024))
                print(
                    f"  scale: t={time.monotonic() - started:5.0f}s  succeeded {ok}/{total}  failed {bad}  "
                    f"batches with a Job {jobs}  unfinished Jobs {live}  operator RSS {snap['rss_kib'] / 1024:.0f} MiB  "
                    f"CPU {snap['cpu_s']:.0f}s",
                    flush=True,
                )
        wall = (
            (max(tracker.succeeded.values()) - started) if tracker.succeeded else time.monotonic() - started
        )
        list_bytes = len(json.dumps(p.api.get(BATCHES_PATH.format(ns=p.namespace))))
        # The work is over when the operator has caught up: every run Idle with all its batches counted.
        caught_up = tracker.wait(
            lambda: (
                len(tracker.run_status) == runs
                and all(
                    st.get("phase") == "Idle" and st.get("batchesCompleted") == per_run
                    for st in tracker.run_status.values()
                )
            ),
            max(60.0, deadline - time.monotonic()),
        )
        caught_up_s = time.monotonic() - started
        with tracker.cond:
            jobs_left = len(tracker.jobs_existing)
        print(
            f"  scale: operator caught up at t={caught_up_s:.0f}s (every run Idle; {jobs_left} Jobs kept)"
            if caught_up
            else f"  scale: operator did NOT catch up ({jobs_left} Jobs left)",
            flush=True,
        )
        settled, _ = wait_settled(p.operator, tracker, runs)
        settled_s = time.monotonic() - started
        print(
            f"  scale: operator {'settled' if settled else 'did NOT settle'} at t={settled_s:.0f}s "
            f"(backlog drained: no Job created or deleted and few reconciles for 20 s)",
            flush=True,
        )
        work = measure_work(p, audit_log)
        idle = None
        if idle_seconds > 0:
            print(f"  scale: measuring {idle_seconds:.0f}s of idle operator", flush=True)
            idle = measure_idle(p, audit_log, idle_seconds)

    first_job = [tracker.job_added[b[0]] - created_at[b[0]] for b in batch_names if b[0] in tracker.job_added]
    handoff = []
    for chain in batch_names:
        for prev, nxt in itertools.pairwise(chain):
            if prev in tracker.job_complete and nxt in tracker.job_added:
                ready = max(tracker.job_complete[prev], created_at[nxt])
                handoff.append(tracker.job_added[nxt] - ready)
    return {
        "runs": runs,
        "batches_per_run": per_run,
        "batches": total,
        "succeeded": len(tracker.succeeded),
        "failed": dict(list(tracker.failed.items())[:5]),
        "failed_count": len(tracker.failed),
        "finished": done,
        "create_s": create_seconds,
        "pods_held_s": held_s,
        "wall_s": wall,
        "caught_up": caught_up,
        "caught_up_s": caught_up_s,
        "jobs_left": jobs_left,
        "settled": settled,
        "settled_s": settled_s,
        "first_batch_create_to_job_ms": summary_ms(first_job),
        "handoff_ms": summary_ms(handoff),
        "batch_list_bytes": list_bytes,
        "rss_curve": rss_curve,
        "work": work,
        "idle": idle,
    }


# -- report ---------------------------------------------------------------------------------------------
def _latency_row(label: str, stats: dict[str, float]) -> str:
    if not stats:
        return f"  {label:<44} (no samples)"
    return (
        f"  {label:<44} {stats['n']:>5.0f} {stats['p50']:>8.0f} {stats['p90']:>8.0f} {stats['p99']:>8.0f} "
        f"{stats['max']:>8.0f} {stats['mean']:>8.0f}"
    )


def _latency_header() -> str:
    return f"  {'ms':<44} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}"


def _metric(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def _cpu_line(cpu: dict[str, float], seconds: float) -> str:
    parts = [f"{k} {v:.1f}" for k, v in cpu.items() if k not in {MACHINE, OTHERS}]
    return (
        ", ".join(parts)
        + f"; machine busy {cpu[MACHINE]:.1f} of {seconds * (os.cpu_count() or 1):.0f} available, "
        f"other processes on the machine {cpu[OTHERS]:.1f}"
    )


def _requests_table(counts: AuditCounts, per: float, per_label: str) -> None:
    print(f"    {'verb':<8} {'resource':<42} {'count':>7} {per_label:>10}")
    for (verb, res), count in sorted(counts.by_verb_resource.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {verb:<8} {res:<42} {count:>7} {count / per:>10.2f}")
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(counts.by_code.items()))
    print(f"    response codes: {codes}")
    if counts.errors:
        print(
            "    non-2xx: " + ", ".join(f"{v} {r} {c}: {n}" for (v, r, c), n in counts.errors.most_common())
        )


def print_work(work: dict[str, Any], batches: int) -> None:
    counts: AuditCounts = work["audit"]
    metrics, memory, cpu = work["metrics"], work["memory"], work["cpu"]
    reconciles = _metric(metrics, "continual_reconciles_total")
    seconds = _metric(metrics, "continual_reconcile_duration_seconds_sum")
    print(
        f"  operator memory: peak RSS (VmHWM) {memory['hwm_kib'] / 1024:.1f} MiB, RSS at the end "
        f"{memory['rss_kib'] / 1024:.1f} MiB ({memory['rss_samples']} samples, max "
        f"{memory['rss_max_sampled_kib'] / 1024:.1f} MiB)"
    )
    print(
        f"  operator CPU: {memory['cpu_s']:.1f} s ({memory['cpu_s'] / batches * 1000:.0f} ms per batch); "
        f"reconciles {reconciles:.0f} ({reconciles / batches:.1f} per batch, mean duration "
        f"{seconds / max(reconciles, 1) * 1000:.0f} ms); Jobs created {_metric(metrics, 'continual_jobs_created_total'):.0f}"
    )
    print(f"  CPU seconds in {work['seconds']:.0f} s: " + _cpu_line(cpu, work["seconds"]))
    print(
        f"  API requests by the operator (audit log, user {OPERATOR_ACCOUNT}), from its start until it settled: "
        f"{counts.total} = {counts.total / batches:.1f} per batch"
    )
    _requests_table(counts, batches, "per batch")


def print_idle(idle: dict[str, Any], runs: int) -> None:
    counts: AuditCounts = idle["audit"]
    seconds = idle["seconds"]
    minute = 60 / seconds
    print(
        f"  idle operator (settled, nothing to do but its periodic resync) for {seconds:.0f} s: {counts.total} requests "
        f"({counts.total * minute:.0f}/min, {counts.total * minute / max(runs, 1):.2f}/min per run), "
        f"{idle['reconciles']:.0f} reconciles"
    )
    print("  CPU seconds while idle: " + _cpu_line(idle["cpu"], seconds))
    _requests_table(counts, seconds / 60, "per min")


def print_header(plane: ControlPlane) -> None:
    print(
        f"operator benchmark: Kubernetes 1.20 control plane from {plane.assets}, {os.cpu_count()} CPUs, "
        f"fake trainer ({FAKE_TRAINER.name}), operator as its own ServiceAccount (cluster-admin); "
        f"load average at the start {_load_average()}"
    )


def _load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def print_latency(lat: dict[str, Any]) -> None:
    print()
    print(
        f"1. Latency, TrainingBatch create -> Job exists (one run, {lat['batches']} batches one after another, "
        "client-side watch)"
    )
    print(_latency_header())
    print(_latency_row("create sent -> Job ADDED event", lat["create_to_job_ms"]))
    print(_latency_row("create returned -> Job ADDED event", lat["create_returned_to_job_ms"]))
    print(_latency_row("create sent -> batch Succeeded (whole cycle)", lat["create_to_succeeded_ms"]))
    print_work(lat["work"], lat["batches"])


def print_scale(args: argparse.Namespace, sc: dict[str, Any]) -> None:
    print()
    print(
        f"2. Scale: {sc['runs']} runs x {sc['batches_per_run']} batches = {sc['batches']} batches, one claim, "
        f"progress reporting off, all created at once (load average at its end {sc.get('load_average', '?')})"
    )
    if sc.get("pods_held_s") is not None:
        print(
            f"  --pods-after-burst: no trainer pod started until every run's first Job existed, "
            f"t = {sc['pods_held_s']:.1f} s (the operator's burst without the trainers on the same cores)"
        )
    status = "all Succeeded" if sc["finished"] and not sc["failed_count"] else "NOT FINISHED"
    print(
        f"  {status}: {sc['succeeded']} succeeded, {sc['failed_count']} failed; created in {sc['create_s']:.1f} s; "
        f"wall time first create -> last Succeeded {sc['wall_s']:.1f} s "
        f"({sc['wall_s'] / max(sc['batches'], 1) * 1000:.0f} ms per batch, {sc['batches'] / max(sc['wall_s'], 1e-9):.2f} batches/s)"
    )
    print(
        f"  the operator caught up (every run Idle, all its batches counted) at {sc['caught_up_s']:.1f} s; "
        f"{sc['jobs_left']} finished Jobs left (it keeps {FINISHED_JOBS_KEPT} per run)"
        if sc["caught_up"]
        else "  the operator did NOT catch up (runs not Idle) before the timeout"
    )
    print(
        f"  it settled (backlog drained: old Jobs deleted, reconciles down to the resync rate) at {sc['settled_s']:.1f} s"
        if sc["settled"]
        else f"  it did NOT settle within 300 s of catching up (t={sc['settled_s']:.0f} s)"
    )
    if sc["failed"]:
        print(f"  failures (first 5): {sc['failed']}")
    print(_latency_header())
    print(_latency_row("first batch of a run: create -> Job", sc["first_batch_create_to_job_ms"]))
    print(_latency_row("next batch: previous Job Complete -> next Job", sc["handoff_ms"]))
    print_work(sc["work"], sc["batches"])
    print(
        f"  kube-apiserver CPU per batch: {_apiserver_cpu_per_batch(sc) * 1000:.0f} ms (from /proc/<pid>/stat)"
    )
    print(
        f"  one LIST of the namespace's TrainingBatches at the end: {sc['batch_list_bytes'] / 1024:.0f} KiB "
        "(the operator used to list them all on every reconcile of any run; now it reads its watch-fed view)"
    )
    if sc["idle"]:
        print_idle(sc["idle"], sc["runs"])
    if (sc["runs"], sc["batches_per_run"]) != (args.target_runs, args.target_batches):
        target = args.target_runs * args.target_batches
        counts: AuditCounts = sc["work"]["audit"]
        print(
            f"  extrapolation to {args.target_runs} x {args.target_batches} = {target} batches, linear in batches "
            f": requests ~{counts.total / sc['batches'] * target:.0f}, "
            f"wall ~{sc['wall_s'] / sc['batches'] * target:.0f} s"
        )


# -- goals (issue 11) against the numbers before the watch-fed view (docs/benchmarks.md) ----------------
#: what -> (goal, the number before); goals are met at or below the goal, except those in AT_LEAST.
BEFORE = {
    "requests per batch, 200 x 5": (8.0, 25.9),
    "operator peak RSS, 200 x 5 (MiB)": (150.0, 437.0),
    "API-server CPU per batch, 200 runs / 50 runs": (1.3, 0.82 / 0.30),
    "first batch -> Job p50 under load, 200 x 5 (s)": (2.0, 24.6),
    "idle operator, 200 runs (requests/min)": (20.0, 438.0),
    "operator peak RSS, 1000 x 1 (MiB)": (300.0, float("nan")),
    "1000 x 1 completes (share of batches Succeeded)": (1.0, float("nan")),
}
#: Goals met at or above the goal.
AT_LEAST = frozenset({"1000 x 1 completes (share of batches Succeeded)"})


def _scale(results: dict[str, Any], runs: int, per_run: int) -> dict[str, Any] | None:
    return next(
        (s for s in results.get("scales", []) if (s["runs"], s["batches_per_run"]) == (runs, per_run)), None
    )


def _apiserver_cpu_per_batch(sc: dict[str, Any]) -> float:
    return float(sc["work"]["cpu"].get("kube-apiserver", 0.0)) / max(sc["batches"], 1)


def goal_numbers(results: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Each goal's measured number (None: its set-up was not run) and the set-up it was measured on."""
    measured: dict[str, tuple[float | None, str]] = {}
    big, small, wide = _scale(results, 200, 5), _scale(results, 50, 5), _scale(results, 1000, 1)
    # Without the goal's own set-up, the largest scale phase run stands in (and says so).
    fallback = max(results.get("scales", []), key=lambda s: s["batches"], default=None)
    main = big or fallback
    where = f"{main['runs']} x {main['batches_per_run']}" if main else "-"
    if main is not None and main.get("pods_held_s") is not None:
        where += ", trainer pods held during the burst (--pods-after-burst: not the goals' set-up)"
    if main is not None:
        counts: AuditCounts = main["work"]["audit"]
        measured["requests per batch, 200 x 5"] = (counts.total / max(main["batches"], 1), where)
        measured["operator peak RSS, 200 x 5 (MiB)"] = (main["work"]["memory"]["hwm_kib"] / 1024, where)
        p50 = main["first_batch_create_to_job_ms"].get("p50")
        measured["first batch -> Job p50 under load, 200 x 5 (s)"] = (
            p50 / 1000 if p50 is not None else None,
            where,
        )
        idle_phase = big if big is not None and big["idle"] else main
        if idle_phase["idle"]:
            idle = idle_phase["idle"]
            measured["idle operator, 200 runs (requests/min)"] = (
                idle["audit"].total * 60 / idle["seconds"],
                f"{idle_phase['runs']} idle runs, {idle['seconds']:.0f} s",
            )
    if big is not None and small is not None:
        ratio = _apiserver_cpu_per_batch(big) / max(_apiserver_cpu_per_batch(small), 1e-9)
        measured["API-server CPU per batch, 200 runs / 50 runs"] = (ratio, "200 x 5 / 50 x 5")
    if wide is not None:
        measured["operator peak RSS, 1000 x 1 (MiB)"] = (wide["work"]["memory"]["hwm_kib"] / 1024, "1000 x 1")
        done = wide["succeeded"] / max(wide["batches"], 1) if wide["caught_up"] else 0.0
        measured["1000 x 1 completes (share of batches Succeeded)"] = (
            done,
            f"1000 x 1, {wide['succeeded']} Succeeded, caught up: {wide['caught_up']}",
        )
    return measured


def print_goals(results: dict[str, Any]) -> None:
    measured = goal_numbers(results)
    print()
    print(
        "Goals (issue 11), measured here, against the numbers before the watch-fed view (docs/benchmarks.md):"
    )
    print(f"  {'goal':<50} {'goal':>7} {'measured':>9} {'before':>8} {'ratio':>7}  {'':<5} set-up")
    for what, (goal, before) in BEFORE.items():
        value, where = measured.get(what, (None, "not run (see --scales)"))
        if value is None:
            print(f"  {what:<50} {goal:>7.1f} {'-':>9} {before:>8.2f} {'-':>7}  {'':<5} {where}")
            continue
        ratio = value / before if not math.isnan(before) else float("nan")  # nan: never measured before
        met = "met" if (value >= goal if what in AT_LEAST else value <= goal) else "MISS"
        print(f"  {what:<50} {goal:>7.1f} {value:>9.2f} {before:>8.2f} {ratio:>7.2f}  {met:<5} {where}")


def _jsonable(value: object) -> object:
    if isinstance(value, AuditCounts):
        return {
            "total": value.total,
            "by_verb_resource": {f"{v} {r}": n for (v, r), n in value.by_verb_resource.items()},
            "by_code": {str(c): n for c, n in value.by_code.items()},
            "errors": {f"{v} {r} {c}": n for (v, r, c), n in value.errors.items()},
        }
    return str(value)


def _parse_scales(text: str) -> list[tuple[int, int]]:
    """``50x5,200x5`` as ``[(50, 5), (200, 5)]``."""
    try:
        return [(int(r), int(b)) for r, b in (item.strip().split("x") for item in text.split(",") if item)]
    except ValueError:
        raise SystemExit(
            f"--scales {text!r}: give RUNSxBATCHES items separated by commas, e.g. 50x5,200x5"
        ) from None


def _idle_phase(scales: list[tuple[int, int]], target: tuple[int, int]) -> tuple[int, int] | None:
    """The one scale phase after which the idle operator is measured: the goal's set-up (200 x 5) if it
    runs, else the largest (the idle measure does not depend on the other set-ups, and costs a minute)."""
    if target in scales:
        return target
    return max(scales, key=lambda s: s[0] * s[1], default=None)


def phase_done(args: argparse.Namespace, results: dict[str, Any], section: Callable[[], None]) -> None:
    """A phase ended: print its section and the goals so far, and write the results (--json) at once, so
    that a run cut off later still reports what it measured."""
    section()
    print_goals(results)
    sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(results, default=_jsonable, indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs of the scale phase (0: skip it)")
    parser.add_argument("--batches", type=int, default=5, help="batches per run in the scale phase")
    parser.add_argument(
        "--latency-batches", type=int, default=50, help="batches of the latency phase (0: skip it)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="bound on the scale phase's wait, seconds")
    parser.add_argument(
        "--create-workers", type=int, default=4, help="parallel create requests of the scale phase"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=60, help="then measure the idle operator this long (0: skip)"
    )
    parser.add_argument(
        "--scales",
        help="several scale phases, e.g. 50x5,200x5,1000x1 (all the goals' set-ups); overrides --runs/--batches",
    )
    parser.add_argument(
        "--max-batches-per-job",
        type=int,
        help="spec.training.maxBatchesPerJob of the scale phase's runs (default: the API's, 4; 1: one Job per batch)",
    )
    parser.add_argument(
        "--pods-after-burst",
        action="store_true",
        help="start no trainer pod until every run's first Job exists (the operator's burst without the "
        "trainers on the same cores; not the goals' set-up)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, audit log)")
    args = parser.parse_args()
    args.target_runs, args.target_batches = 200, 5

    try:
        assets = assets_from_env()
    except AssetsMissingError as error:
        print(f"operator_scale: skipped, no control plane: {error}")
        return 0
    if reason := probe():
        print(f"operator_scale: skipped, the pod runner cannot run pods here: {reason}")
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="ct-operator-scale-"))
    flags, audit_log = audit_args(workdir)
    plane = ControlPlane(assets, workdir / "control-plane", crd_folders=[REPO / "crds"], apiserver_args=flags)
    (workdir / "control-plane").mkdir()
    print(f"starting the control plane (working folder {workdir}) ...", flush=True)
    plane.start()
    print(f"control plane up in {plane.startup_seconds:.1f}s at {plane.server}", flush=True)
    results: dict[str, Any] = {}
    print_header(plane)
    try:
        if args.latency_batches > 0:
            print(f"phase 1: latency, {args.latency_batches} batches one after another", flush=True)
            results["latency"] = latency_phase(plane, workdir, audit_log, args.latency_batches, timeout=120)
            phase_done(args, results, lambda: print_latency(results["latency"]))
        scales = _parse_scales(args.scales) if args.scales else [(args.runs, args.batches)]
        scales = [(r, b) for r, b in scales if r > 0 and b > 0]
        idle_at = _idle_phase(scales, (args.target_runs, args.target_batches))
        results["scales"] = []
        for runs, per_run in scales:
            print(f"phase 2: scale, {runs} runs x {per_run} batches", flush=True)
            sc = scale_phase(
                plane,
                workdir,
                audit_log,
                runs,
                per_run,
                timeout=args.timeout,
                workers=args.create_workers,
                idle_seconds=args.idle_seconds if (runs, per_run) == idle_at else 0.0,
                max_batches_per_job=args.max_batches_per_job,
                pods_after_burst=args.pods_after_burst,
            )
            sc["load_average"] = _load_average()
            results["scales"].append(sc)
            phase_done(args, results, functools.partial(print_scale, args, sc))
        print()
        print("=" * 100)
        print("all phases done")
        print_goals(results)
        print("=" * 100)
    finally:
        plane.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
