"""The API models: what a valid run or batch is, beyond what the CRD schema can say."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from continual_operator.api import (
    ContinualTrainingRun,
    ContinualTrainingRunSpec,
    ContinualTrainingRunStatus,
    StorageSpec,
    TrainingBatchStatus,
)
from continual_operator.api.run import RunBaseModelSpec
from continual_trainer.config import BaseModelSpec

MINIMAL = {"baseModel": {"path": "models/m"}, "storage": {"existingClaim": "c"}}


def spec(**changes: Any) -> ContinualTrainingRunSpec:
    return ContinualTrainingRunSpec.model_validate(MINIMAL | changes)


def test_defaults() -> None:
    s = spec()
    assert s.image == "ghcr.io/continual-training/trainer:0.1.0"
    assert s.storage.retain_on_delete is True
    assert (s.failure_policy.max_retries_per_batch, s.failure_policy.on_permanent_failure) == (3, "Halt")
    assert s.failure_policy.backoff_seconds == 30
    assert s.termination_grace_period_seconds == 300
    assert s.resources.gpu_resource_name == "nvidia.com/gpu"
    assert s.progress.enabled is True
    assert s.suspend is False


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"storage": {"existingClaim": "c", "claimTemplate": {"size": "1Gi"}}}, "storage"),
        ({"storage": {}}, "storage"),
        ({"storage": {"existingClaim": "c", "subPath": "/abs"}}, "storage.subPath"),
        ({"storage": {"existingClaim": "c", "subPath": "../up"}}, "storage.subPath"),
        ({"baseModel": {"path": "m", "id": "org/m"}}, "baseModel"),
        ({"baseModel": {}}, "baseModel"),
        ({"training": {"lrSchedule": {"type": "cosine"}}}, "lrSchedule.type"),
        ({"lora": {"r": 8, "unknown": 1}}, "lora.unknown"),
        ({"resources": {"memory": "a lot"}}, "resources.memory"),
        ({"failurePolicy": {"onPermanentFailure": "Retry"}}, "failurePolicy.onPermanentFailure"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(**changes)
    text = str(caught.value)
    assert any(part in text for part in (field, field.rsplit(".", maxsplit=1)[-1])), text


@pytest.mark.parametrize(("sub_path", "normal"), [("runs/a/", "runs/a"), ("./x", "x"), (".", None)])
def test_sub_path_is_normalised(sub_path: str, normal: str | None) -> None:
    assert StorageSpec(existing_claim="c", sub_path=sub_path).sub_path == normal


def test_base_model_for_the_trainer_drops_the_secret() -> None:
    base = RunBaseModelSpec.model_validate(
        {"id": "org/m", "revision": "abc", "tokenSecretRef": {"name": "s", "key": "k"}}
    )
    assert base.to_trainer() == BaseModelSpec(id="org/m", revision="abc")


def test_status_ignores_unknown_fields_written_by_others() -> None:
    status = ContinualTrainingRunStatus.model_validate({"globalStep": 5, "fieldFromTheFuture": True})
    assert status.global_step == 5
    assert TrainingBatchStatus.model_validate({"phase": "Queued", "x": 1}).phase == "Queued"


def test_run_parses_a_kopf_body() -> None:
    body = {
        "apiVersion": "continual.dev/v1alpha1",
        "kind": "ContinualTrainingRun",
        "metadata": {
            "name": "r",
            "namespace": "ns",
            "uid": "u",
            "generation": 4,
            "resourceVersion": "9",
            "creationTimestamp": "2025-03-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": MINIMAL,
        "status": {"phase": "Idle"},
    }
    run = ContinualTrainingRun.model_validate(body)
    assert (run.metadata.generation, run.status.phase) == (4, "Idle")


@pytest.mark.parametrize("model", [ContinualTrainingRunSpec, StorageSpec, RunBaseModelSpec])
def test_spec_models_refuse_unknown_keys(model: type[BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
