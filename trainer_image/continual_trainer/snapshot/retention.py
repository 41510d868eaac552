"""Which snapshots to delete: retention of committed ones, sweeping of incomplete ones (pure functions).

Retention runs in the snapshot job right after its own manifest was committed, so the snapshot that makes
an older one redundant always exists before the older one goes. It only ever considers committed
snapshots of the job's own run (a destination prefix shared with a restored copy of the run on another
cluster must not lose the other run's snapshots).

Sweeping: a folder below the prefix without ``manifest.json`` is an incomplete upload and never counts.
One is deleted when either

* its in-progress marker names *this* run: the job holds the run's volume lock, and only a process holding
  it uploads this run's snapshots, so that writer is gone (killed, preempted); or
* nothing in it was written for ``grace`` (another run's upload, or one without a marker): a live upload
  writes an object at least every few seconds, so a quiet day-old folder is abandoned.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from continual_trainer.identity import RunIdentity

DEFAULT_SWEEP_GRACE = dt.timedelta(hours=24)


def retire(committed: list[str], pinned: set[str], keep: int) -> list[str]:
    """The committed snapshot ids to delete: all but the newest ``keep`` and the pinned ones, oldest first.

    Ids sort by time (``manifest.snapshot_id``). ``keep`` must be at least 1, so the snapshot just
    committed is never among them.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep}): the newest snapshot is always kept")
    ordered = sorted(set(committed), reverse=True)
    return sorted(sid for sid in ordered[keep:] if sid not in pinned)


@dataclass(frozen=True)
class Incomplete:
    """A snapshot folder without a manifest, as listed."""

    snapshot_id: str
    #: The run its in-progress marker names (None: no marker, or an unreadable one).
    writer: RunIdentity | None
    #: The newest LastModified of its objects.
    last_write: dt.datetime


def same_run(a: RunIdentity, b: RunIdentity) -> bool:
    """Two identities name the same run: the uid where both have one, else namespace and name."""
    if a.uid and b.uid:
        return a.uid == b.uid
    return (a.namespace, a.name) == (b.namespace, b.name)


def sweepable(
    incomplete: list[Incomplete], me: RunIdentity, now: dt.datetime, grace: dt.timedelta, current: str
) -> list[str]:
    """The incomplete snapshots to delete (never ``current``, the job's own), oldest first."""
    out = []
    for item in incomplete:
        if item.snapshot_id == current:
            continue
        mine = item.writer is not None and same_run(item.writer, me)
        if mine or now - item.last_write >= grace:
            out.append(item.snapshot_id)
    return sorted(out)
