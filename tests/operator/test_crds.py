"""The CRDs: generated from the models, committed, structural, and accepting exactly the valid manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from continual_operator.api import (
    BATCH_INFO,
    RESOURCES,
    RUN_INFO,
    ContinualTrainingRun,
    TrainingBatch,
    crdgen,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KIND_MODELS = {"ContinualTrainingRun": ContinualTrainingRun, "TrainingBatch": TrainingBatch}


def schema_of(info: Any, *, include_cel: bool = True) -> dict[str, Any]:
    return crdgen.crd_manifest(info, include_cel=include_cel)["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]


def walk(node: dict[str, Any], path: str = "") -> Any:
    """Every schema node with its path (properties, items, map values)."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def as_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 -> JSON Schema draft 4: ``nullable`` becomes a null type; extensions are dropped."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: as_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if "properties" in node:
        out["properties"] = {k: as_json_schema(v) for k, v in node["properties"].items()}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    return out


def validator(kind: str) -> jsonschema.Draft4Validator:
    info = RUN_INFO if kind == RUN_INFO.kind else BATCH_INFO
    return jsonschema.Draft4Validator(as_json_schema(schema_of(info)))


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every ContinualTrainingRun/TrainingBatch document of every YAML file under examples/ (recursively)."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") in KIND_MODELS:
                found.append((f"{path.relative_to(EXAMPLES)}#{index}", doc))
    return found


# -- generated == committed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["crds", "charts/continual-training/crds"])
def test_committed_crds_match_the_models(folder: str) -> None:
    stale = crdgen.stale_files(ROOT / folder)
    assert not stale, f"{stale} differ from the models: run `python -m continual_operator.crdgen --out crds/`"


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    out, chart = tmp_path / "crds", tmp_path / "chart"
    assert crdgen.main(["--out", str(out), "--chart-crds", str(chart), "--check"]) == 1
    assert crdgen.main(["--out", str(out), "--chart-crds", str(chart)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "continual.dev_continualtrainingruns.yaml",
        "continual.dev_trainingbatches.yaml",
    ]
    assert crdgen.main(["--out", str(out), "--chart-crds", str(chart), "--check"]) == 0
    (chart / "continual.dev_trainingbatches.yaml").write_text("edited by hand\n")
    assert crdgen.main(["--out", str(out), "--chart-crds", str(chart), "--check"]) == 1


# -- what the API server needs -------------------------------------------------------------------------------
@pytest.mark.parametrize("info", RESOURCES, ids=lambda i: i.kind)
@pytest.mark.parametrize("include_cel", [True, False], ids=["cel", "no-cel"])
def test_crd_is_a_valid_custom_resource_definition(info: Any, include_cel: bool) -> None:
    kubernetes_validate.validate(crdgen.crd_manifest(info, include_cel=include_cel), "1.30", strict=True)


@pytest.mark.parametrize("info", RESOURCES, ids=lambda i: i.kind)
def test_schema_is_structural(info: Any) -> None:
    for path, node in walk(schema_of(info)):
        assert "type" in node, f"{path}: every node needs a type"
        assert not {"$ref", "$defs", "anyOf", "allOf", "title", "const"} & node.keys(), path
        if node["type"] == "object" and path != ".metadata":  # metadata's schema is the API server's
            assert not ("properties" in node and "additionalProperties" in node), path
            free = node.get("x-kubernetes-preserve-unknown-fields") is True
            assert free == ("properties" not in node and "additionalProperties" not in node), path
        for junctor in node.get("oneOf", []):
            assert set(junctor) == {"required"}, f"{path}: value validation only inside oneOf"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(key, True), bool), f"{path}: OpenAPI 3.0 has boolean {key}"


@pytest.mark.parametrize("info", RESOURCES, ids=lambda i: i.kind)
def test_every_field_is_described_for_kubectl_explain(info: Any) -> None:
    undocumented = [path for path, node in walk(schema_of(info)) if not node.get("description") and path]
    undocumented = [p for p in undocumented if not p.endswith(("[]", "{}"))]
    assert undocumented == [".metadata"]
    # The API server accepts nothing else for metadata (a description included): HTTP 422 on install.
    assert schema_of(info)["properties"]["metadata"] == {"type": "object"}


