"""Local mode reads manifests as a cluster would: same accepted fields, same names, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from continual_operator.api import crdgen
from continual_operator.api.run import RUN_INFO, ContinualTrainingRunSpec
from continual_operator.cli import build_parser
from continual_operator.local.mode import LocalModeError, load_run, manifest_batches
from continual_operator.planning.status import describe_validation_error

DEMO = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"


def _run_file(tmp_path: Path, edit: Any = None) -> Path:
    manifest = yaml.safe_load(DEMO.read_text())
    if edit is not None:
        edit(manifest)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _message(tmp_path: Path, edit: Any) -> str:
    with pytest.raises(LocalModeError) as caught:
        load_run(_run_file(tmp_path, edit))
    return str(caught.value)


def test_fields_are_named_once_from_the_top_of_the_manifest(tmp_path: Path) -> None:
    message = _message(tmp_path, lambda m: m["spec"]["lora"].update(targetModules=["q_proj", 3]))
    assert "invalid run: spec.lora.targetModules[1]: " in message
    assert "spec.spec" not in message


def test_snake_case_keys_are_refused_as_the_crd_refuses_them_naming_the_spelling(tmp_path: Path) -> None:
    message = _message(tmp_path, lambda m: m["spec"]["training"].update(learning_rate=0.1))
    assert "spec.training.learning_rate: unknown field; manifests spell it 'learningRate'" in message
    # the CRD has no such property either (its structural schema would prune or reject it)
    training = crdgen.crd_manifest(RUN_INFO)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    props = training["properties"]["spec"]["properties"]["training"]["properties"]
    assert "learningRate" in props and "learning_rate" not in props


def test_a_quantity_error_says_what_to_write(tmp_path: Path) -> None:
    message = _message(tmp_path, lambda m: m["spec"].update(storage={"claimTemplate": {"size": "10Gb"}}))
    assert "spec.storage.claimTemplate.size: '10Gb' is not a Kubernetes quantity: use e.g. 10Gi" in message
    assert "[0-9]" not in message  # no regex
    spec = copy.deepcopy(yaml.safe_load(DEMO.read_text())["spec"])
    spec["resources"] = {"memory": "64GB"}
    with pytest.raises(ValidationError) as caught:
        ContinualTrainingRunSpec.model_validate(spec)
    assert "spec.resources.memory: '64GB' is not a Kubernetes quantity" in describe_validation_error(
        caught.value  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, "metadata.name is missing"),
        ({"labels": {}}, "metadata.name is missing"),
        ({"name": "My_Run"}, "rename it, e.g. 'my-run'"),
    ],
)
def test_a_run_without_a_valid_name_is_refused(tmp_path: Path, metadata: Any, expected: str) -> None:
    assert expected in _message(tmp_path, lambda m: m.update(metadata=metadata))


def _batches_file(tmp_path: Path, *docs: dict[str, Any]) -> Path:
    path = tmp_path / "batches.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _batch(name: str | None, run: str = "demo") -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": "TrainingBatch", "spec": {"runName": run, "data": {"path": "b.jsonl"}}}
    if name is not None:
        doc["metadata"] = {"name": name}
    return doc


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_batch(None), "(document 1): metadata.name is missing: give the TrainingBatch a name"),
        ({**_batch(None), "metadata": None}, "(document 1): metadata.name is missing"),
        (_batch("My_Batch"), "metadata.name: 'My_Batch' is not a valid Kubernetes object name"),
        (
            {**_batch("b1"), "spec": {"runName": "demo", "data": {"path": "b", "keep_cache": True}}},
            "spec.data.keep_cache: unknown field; manifests spell it 'keepCache'",
        ),
    ],
)
def test_a_bad_batch_is_refused_naming_file_document_and_field(
    tmp_path: Path, doc: dict[str, Any], expected: str
) -> None:
    path = _batches_file(tmp_path, doc)
    with pytest.raises(LocalModeError) as caught:
        manifest_batches("demo", [path], {})
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value)


def test_batches_of_other_runs_and_other_kinds_are_listed_not_dropped(tmp_path: Path) -> None:
    path = _batches_file(
        tmp_path, _batch("b1"), _batch("b2", run="other"), {"kind": "ConfigMap"}, _batch("b3")
    )
    found = manifest_batches("demo", [path], {}, reserved={"b3": "b3.jsonl"})
    assert [b.metadata.name for b in found.batches] == ["b1"]
    reasons = {n.source.split(" ", 1)[1]: n.reason for n in found.not_batches}
    assert reasons == {
        "(document 2) b2": "spec.runName is 'other', not this run ('demo')",
        "(document 3)": "kind ConfigMap, not a TrainingBatch",
        "(document 4) b3": "the inbox file b3.jsonl is batch 'b3' already: rename this TrainingBatch",
    }


def test_crds_out_writes_only_where_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mine"
    args = build_parser().parse_args(["crds", "--out", str(out)])
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in crdgen.write(tmp_path / "ref"))
    assert not (tmp_path / "charts").exists() and not (tmp_path / "crds").exists()
    check = build_parser().parse_args(["crds", "--out", str(out), "--check"])
    assert check.func(check) == 0
    chart = tmp_path / "chart-crds"
    both = build_parser().parse_args(["crds", "--out", str(out), "--chart-crds", str(chart)])
    assert both.func(both) == 0 and sorted(p.name for p in chart.iterdir()) == sorted(
        p.name for p in out.iterdir()
    )
