"""Argo CD health checks: every health_test.yaml case through a real Lua interpreter, on real statuses.

Run as a script (``python tests/observe/test_argocd_health.py``) it rewrites examples/gitops/argocd-cm.yaml
from the health.lua files, which a test below checks.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "argocd" / "resource_customizations" / "continual.dev"
ARGOCD_CM = ROOT / "examples" / "gitops" / "argocd-cm.yaml"
KINDS = ("ContinualTrainingRun", "TrainingBatch")
CM_HEADER = """\
# Argo CD health checks for continual-training's kinds, as an argocd-cm customization. Merge it into your
# argocd-cm (it only adds two keys):
#   kubectl -n argocd patch configmap argocd-cm --patch-file examples/gitops/argocd-cm.yaml
# Generated from argocd/resource_customizations/continual.dev/*/health.lua (python
# tests/observe/test_argocd_health.py); a test checks that the Lua here is the same.
"""


def cm_key(kind: str) -> str:
    return f"resource.customizations.health.continual.dev_{kind}"


def health_lua(kind: str) -> str:
    return (CUSTOMIZATIONS / kind / "health.lua").read_text()


def render_cm() -> str:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "argocd-cm",
            "namespace": "argocd",
            "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
        },
        "data": {cm_key(kind): health_lua(kind) for kind in KINDS},
    }

    class Literal(yaml.SafeDumper):
        pass

    def block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Literal.add_representer(str, block)
    return CM_HEADER + yaml.dump(body, Dumper=Literal, sort_keys=False, width=1000)


def cases(kind: str) -> list[dict[str, Any]]:
    return yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())["tests"]


def all_cases() -> list[Any]:
    return [
        pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}")
        for kind in KINDS
        for case in cases(kind)
    ]


@pytest.fixture(scope="module")
def lua() -> Any:
    lupa = pytest.importorskip("lupa")
    try:
        from lupa import lua51 as runtime  # Argo CD runs gopher-lua, a Lua 5.1
    except ImportError:
        runtime = lupa
    return runtime.LuaRuntime(unpack_returned_tuples=True)


def to_lua(runtime: Any, value: Any) -> Any:
    """JSON-like Python data as Lua tables (lists 1-based, as Argo CD hands objects to Lua)."""
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return runtime.table_from({i + 1: to_lua(runtime, v) for i, v in enumerate(value)})
    return value


def health(runtime: Any, kind: str, obj: dict[str, Any]) -> dict[str, str]:
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(health_lua(kind))
    return {"status": result["status"], "message": result["message"]}


def validate(kind: str, obj: dict[str, Any]) -> None:
    """The object parses with the API models: its status has the shape the operator writes."""
    from continual_operator.api import ContinualTrainingRun, TrainingBatch

    model = ContinualTrainingRun if kind == "ContinualTrainingRun" else TrainingBatch
    model.model_validate(obj)


@pytest.mark.parametrize(("kind", "case"), all_cases())
def test_health_case(lua, kind: str, case: dict[str, Any]):
    obj = yaml.safe_load((CUSTOMIZATIONS / kind / case["inputPath"]).read_text())
    validate(kind, obj)
    assert health(lua, kind, obj) == case["healthStatus"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_at_least_ten_cases_covering_every_status(kind: str):
    statuses = {case["healthStatus"]["status"] for case in cases(kind)}
    assert len(cases(kind)) >= 10
    expected = {"Healthy", "Progressing", "Degraded"} | (
        {"Suspended"} if kind == "ContinualTrainingRun" else set()
    )
    assert statuses == expected
    listed = {Path(c["inputPath"]).name for c in cases(kind)}
    assert listed == {p.name for p in (CUSTOMIZATIONS / kind / "testdata").glob("*.yaml")}


def test_the_planner_s_own_statuses_through_a_run_s_life(lua):
    """Not hand-written statuses: the run as the real planner leaves it, step by step (kube-less World)."""
    sys.path.insert(0, str(ROOT / "tests" / "operator"))
    from operator_testkit import World, failed, make_batch, make_run

    def run_health(world: Any) -> str:
        return health(lua, "ContinualTrainingRun", world.run.model_dump(mode="json", by_alias=True))["status"]

    world = World(make_run(failurePolicy={"maxRetriesPerBatch": 0}), [make_batch("b1"), make_batch("b2")], [])
    assert run_health(world) == "Progressing"  # never reconciled
    world.step()
    assert world.run.status.phase == "Training"
    assert run_health(world) == "Progressing"
    world.finish_active(end_offset=6)
    world.step()
    world.finish_active(end_offset=6)
    world.step()
    assert world.run.status.phase == "Idle"
    assert run_health(world) == "Healthy"
    assert (
        health(lua, "TrainingBatch", world.batch("b2").model_dump(mode="json", by_alias=True))["status"]
        == "Healthy"
    )
    world.batches.append(make_batch("b3", created=5))
    world.step()
    active = next(j for j in world.jobs if not j.finished)
    permanent = dataclasses.replace(
        failed("b3", active.attempt, 64), name=active.name, created=active.created
    )
    world.jobs = [permanent if j.name == active.name else j for j in world.jobs]
    world.step()
    assert world.run.status.phase == "Halted"
    assert run_health(world) == "Degraded"
    batch = health(lua, "TrainingBatch", world.batch("b3").model_dump(mode="json", by_alias=True))
    assert batch["status"] == "Degraded"


def test_the_argocd_cm_example_embeds_the_same_lua():
    docs = list(yaml.safe_load_all(ARGOCD_CM.read_text()))
    assert len(docs) == 1
    (cm,) = docs
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == (
        "ConfigMap",
        "argocd-cm",
        "argocd",
    )
    for kind in KINDS:
        assert cm["data"][cm_key(kind)] == health_lua(kind), (
            f"{ARGOCD_CM} is stale: python tests/observe/test_argocd_health.py rewrites it"
        )
    assert ARGOCD_CM.read_text() == render_cm()
    import kubernetes_validate

    kubernetes_validate.validate(cm, "1.30", strict=True)


def test_the_application_example_is_a_valid_argocd_application():
    (app,) = yaml.safe_load_all((ROOT / "examples" / "gitops" / "application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    spec = app["spec"]
    assert set(spec) >= {"project", "source", "destination"}
    assert {"repoURL", "path", "targetRevision"} <= set(spec["source"])
    assert {"server", "namespace"} <= set(spec["destination"])
    assert spec["syncPolicy"]["automated"]["prune"] is False  # a batch's status is the training record


if __name__ == "__main__":
    ARGOCD_CM.write_text(render_cm())
    print(f"wrote {ARGOCD_CM}")
