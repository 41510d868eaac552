"""Every ``x-kubernetes-validations`` rule of the generated CRDs, evaluated with a real CEL implementation.

The e2e control plane (1.20) predates CEL, so nothing else runs these rules. Here each rule found in
crds/*.yaml (and the chart's copy) is compiled with cel-python and evaluated as the API server does on
an update: at its own place in the object, with ``self`` the new value and ``oldSelf`` the old one. For
the examples of both kinds: no change passes every rule; a change inside an immutable field is refused
by exactly that field's rule (and its message names the field); changes to mutable fields pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from continual_operator.api import BATCH_INFO, RUN_INFO

celpy = pytest.importorskip("celpy")

ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = (ROOT / "crds", ROOT / "charts" / "continual-training" / "crds")
EXAMPLES = {
    "ContinualTrainingRun": ROOT / "examples" / "run.yaml",
    "TrainingBatch": ROOT / "examples" / "batch-001.yaml",
}
INFOS = {"ContinualTrainingRun": RUN_INFO, "TrainingBatch": BATCH_INFO}
#: Mutable fields, changed to show that an update elsewhere passes every rule.
MUTABLE_CHANGES = {
    "ContinualTrainingRun": [
        ("spec", "training", "learningRate"),
        ("spec", "suspend"),
        ("metadata", "labels"),
    ],
    "TrainingBatch": [("spec", "order"), ("metadata", "labels")],
}


@dataclass(frozen=True)
class Rule:
    kind: str
    path: tuple[str, ...]  # where in the object the rule is evaluated (self)
    rule: str
    message: str


def walk(schema: dict[str, Any], path: tuple[str, ...], kind: str) -> list[Rule]:
    rules = [
        Rule(kind, path, item["rule"], item.get("message", ""))
        for item in schema.get("x-kubernetes-validations", [])
    ]
    for name, sub in schema.get("properties", {}).items():
        rules += walk(sub, (*path, name), kind)
    if "items" in schema:
        assert not walk(schema["items"], (*path, "[]"), kind), "rules inside lists: extend this test"
    return rules


def crd_rules(folder: Path) -> list[Rule]:
    rules = []
    for path in sorted(folder.glob("continual.dev_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            rules += walk(version["schema"]["openAPIV3Schema"], (), kind)
    return rules


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def changed(value: Any) -> Any:
    """The same value with one leaf changed (the first one, depth first)."""
    if isinstance(value, dict):
        if not value:
            return {"added": "x"}
        key = next(iter(value))
        return {**value, key: changed(value[key])}
    if isinstance(value, list):
        return [*value, value[-1] if value else "x"]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-changed"


def with_change(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    parent = get(new, path[:-1])
    parent[path[-1]] = changed(parent.get(path[-1], {}))
    return new


def evaluate(rule: Rule, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The rule as the API server runs it on an update (a transition rule runs only where both exist)."""
    old_value, new_value = get(old, rule.path), get(new, rule.path)
    if old_value is None or new_value is None:
        return True
    env = celpy.Environment()
    program = env.program(env.compile(rule.rule))
    result = program.evaluate({"self": celpy.json_to_cel(new_value), "oldSelf": celpy.json_to_cel(old_value)})
    assert isinstance(result, celpy.celtypes.BoolType), f"{rule.rule} did not evaluate to a bool: {result!r}"
    return bool(result)


def example(kind: str) -> dict[str, Any]:
    return yaml.safe_load(EXAMPLES[kind].read_text())


RULES = crd_rules(CRD_DIRS[0])


def test_the_rules_are_exactly_the_declared_immutable_fields_in_both_copies_of_the_crds():
    declared = {(kind, ("spec", f.name)) for kind, info in INFOS.items() for f in info.immutable}
    assert {(r.kind, r.path) for r in RULES} == declared
    assert crd_rules(CRD_DIRS[1]) == RULES  # the chart carries the same rules


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.kind}.{'.'.join(r.path)}")
def test_an_immutable_field_refuses_a_change_and_allows_none(rule: Rule):
    obj = example(rule.kind)
    assert get(obj, rule.path) is not None, f"{EXAMPLES[rule.kind]} should set {'.'.join(rule.path)}"
    assert evaluate(rule, obj, copy.deepcopy(obj))
    assert not evaluate(rule, obj, with_change(obj, rule.path))
    assert rule.message.startswith(".".join(rule.path) + " is immutable")
    # the change is refused by this rule only: every other rule passes
    new = with_change(obj, rule.path)
    others = [r for r in RULES if r.kind == rule.kind and r != rule]
    assert all(evaluate(other, obj, new) for other in others)


@pytest.mark.parametrize(
    ("kind", "path"), [(k, p) for k, paths in MUTABLE_CHANGES.items() for p in paths], ids=str
)
def test_changes_to_mutable_fields_pass_every_rule(kind: str, path: tuple[str, ...]):
    obj = example(kind)
    new = with_change(obj, path)
    assert new != obj
    assert all(evaluate(rule, obj, new) for rule in RULES if rule.kind == kind)
