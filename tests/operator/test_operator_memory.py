"""What the operator keeps in memory: only the other runs that may share a run's folder are parsed; the
opt-in memory profile says where the memory goes.

Parsing every run of the namespace in every reconcile (reconciles run concurrently, one per run) made
the operator's memory and CPU grow with the square of the runs (docs/benchmarks.md). The cheap test on
the raw object must never drop a run that is on the folder: the folder decision (one run per folder)
depends on it.
"""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kube_world import run_body

from continual_operator.api import ContinualTrainingRun
from continual_operator.cluster.reconciler import _other_runs
from continual_operator.observe import memory
from continual_operator.planning.refusals import volume_key

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


@given(raw_runs())
def test_the_cheap_folder_test_never_drops_a_run_that_is_on_the_folder(raw: dict[str, Any]) -> None:
    run = ContinualTrainingRun.model_validate(raw)
    (parsed,) = _other_runs([raw], "someone-else", volume_key(run))
    assert volume_key(parsed) == volume_key(run)


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
    assert "live objects tracked by gc, by type" in text
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
