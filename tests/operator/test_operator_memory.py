"""What a reconcile keeps in memory: only the other runs that may share its folder are parsed.

Parsing every run of the namespace in every reconcile (reconciles run concurrently, one per run) made
the operator's memory and CPU grow with the square of the runs (docs/benchmarks.md). The cheap test on
the raw object must never drop a run that is on the folder: the folder decision (one run per folder)
depends on it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from kube_world import run_body

from continual_operator.api import ContinualTrainingRun
from continual_operator.cluster.reconciler import _other_runs
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
