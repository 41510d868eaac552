"""Status arithmetic: timestamps, Kubernetes-style conditions, merge-patch diffs, invalid objects.

Conditions follow ``metav1.Condition``: ``lastTransitionTime`` moves only when ``status`` changes, so that
it says since when something has been true; ``reason``, ``message`` and ``observedGeneration`` follow the
latest computation. Patches are diffs between the status as read and the status wanted, so that an
unchanged reconcile writes nothing (no write amplification, no event storms in watchers).

An object whose spec does not validate never reaches the planner (it cannot be parsed): the handler turns
the validation error into a plan of its own with :func:`plan_invalid_spec` or :func:`plan_invalid_batch`,
whose messages name every offending field by its YAML path. Batches whose run does not exist never reach
it either: :func:`plan_batches_without_run` says on each that it waits for that run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from continual_operator.api import ContinualTrainingRunStatus, ObjectMeta, TrainingBatchStatus
from continual_operator.api.meta import Condition, ConditionStatus
from continual_operator.planning.actions import EmitEvent, Plan, UpdateBatchStatus, UpdateRunStatus

#: The reason of a batch whose ``spec.runName`` names no run (yet).
RUN_NOT_FOUND = "RunNotFound"
_TERMINAL = frozenset({"Succeeded", "Failed"})


def rfc3339(when: dt.datetime) -> str:
    """UTC, second precision, ``Z`` suffix: what the API server stores and ``kubectl`` shows."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None stays None)."""
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[Condition]:
    """``conditions`` with ``type_`` set (replaced in place, or appended)."""
    old = next((c for c in conditions if c.type == type_), None)
    transition = old.last_transition_time if old is not None and old.status == status else rfc3339(now)
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def wire(model: BaseModel) -> dict[str, Any]:
    """A model as the API server stores it (camelCase, JSON types, nulls kept for diffing)."""
    return model.model_dump(mode="json", by_alias=True)