def test_names_short_names_categories_and_columns() -> None:
    run, batch = (crdgen.crd_manifest(info)["spec"] for info in (RUN_INFO, BATCH_INFO))
    assert (run["names"]["shortNames"], batch["names"]["shortNames"]) == (["ctr"], ["tbatch"])
    assert run["names"]["categories"] == batch["names"]["categories"] == ["continual"]
    assert run["group"] == "continual.dev"
    (version,) = run["versions"]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"] if not c.get("priority")}
    assert columns == {
        "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Phase": ".status.phase",
        "Step": ".status.globalStep",
        "Batches": ".status.batchesCompleted",
        "Loss": ".status.lastLoss",
        "Age": ".metadata.creationTimestamp",
    }
    batch_columns = [
        c["name"] for c in batch["versions"][0]["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert batch_columns == ["Run", "Phase", "Start", "End", "Loss", "Age"]
    wide = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"] if c.get("priority")}
    assert wide["Message"] == '.status.conditions[?(@.type=="Ready")].message'
    batch_wide = [c["name"] for c in batch["versions"][0]["additionalPrinterColumns"] if c.get("priority")]
    assert batch_wide[-2:] == ["Reason", "Message"]


def test_status_has_the_fields_the_trainer_patches_and_no_defaults() -> None:
    status = schema_of(RUN_INFO)["properties"]["status"]
    trainer_fields = {
        "globalStep": "integer",
        "latestCheckpoint": "string",
        "lastLoss": "number",
        "lastLearningRate": "number",
        "currentBatch": "string",
        "currentBatchProgress": "number",
        "lastProgressTime": "string",
    }
    for name, type_ in trainer_fields.items():
        assert status["properties"][name]["type"] == type_
    assert all("default" not in node for _, node in walk(status))
    assert status["properties"]["conditions"]["x-kubernetes-list-type"] == "map"


# -- CEL ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("info", "fields"),
    [(RUN_INFO, {"baseModel", "lora", "storage"}), (BATCH_INFO, {"runName", "data"})],
    ids=lambda x: getattr(x, "kind", ""),
)
def test_immutable_fields_have_transition_rules(info: Any, fields: set[str]) -> None:
    spec = schema_of(info)["properties"]["spec"]["properties"]
    ruled = {name for name, node in spec.items() if "x-kubernetes-validations" in node}
    assert ruled == fields
    for name in fields:
        (rule,) = spec[name]["x-kubernetes-validations"]
        assert rule["rule"] == "self == oldSelf"
        assert rule["message"].startswith(f"spec.{name} is immutable")
        assert "create a new" in rule["message"]
        # Bounded, so that the API server's CEL cost estimate accepts the rule.
        for path, node in walk(spec[name]):
            if node["type"] == "array":
                assert "maxItems" in node, path
            if node["type"] == "string":
                assert "maxLength" in node, path


@pytest.mark.parametrize("info", RESOURCES, ids=lambda i: i.kind)
def test_the_variant_without_cel_differs_only_by_the_rules(info: Any) -> None:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "x-kubernetes-validations"}
        return [strip(n) for n in node] if isinstance(node, list) else node

    with_cel = crdgen.crd_manifest(info, include_cel=True)
    without = crdgen.crd_manifest(info, include_cel=False)
    assert "x-kubernetes-validations" not in yaml.safe_dump(without)
    assert strip(with_cel) == without


# -- examples and invalid manifests ---------------------------------------------------------------------------
def test_examples_are_found_in_every_folder() -> None:
    names = {name.split("#")[0] for name, _ in example_documents()}
    assert {"run.yaml", "batch-001.yaml", "gpu-kueue/run.yaml", "s3-inbox/run.yaml"} <= names
    # a YAML file under examples/ that is neither one of ours nor a known Kubernetes/Argo CD kind is a typo
    kinds = {
        doc.get("kind")
        for path in EXAMPLES.rglob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict)
    }
    assert kinds <= {*KIND_MODELS, "Secret", "ConfigMap", "Application"}, kinds


@pytest.mark.parametrize(("name", "manifest"), example_documents(), ids=[n for n, _ in example_documents()])
def test_examples_validate_against_the_crd_and_the_models(name: str, manifest: dict[str, Any]) -> None:
    validator(manifest["kind"]).validate(manifest)
    parsed = KIND_MODELS[manifest["kind"]].model_validate(manifest)
    assert parsed.metadata.name == manifest["metadata"]["name"]


def run_example() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "run.yaml").read_text())


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("spec", "lora", "r"), 0, "less than the minimum"),
        (("spec", "lora", "dropout"), 1.0, "greater than or equal to the maximum"),
        (("spec", "training", "learningRate"), 0, "less than or equal to the minimum"),
        (("spec", "training", "precision"), "fp8", "is not one of"),
        (("spec", "resources", "memory"), "lots", "does not match"),
        (("spec", "failurePolicy", "onPermanentFailure"), "Retry", "is not one of"),
        (("spec", "storage", "existingClaim"), "also-this", "is valid under each of"),
        (("spec", "baseModel", "path"), "models/also", "is valid under each of"),
        (("spec", "suspend"), "yes", "is not of type"),
    ],
)
def test_crd_schema_rejects_invalid_runs(path: tuple[str, ...], value: Any, complaint: str) -> None:
    manifest = copy.deepcopy(run_example())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = list(validator("ContinualTrainingRun").iter_errors(manifest))
    assert errors, f"{'.'.join(path)}={value!r} was accepted"
    assert any(complaint in e.message for e in errors), [e.message for e in errors]


def test_crd_schema_requires_the_essentials() -> None:
    manifest = run_example()
    del manifest["spec"]["storage"]
    assert any(
        "'storage' is a required property" in e.message
        for e in validator(RUN_INFO.kind).iter_errors(manifest)
    )
    batch = yaml.safe_load((EXAMPLES / "batch-001.yaml").read_text())
    del batch["spec"]["runName"]
    assert list(validator(BATCH_INFO.kind).iter_errors(batch))
