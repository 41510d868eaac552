"""Conditions, timestamps, patches and validation messages."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRunSpec
from continual_operator.api.meta import Condition
from continual_operator.planning.actions import EmitEvent, Plan, UpdateBatchStatus, UpdateRunStatus
from continual_operator.planning.status import (
    describe_validation_error,
    merge_patch,
    one_patch_per_object,
    parse_time,
    rfc3339,
    set_condition,
)

T1 = dt.datetime(2025, 3, 1, 10, 0, tzinfo=dt.UTC)
T2 = T1 + dt.timedelta(hours=1)


def test_rfc3339_round_trip() -> None:
    assert rfc3339(T1) == "2025-03-01T10:00:00Z"
    naive = dt.datetime(2025, 3, 1, 10, 0, 0, 999)  # noqa: DTZ001 - naive datetimes are taken as UTC
    assert rfc3339(naive) == "2025-03-01T10:00:00Z"
    assert parse_time("2025-03-01T10:00:00Z") == T1
    assert parse_time(None) is None


@pytest.mark.parametrize(
    ("new_status", "moves"),
    [
        pytest.param("True", False, id="same-status-keeps-time"),
        pytest.param("False", True, id="change-moves-time"),
    ],
)
def test_condition_transition_time(new_status: str, moves: bool) -> None:
    first = set_condition([], "Ready", "True", "Ready", "ok", generation=1, now=T1)
    second = set_condition(first, "Ready", new_status, "Other", "changed", generation=2, now=T2)  # type: ignore[arg-type]
    (condition,) = second
    assert condition.last_transition_time == rfc3339(T2 if moves else T1)
    assert (condition.reason, condition.message, condition.observed_generation) == ("Other", "changed", 2)


def test_conditions_keep_their_order() -> None:
    conditions = [Condition(type="A", status="True"), Condition(type="B", status="True")]
    updated = set_condition(conditions, "A", "False", "x", "", generation=1, now=T1)
    assert [c.type for c in updated] == ["A", "B"]
    assert [c.type for c in set_condition(updated, "C", "True", "y", "", generation=1, now=T1)] == [
        "A",
        "B",
        "C",
    ]


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"a": 1}, {"a": None}, {"a": None}),
        ({}, {"b": [1]}, {"b": [1]}),
        ({"c": [{"x": 1}]}, {"c": [{"x": 2}]}, {"c": [{"x": 2}]}),
    ],
)
def test_merge_patch(old: dict, new: dict, patch: dict) -> None:
    assert merge_patch(old, new) == patch


def test_validation_errors_name_the_yaml_path() -> None:
    with pytest.raises(ValidationError) as caught:
        ContinualTrainingRunSpec.model_validate(
            {"baseModel": {"path": "m"}, "storage": {"existingClaim": "c"}, "lora": {"r": 0}}
        )
    assert describe_validation_error(caught.value).startswith("spec.lora.r: ")
    assert describe_validation_error("already a message") == "already a message"


def test_one_patch_per_object_merges_a_reconciles_patches_of_one_status_where_the_last_was() -> None:
    inbox = UpdateRunStatus({"inbox": {"watermark": "b"}, "conditions": ["inbox"]})
    event = EmitEvent("ContinualTrainingRun", "demo", "Normal", "InboxBatchesCreated", "2 batches")
    create_first, create_then = (
        UpdateBatchStatus("b1", {"phase": "Queued"}),
        UpdateBatchStatus("b2", {"a": 1}),
    )
    planned = (
        UpdateBatchStatus("b1", {"phase": "Training", "job": "j"}),
        UpdateRunStatus({"phase": "Training", "conditions": ["inbox", "ready"]}),
    )
    merged = one_patch_per_object(Plan((inbox, event, create_first, create_then, *planned)))
    assert merged.actions == (
        event,
        create_then,
        UpdateBatchStatus("b1", {"phase": "Training", "job": "j"}),
        UpdateRunStatus({"inbox": {"watermark": "b"}, "conditions": ["inbox", "ready"], "phase": "Training"}),
    )
    alone = Plan((event, *planned))
    assert one_patch_per_object(alone) is alone
