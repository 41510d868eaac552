"""When a scheduled artifact job (a snapshot, a consolidation) is due: cron schedules in a time zone. Pure.

``next_due`` answers with the time the job is due; a time at or before ``now`` means "run now". Only the
*latest* tick at or before ``now`` counts, so a missed schedule (the operator was down at 03:00, or a
trainer held the volume all night) runs once when possible, never once per missed tick. The first tick
counted is the first one after the run was created, or after the last run of the job.

Cron expressions are the classic five fields (``minute hour day-of-month month day-of-week``, read by
croniter), evaluated in ``timeZone`` (an IANA name, through :mod:`zoneinfo`): ``0 3 * * *`` in
``Europe/Berlin`` is 03:00 Berlin time, summer and winter.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

#: An example for messages.
EXAMPLE = "0 3 * * * (every day at 03:00)"


def _zone(time_zone: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(time_zone)


def validate_schedule(schedule: str, time_zone: str, field: str = "schedule") -> str | None:
    """What is wrong with a schedule (a message naming ``field`` and the fix), or None."""
    try:
        _zone(time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return (
            f"{field}: timeZone {time_zone!r} is not a time zone: use an IANA name such as UTC, "
            "Europe/Berlin or America/New_York"
        )
    if len(schedule.split()) != 5:
        return f"{field}: {schedule!r} is not a five-field cron expression (minute hour day month weekday), e.g. {EXAMPLE}"
    try:
        croniter(schedule, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        return f"{field}: {schedule!r} is not a valid cron expression ({exc}), e.g. {EXAMPLE}"
    return None


def next_due(
    schedule: str, time_zone: str, last: dt.datetime | None, created: dt.datetime, now: dt.datetime
) -> dt.datetime | None:
    """When the job is due: the latest tick after ``last`` (or after ``created``, before a first run) that
    is at or before ``now``, else the next tick to come. None for a schedule that never fires.

    All datetimes are timezone-aware; the answer is in UTC.
    """
    zone = _zone(time_zone)
    since = (last or created).astimezone(zone)
    ticks = croniter(schedule, since)
    try:
        first: dt.datetime = ticks.get_next(dt.datetime)
    except CroniterBadDateError:
        return None
    if first > now:
        return first.astimezone(dt.UTC)
    # The latest tick at or before now: missed ticks collapse into one.
    latest: dt.datetime = croniter(schedule, now.astimezone(zone)).get_prev(dt.datetime)
    if croniter.match(schedule, now.astimezone(zone)):
        latest = now.astimezone(zone).replace(second=0, microsecond=0)
    return max(first, latest).astimezone(dt.UTC)
