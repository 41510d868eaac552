"""Every config and record class survives a save/load round trip (camelCase on the wire)."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from continual_trainer.config import (
    BaseModelSpec,
    BatchSpec,
    DataSpec,
    KubernetesProgressSpec,
    LoraSpec,
    LRSchedule,
    ProgressSpec,
    TrainerConfig,
    TrainingSpec,
    parse_config,
)
from continual_trainer.ledger import BatchRecord, RunRecord
from continual_trainer.records import BatchResult, ProgressEvent, TruncationSummary

CONFIG = TrainerConfig(
    run_name="r",
    run_dir="/data/runs/r",
    data_root="/data",
    base_model=BaseModelSpec(id="org/model", revision="abc123"),
    lora=LoraSpec(r=16, alpha=32, dropout=0.0, target_modules=["v_proj", "q_proj", "q_proj"]),
    training=TrainingSpec(lr_schedule=LRSchedule(type="rewarm", warmup_ratio=0.1), precision="bf16"),
    batch=BatchSpec(id="batch-0001", data=DataSpec(path="inbox/0001.jsonl", format="jsonl")),
    progress=ProgressSpec(kubernetes=KubernetesProgressSpec(namespace="ns", name="r")),
)

INSTANCES: list[BaseModel] = [
    CONFIG,
    CONFIG.lora,
    CONFIG.training,
    CONFIG.batch,
    CONFIG.progress,
    RunRecord(base_model=CONFIG.base_model, lora=CONFIG.lora, created_at="2026-01-01T00:00:00Z"),
    BatchRecord(
        batch_id="b",
        sequence=1,
        data_path="x",
        data_digest="sha256:0",
        samples=3,
        start_step=0,
        target_step=2,
        training=CONFIG.training,
        created_at="t",
        result=BatchResult(
            batch_id="b",
            outcome="Succeeded",
            start_step=0,
            end_step=2,
            truncated=TruncationSummary(samples=1, tokens_dropped=9, characters_not_tokenized=5, first="a:1"),
        ),
    ),
    ProgressEvent(run="r", batch_id="b", global_step=3, batch_start_step=2, batch_target_step=4, time="t"),
]


@pytest.mark.parametrize("instance", INSTANCES, ids=lambda i: type(i).__name__)
def test_round_trip(instance):
    wire = instance.model_dump(mode="json", by_alias=True)
    assert type(instance).model_validate(wire) == instance
    assert type(instance).model_validate(yaml.safe_load(yaml.safe_dump(wire))) == instance


def test_parse_config_uses_camel_case_and_rejects_unknown_fields():
    text = yaml.safe_dump(CONFIG.model_dump(mode="json", by_alias=True))
    assert "perDeviceBatchSize" in text
    assert parse_config(text) == CONFIG
    assert CONFIG.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="learningRat"):
        parse_config(text.replace("learningRate", "learningRat"))


def test_base_model_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        BaseModelSpec()
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        BaseModelSpec(path="/m", id="x")


def test_termination_message_stays_under_4kb():
    result = BatchResult(batch_id="b", outcome="Failed", message="x" * 10_000)
    assert len(result.to_termination_message().encode()) <= 4096