def one_patch_per_object(plan: Plan) -> Plan:
    """``plan`` with the status patches of one object merged into one, where its last patch was: what a
    reconcile writes to one status (the S3 inbox's poll, then the planner's run status) costs one request.

    Later patches win key by key, as they would applied one after the other (patches are top-level).
    """
    merged: dict[Any, dict[str, Any]] = {}
    last: dict[Any, int] = {}
    for index, action in enumerate(plan.actions):
        if isinstance(action, UpdateRunStatus | UpdateBatchStatus):
            key = action.batch if isinstance(action, UpdateBatchStatus) else None
            merged.setdefault(key, {}).update(action.patch)
            last[key] = index
    if len(last) == len(plan.of(UpdateRunStatus)) + len(plan.of(UpdateBatchStatus)):
        return plan  # one patch per object already
    actions: list[Any] = []
    for index, action in enumerate(plan.actions):
        if not isinstance(action, UpdateRunStatus | UpdateBatchStatus):
            actions.append(action)
            continue
        key = action.batch if isinstance(action, UpdateBatchStatus) else None
        if last[key] == index:
            actions.append(
                UpdateRunStatus(merged[key]) if key is None else UpdateBatchStatus(key, merged[key])
            )
    return Plan(tuple(actions))


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level JSON merge patch turning ``old`` into ``new`` (``None`` deletes a key).

    Top-level only on purpose: nested values (the conditions list) are replaced whole, which is what a
    merge patch does with lists anyway.
    """
    patch: dict[str, Any] = {}
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before != after:
            patch[key] = after
    return dict(sorted(patch.items()))


def describe_validation_error(error: ValidationError | str, prefix: str = "spec") -> str:
    """One line per problem, each naming the field by its path as written in YAML (``spec.lora.r``).

    ``prefix`` is the path of what was validated: ``spec`` for a spec, ``""`` for a whole object (whose
    errors already start at ``spec``). List items are written ``targetModules[0]``. A snake_case key the
    manifest does not know is answered with its camelCase spelling, the only one a cluster accepts.
    """
    if isinstance(error, str):
        return error
    lines = []
    for err in error.errors():
        where = prefix
        for part in err["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = err["msg"].removeprefix("Value error, ")
        last = err["loc"][-1] if err["loc"] else ""
        if err["type"] == "extra_forbidden" and isinstance(last, str) and "_" in last.strip("_"):
            message = f"unknown field; manifests spell it {to_camel(last)!r} (camelCase)"
        lines.append(f"{where}: {message}")
    return "; ".join(lines)


def plan_invalid_spec(
    metadata: ObjectMeta,
    status: ContinualTrainingRunStatus,
    error: ValidationError | str,
    *,
    now: dt.datetime,
) -> Plan:
    """Degraded + Failed + a Warning Event for a run whose spec does not validate (the handler's case).

    The message names every offending field by its YAML path (``spec.training.lrSchedule.type: ...``).
    Running Jobs are left alone: they train with the config they were started with. Idempotent: the
    Event is emitted only when the status changes.
    """
    message = (
        f"the spec is invalid: {describe_validation_error(error)}. Fix the manifest and apply it again; no "
        "batch starts until then"
    )
    conditions: list[Condition] = list(status.conditions)
    wanted: tuple[tuple[str, ConditionStatus], ...] = (("Ready", "False"), ("Degraded", "True"))
    for type_, value in wanted:
        conditions = set_condition(
            conditions, type_, value, "InvalidSpec", message, generation=metadata.generation, now=now
        )
    desired = wire(status) | {
        "phase": "Failed",
        "observedGeneration": metadata.generation,
        "conditions": [wire(c) for c in conditions],
    }
    patch = merge_patch(wire(status), desired)
    if not patch:
        return Plan()
    return Plan(
        (
            UpdateRunStatus(patch),
            EmitEvent("ContinualTrainingRun", metadata.name, "Warning", "InvalidSpec", message),
        )
    )


def plan_invalid_batch(
    metadata: ObjectMeta, status: TrainingBatchStatus, error: ValidationError | str, *, now: dt.datetime
) -> Plan:
    """Mark a TrainingBatch whose spec does not validate as Failed (reason InvalidSpec), with an Event.

    Such a batch never reaches :func:`plan` (it cannot be parsed), so it neither trains nor halts the run.
    """
    message = (
        f"the spec is invalid: {describe_validation_error(error)}. Submit the data as a new TrainingBatch"
    )
    wanted = status.model_copy(
        update={
            "phase": "Failed",
            "reason": "InvalidSpec",
            "message": message,
            "observed_generation": metadata.generation,
            "last_transition_time": status.last_transition_time if status.phase == "Failed" else rfc3339(now),
        }
    )
    patch = merge_patch(wire(status), wire(wanted))
    if not patch:
        return Plan()
    return Plan(
        (
            UpdateBatchStatus(metadata.name, patch),
            EmitEvent("TrainingBatch", metadata.name, "Warning", "InvalidSpec", message),
        )
    )


def plan_batches_without_run(
    namespace: str,
    run_name: str,
    batches: Sequence[tuple[ObjectMeta, TrainingBatchStatus]],
    *,
    now: dt.datetime,
) -> Plan:
    """Every unfinished batch naming a run that does not exist says it waits for it (Queued, RunNotFound).

    With one Warning Event per batch when it starts waiting (an unchanged status writes nothing). Once the
    run is created, its first reconcile takes the batches in their order, as if they had just arrived.
    """
    message = (
        f"waiting for ContinualTrainingRun {run_name} in namespace {namespace}: it does not exist (yet). The "
        f"batch trains once that run is created; check spec.runName if {run_name} is a typo"
    )
    actions: list[Any] = []
    for meta, status in batches:
        if status.phase in _TERMINAL or meta.deletion_timestamp is not None:
            continue
        wanted = status.model_copy(
            update={
                "phase": "Queued",
                "reason": RUN_NOT_FOUND,
                "message": message,
                "next_attempt_time": None,
                "observed_generation": meta.generation,
                "last_transition_time": status.last_transition_time
                if status.phase == "Queued"
                else rfc3339(now),
            }
        )
        patch = merge_patch(wire(status), wire(wanted))
        if not patch:
            continue
        actions.append(UpdateBatchStatus(meta.name, patch))
        if status.reason != RUN_NOT_FOUND:
            actions.append(EmitEvent("TrainingBatch", meta.name, "Warning", RUN_NOT_FOUND, message))
    return Plan(tuple(actions))
