"""What the operator keeps in memory: only the other runs that may share a run's folder are parsed; the
watch-fed view keeps of pods and Jobs every field a reconcile reads and nothing much else, its strings
shared; the opt-in memory profile says where the memory goes.

Parsing every run of the namespace in every reconcile (reconciles run concurrently, one per run) made
the operator's memory and CPU grow with the square of the runs (docs/benchmarks.md). The cheap test on
the raw object must never drop a run that is on the folder: the folder decision (one run per folder)
depends on it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kopf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kube_world import NS, run_body

from continual_operator.api import ContinualTrainingRun, ObjectMeta
from continual_operator.cluster.executor import ClusterExecutor, _outcome_not_seen
from continual_operator.cluster.handlers import index_run, run_of_job
from continual_operator.cluster.k8s import Subject
from continual_operator.cluster.reconciler import _other_runs
from continual_operator.cluster.view import WatchView, folder_key, slim
from continual_operator.observe import memory
from continual_operator.planning.refusals import volume_key
from continual_operator.workloads.registry import job_views

SUB_PATHS = [None, "", ".", "./", "runs/a", "runs/a/", "./runs/a", "runs//a", "runs/a/.", "runs/b", "a"]
CLAIMS = ["demo-data", "other-data"]


@st.composite
def raw_runs(draw: st.DrawFn) -> dict[str, Any]:
    """A stored run: an existing claim or a claim template, any spelling of a subPath, maybe trained."""
    storage: dict[str, Any] = (
        {"claimTemplate": {"size": "1Gi"}}
        if draw(st.booleans())
        else {"existingClaim": draw(st.sampled_from(CLAIMS))}
    )
    if (sub_path := draw(st.sampled_from(SUB_PATHS))) is not None:
        storage["subPath"] = sub_path
    status: dict[str, Any] = {}
    if draw(st.booleans()):  # trained: the folder it trained in is what counts
        recorded = {"claim": draw(st.sampled_from(CLAIMS))}
        if (recorded_path := draw(st.sampled_from(SUB_PATHS))) is not None:
            recorded["subPath"] = recorded_path
        status["trainedWith"] = {"baseModel": {"path": "models/tiny"}, "lora": {}, "storage": recorded}
    return run_body(draw(st.sampled_from(["r1", "r2"])), storage=storage, status=status)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)  # CI's 2 loaded cores
@given(raw_runs())
def test_the_cheap_folder_test_never_drops_a_run_that_is_on_the_folder(raw: dict[str, Any]) -> None:
    run = ContinualTrainingRun.model_validate(raw)
    (parsed,) = _other_runs([raw], "someone-else", volume_key(run))
    assert volume_key(parsed) == volume_key(run)
    # The watch-fed view indexes the run under that folder: a reconcile's folder check finds it there.
    keys = asyncio.run(index_run(body=raw, namespace=NS, name=run.metadata.name, memo=kopf.Memo()))
    assert keys[folder_key(NS, volume_key(run))] == slim("ContinualTrainingRun", raw)
    view = WatchView(runs={k: [v] for k, v in keys.items()}, batches={}, jobs={}, pods={})
    assert view.folder_runs(NS, volume_key(run)) == [slim("ContinualTrainingRun", raw)]
    assert view.folder_runs(NS, ("no-such-claim", "")) == []


def test_a_reconcile_parses_only_the_runs_that_may_share_its_folder() -> None:
    raws = [
        run_body(f"r{i:03d}", storage={"existingClaim": "demo-data", "subPath": f"runs/r{i:03d}"})
        for i in range(200)
    ]
    raws.append(run_body("twin", storage={"existingClaim": "demo-data", "subPath": "./runs/r007/"}))
    others = _other_runs(raws, "r007", ("demo-data", "runs/r007"))
    assert [o.metadata.name for o in others] == ["twin"]


def test_the_memory_profile_is_off_by_default_and_reports_where_the_memory_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(memory.PROFILE_ENV, raising=False)
    with memory.profiled_from_environment() as profiler:
        assert profiler is None
        assert not tracemalloc.is_tracing()
    path = tmp_path / "profile.txt"
    monkeypatch.setenv(memory.PROFILE_ENV, str(path))
    monkeypatch.setenv(memory.PROFILE_SECONDS_ENV, "3600")
    with memory.profiled_from_environment() as profiler:
        assert profiler is not None
        kept = _allocate_a_lot()
    assert not tracemalloc.is_tracing()
    text = path.read_text()
    assert re.match(r"time \S+  RSS [\d.]+ MiB  peak RSS [\d.]+ MiB  threads \d+", text)
    # The largest live allocation is this test's 8 MiB, named by its traceback (file:line).
    blocks = text.split("allocations alive, by traceback")[1].split("\n\n")[0]
    size, frames = re.findall(r"\n +([\d.]+) MiB in +\d+ blocks\n((?: {6}.*\n?)+)", blocks)[0]
    assert float(size) >= 5
    assert f"{__file__}:" in frames
    assert len(kept) == 8 * 2**20


def _allocate_a_lot() -> bytearray:
    return bytearray(8 * 2**20)


def test_a_memory_profile_interval_that_is_not_a_number_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(memory.PROFILE_ENV, str(tmp_path / "p.txt"))
    monkeypatch.setenv(memory.PROFILE_SECONDS_ENV, "soon")
    with pytest.raises(SystemExit, match=memory.PROFILE_SECONDS_ENV):
        memory.MemoryProfiler.from_environment()


# -- what the view keeps of pods and Jobs -----------------------------------------------------------------
WATCHED = json.loads((Path(__file__).parent / "testdata" / "watched-objects.json").read_text())
WAITING = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}}
OOM = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-01T20:27:00Z"}}


def _pod(
    *, state: dict[str, Any] | None = None, last: dict[str, Any] | None = None, **status: Any
) -> dict[str, Any]:
    """The watched pod in another state (its container's state and lastState, pod status fields)."""
    pod = copy.deepcopy(WATCHED["pod_terminated"])
    container = pod["status"]["containerStatuses"][0]
    if state is not None:
        container["state"] = state
    if last is not None:
        container["lastState"] = last
    for key, value in status.items():
        if key == "extraConditions":
            pod["status"]["conditions"] += value
        elif key == "deletionTimestamp":
            pod["metadata"][key] = value
        else:
            pod["status"][key] = value
    return pod


def _job(name: str, **changes: Any) -> dict[str, Any]:
    job = copy.deepcopy(WATCHED[name])
    for key, value in changes.items():
        section, _, field = key.partition("_")
        job[section][field] = value
    return job


PODS = [
    _pod(),
    _pod(state={"running": {"startedAt": "2026-12-01T20:26:20Z"}}, phase="Running"),
    _pod(state=WAITING, phase="Pending"),
    _pod(
        state={"waiting": {"reason": "ContainerCreating"}},
        phase="Pending",
        extraConditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
        ],
    ),
    _pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory."),
    _pod(state=OOM, phase="Failed"),
    _pod(state={"running": {}}, last=OOM, phase="Running"),
    _pod(
        phase="Failed",
        extraConditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}],
    ),
    _pod(state={"running": {}}, phase="Running", deletionTimestamp="2026-12-01T20:30:00Z"),
]
FAILED = [
    {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer"}
]
JOBS = [
    _job("job_complete"),
    _job("job_active"),
    _job("job_complete", status_conditions=FAILED),
    _job("job_active", spec_suspend=True),
    _job("job_active", metadata_deletionTimestamp="2026-12-01T20:30:00Z"),
    _job("job_active", status_startTime="2026-12-01T20:27:00Z"),
]


class _Recorded(dict[str, Any]):
    """A dict that notes every key path read from it (lists: ``*`` for any element)."""

    def __init__(self, value: Mapping[str, Any], path: tuple[str, ...], reads: set[tuple[str, ...]]) -> None:
        super().__init__(value)
        self._path, self._reads = path, reads

    def _read(self, key: str, value: Any) -> Any:
        self._reads.add((*self._path, key))
        return _recorded(value, (*self._path, key), self._reads)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._read(key, super().get(key, default))

    def __getitem__(self, key: str) -> Any:
        return self._read(key, super().__getitem__(key))

    def items(self) -> Any:  # type: ignore[override]
        return [(k, self._read(k, v)) for k, v in super().items()]

    def values(self) -> Any:  # type: ignore[override]
        return [v for _, v in self.items()]


def _recorded(value: Any, path: tuple[str, ...], reads: set[tuple[str, ...]]) -> Any:
    if isinstance(value, Mapping):
        return _Recorded(value, path, reads)
    if isinstance(value, list):
        return [_recorded(v, (*path, "*"), reads) for v in value]
    return value


def _at(value: Any, path: tuple[str, ...]) -> list[Any]:
    """Every value at ``path`` (``*``: each element of a list); missing steps give nothing."""
    if not path:
        return [value]
    head, rest = path[0], path[1:]
    if head == "*":
        return [v for item in value for v in _at(item, rest)] if isinstance(value, list) else []
    if isinstance(value, Mapping) and head in value:
        return _at(value[head], rest)
    return []


def _reads(
    jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """The key paths the workload kinds and the cluster executor read from these Jobs and pods."""
    job_reads: set[tuple[str, ...]] = set()
    pod_reads: set[tuple[str, ...]] = set()
    recorded_jobs = [_Recorded(j, (), job_reads) for j in jobs]
    recorded_pods = [_Recorded(p, (), pod_reads) for p in pods]
    for view in job_views(recorded_jobs, recorded_pods):
        _outcome_not_seen(view, recorded_pods)
    for body in (*recorded_jobs, *recorded_pods):
        run_of_job(body)
    return job_reads, pod_reads


@pytest.mark.parametrize("pod", PODS, ids=range(len(PODS)))
@pytest.mark.parametrize("job", JOBS, ids=range(len(JOBS)))
def test_the_view_keeps_every_field_of_pods_and_jobs_that_a_reconcile_reads(
    job: dict[str, Any], pod: dict[str, Any]
) -> None:
    job_reads, pod_reads = _reads([job], [pod])
    assert pod_reads and job_reads  # the reads were recorded (states, conditions, labels, owners)
    for body, kind, reads in ((job, "Job", job_reads), (pod, "Pod", pod_reads)):
        kept = slim(kind, body)
        # The ends of what was read (``spec`` read on the way to ``spec.suspend`` is not a read of the spec).
        leaves = {p for p in reads if not any(len(q) > len(p) and q[: len(p)] == p for q in reads)}
        for path in leaves:
            assert _at(kept, path) == _at(body, path), f"{kind} {'.'.join(path)} is read but not kept"
    assert job_views([slim("Job", job)], [slim("Pod", pod)]) == job_views([job], [pod])


def test_the_view_drops_what_no_reconcile_reads_and_shares_its_strings() -> None:
    pod, job = slim("Pod", PODS[0]), slim("Job", JOBS[0])
    assert "managedFields" not in pod["metadata"] and "spec" not in pod and "template" not in job["spec"]
    assert not {"hostIP", "podIP", "podIPs", "qosClass"} & set(pod["status"])
    assert not {"image", "imageID", "containerID"} & set(pod["status"]["containerStatuses"][0])
    again = slim("Pod", json.loads(json.dumps(PODS[0])))  # parsed afresh, as every watch event is
    assert again["metadata"]["labels"]["continual.dev/run"] is pod["metadata"]["labels"]["continual.dev/run"]
    assert _held(lambda: [slim("Pod", json.loads(json.dumps(PODS[0]))) for _ in range(50)]) < 0.5 * _held(
        lambda: [json.loads(json.dumps(PODS[0])) for _ in range(50)]
    )


def _held(make: Callable[[], Any]) -> int:
    """Bytes still allocated by what ``make`` returns (held while measured)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make()
        return tracemalloc.get_traced_memory()[0] - before + 0 * len(kept)
    finally:
        tracemalloc.stop()


def test_a_memory_profile_without_tracing_reports_the_rss_and_the_census_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "profile.txt"
    monkeypatch.setenv(memory.PROFILE_ENV, str(path))
    monkeypatch.setenv(memory.PROFILE_FRAMES_ENV, "0")
    with memory.profiled_from_environment():
        assert not tracemalloc.is_tracing()
        kept = [[None] * 1000 for _ in range(3000)]  # 24 MiB of lists: the largest type
    text = path.read_text()
    assert "allocations alive" not in text
    count, largest = re.findall(r"\n +(\d+) +[\d.]+ MiB  (\S+)", text)[0]
    assert (largest, int(count) >= len(kept)) == ("list", True)


class _Pods:
    """The one call the executor makes when the view's pods cannot tell a finished Job's result."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods, self.lists = pods, 0

    async def list_pods(self, namespace: str, run: str) -> list[dict[str, Any]]:
        self.lists += 1
        return self.pods


@pytest.mark.parametrize(
    ("viewed", "lists"),
    [
        pytest.param([], 1, id="pod-not-delivered-yet"),
        pytest.param([PODS[1]], 1, id="pod-still-running-in-the-view"),
        pytest.param([PODS[0]], 0, id="pod-ended-in-the-view"),
    ],
)
async def test_a_finished_job_is_read_with_its_pod_even_when_the_pod_watch_lags(
    viewed: list[dict[str, Any]], lists: int
) -> None:
    """Under load the pod watch lags the Job watch: a complete Job whose pod the view does not hold yet was
    read without a result and retried (NoResult), as benchmarks/operator_scale.py --scales 1000x1 showed."""
    storage = _Pods([PODS[0]])
    job = JOBS[0]
    meta = ObjectMeta(name=job["metadata"]["annotations"]["continual.dev/run"], namespace="ns")
    executor = ClusterExecutor(
        storage, Subject(meta), seen=([slim("Job", job)], [slim("Pod", p) for p in viewed])
    )  # type: ignore[arg-type]
    (view,) = await executor.workloads()
    assert (view.phase, view.exit_code, storage.lists) == ("Succeeded", 0, lists)
    assert view.termination_message and '"outcome":"Succeeded"' in view.termination_message
