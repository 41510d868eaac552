"""Schedules of artifact jobs (continual_operator.cadence) and their API fields."""

from __future__ import annotations

import datetime as dt

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRunSpec
from continual_operator.cadence import next_due, validate_schedule
from continual_operator.planning.status import describe_validation_error

UTC = dt.UTC
CREATED = dt.datetime(2026, 3, 1, 0, 30, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_a_daily_schedule_is_due_at_its_tick_and_not_before() -> None:
    assert next_due("0 3 * * *", "UTC", None, CREATED, at(1, 2)) == at(1, 3)  # later today
    assert next_due("0 3 * * *", "UTC", None, CREATED, at(1, 3)) == at(1, 3)  # now
    assert next_due("0 3 * * *", "UTC", at(1, 3, 5), CREATED, at(1, 9)) == at(2, 3)  # done today


def test_a_missed_schedule_runs_once_not_once_per_missed_tick() -> None:
    # The operator was down from the 1st to the 5th: four ticks missed, one run due (the latest tick) ...
    assert next_due("0 3 * * *", "UTC", at(1, 3, 2), CREATED, at(5, 9)) == at(5, 3)
    # ... and once it ran, the next one is tomorrow's.
    assert next_due("0 3 * * *", "UTC", at(5, 9, 1), CREATED, at(5, 9, 2)) == at(6, 3)


def test_the_schedule_is_read_in_its_time_zone() -> None:
    # 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
    assert next_due("0 3 * * *", "Europe/Berlin", None, CREATED, at(1, 0, 45)) == at(1, 2)
    summer = dt.datetime(2026, 7, 1, tzinfo=UTC)
    assert next_due("0 3 * * *", "Europe/Berlin", None, summer, summer) == dt.datetime(
        2026, 7, 1, 1, tzinfo=UTC
    )


def test_a_schedule_that_never_fires_is_never_due() -> None:
    assert next_due("0 0 30 2 *", "UTC", None, CREATED, at(5, 0)) is None


@pytest.mark.parametrize(
    ("schedule", "zone", "words"),
    [
        ("0 3 * *", "UTC", "five-field cron expression"),
        ("0 25 * * *", "UTC", "not a valid cron expression"),
        ("0 3 * * *", "Mars/Olympus", "not a time zone"),
    ],
)
def test_a_bad_schedule_names_the_field_and_the_fix(schedule: str, zone: str, words: str) -> None:
    problem = validate_schedule(schedule, zone, field="spec.snapshots.schedule")
    assert problem is not None and problem.startswith("spec.snapshots.schedule: ") and words in problem
    assert "e.g." in problem or "IANA" in problem


def _spec(**extra: object) -> ContinualTrainingRunSpec:
    return ContinualTrainingRunSpec.model_validate(
        {"baseModel": {"path": "models/tiny"}, "storage": {"existingClaim": "data"}, **extra}
    )


def test_the_api_refuses_a_bad_schedule_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        _spec(snapshots={"schedule": "every night", "destination": "s3://backups/run/"})
    message = describe_validation_error(error.value)
    assert "spec.snapshots.schedule" in message and "cron" in message
    with pytest.raises(ValidationError) as error:
        _spec(consolidation={"output": "merged/"})
    assert "spec.consolidation.schedule (cron) or spec.consolidation.everyBatches" in str(error.value)


def test_the_api_fields_parse_with_their_defaults() -> None:
    spec = _spec(
        snapshots={"schedule": "0 3 * * *", "destination": "s3://backups/run/"},
        restoreFrom="s3://backups/run/20261201T030000Z-step00000040/",
        consolidation={"everyBatches": 10, "output": "s3://models/run/"},
    )
    assert spec.snapshots is not None and (spec.snapshots.keep, spec.snapshots.time_zone) == (7, "UTC")
    assert spec.consolidation is not None and spec.consolidation.dtype == "float32"
    with pytest.raises(ValidationError):
        _spec(restoreFrom="https://example.com/snapshot")


SCHEDULES = ["0 3 * * *", "*/15 * * * *", "30 */6 * * *", "0 0 * * 1", "5 4 1 * *"]


@settings(max_examples=40, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    since_minutes=st.integers(min_value=0, max_value=3 * 24 * 60),
    window_minutes=st.integers(min_value=0, max_value=2 * 24 * 60),
)
def test_due_means_the_latest_tick_since_the_last_run(
    schedule: str, since_minutes: int, window_minutes: int
) -> None:
    """Against brute force: due iff a tick lies in (last, now]; then at the latest such tick; else the next."""
    last = CREATED + dt.timedelta(minutes=since_minutes)
    now = last + dt.timedelta(minutes=window_minutes)
    ticks = [
        last + dt.timedelta(minutes=m)
        for m in range(1, window_minutes + 1)
        if croniter.match(schedule, last + dt.timedelta(minutes=m))
    ]
    due = next_due(schedule, "UTC", last, CREATED, now)
    assert due is not None
    if ticks:
        assert due == ticks[-1] <= now
        # Having run now, it is not due again before its next tick.
        again = next_due(schedule, "UTC", now, CREATED, now)
        assert again is not None and again > now
    else:
        assert due > now and croniter.match(schedule, due)
