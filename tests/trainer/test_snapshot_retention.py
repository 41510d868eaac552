"""Snapshot ids, retention, sweeping and manifest paths: pure rules, no store, no training."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from continual_trainer.identity import RunIdentity
from continual_trainer.snapshot.job import Layout
from continual_trainer.snapshot.manifest import FileEntry, is_snapshot_id, snapshot_id
from continual_trainer.snapshot.retention import Incomplete, retire, sweepable
from continual_trainer.train import RunLayout

T0 = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
ME = RunIdentity(namespace="ml", name="chat", uid="u-1")


def sid(hours: int, step: int = 10) -> str:
    return snapshot_id(T0 + dt.timedelta(hours=hours), step)


def test_snapshot_ids_sort_by_time_and_name_the_step() -> None:
    assert snapshot_id(T0, 120) == "20261201T030000Z-step00000120"
    ids = [sid(h, step=1000 - h) for h in (5, 1, 30)]
    assert sorted(ids) == [sid(1, 999), sid(5, 995), sid(30, 970)]
    assert is_snapshot_id(ids[0])
    assert not is_snapshot_id("latest") and not is_snapshot_id("20261201T030000Z")


def test_retire_keeps_the_newest_and_every_pinned_one() -> None:
    committed = [sid(h) for h in range(6)]
    assert retire(committed, set(), 3) == committed[:3]
    assert retire(committed, {committed[0], committed[5]}, 2) == committed[1:4]
    assert retire(committed[:2], set(), 7) == []
    with pytest.raises(ValueError, match="at least 1"):
        retire(committed, set(), 0)


def test_sweep_takes_this_runs_dead_uploads_at_once_and_others_only_after_the_grace() -> None:
    now = T0 + dt.timedelta(days=3)
    grace = dt.timedelta(hours=24)
    other = RunIdentity(namespace="ml", name="chat", uid="u-2")  # a restored copy on another cluster
    items = [
        Incomplete(sid(1), ME, now - dt.timedelta(minutes=1)),  # ours: its writer is gone (we hold the lock)
        Incomplete(sid(2), other, now - dt.timedelta(minutes=1)),  # someone else's, live: left alone
        Incomplete(sid(3), other, now - dt.timedelta(hours=25)),  # someone else's, abandoned
        Incomplete(sid(4), None, now - dt.timedelta(hours=1)),  # no marker, recent
        Incomplete(sid(5), ME, now),  # the job's own, in progress
    ]
    assert sweepable(items, ME, now, grace, current=sid(5)) == [sid(1), sid(3)]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "checkpoints/../../x", "cache/b1/data.jsonl", ""])
def test_a_manifest_path_outside_the_run_folders_entries_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="file path"):
        FileEntry(path=path, size=1, sha256="0" * 64)


def test_the_snapshot_layout_is_the_trainers(tmp_path: Path) -> None:
    ours, theirs = Layout(tmp_path), RunLayout(tmp_path)
    assert (ours.checkpoints, ours.adapters, ours.history_file, ours.lock) == (
        theirs.checkpoints,
        theirs.adapters,
        theirs.history_file,
        theirs.lock,
    )


def test_the_snapshot_records_survive_a_round_trip() -> None:
    from continual_trainer.config import BaseModelSpec, LoraSpec
    from continual_trainer.ledger import RestoredFrom, RunRecord
    from continual_trainer.snapshot.manifest import (
        FailedResult,
        RestoreResult,
        SnapshotManifest,
        SnapshotResult,
        parse_manifest,
    )

    manifest = SnapshotManifest(
        snapshot_id=sid(0), run=ME, global_step=10, batches=2, last_batch="b2", created_at="t", committed_at="t",
        files=[FileEntry(path="ledger/run.json", size=3, sha256="a" * 64)], links={"adapters/latest": "step-10"},
        inbox={"watermark": "k"},
    )  # fmt: skip
    assert parse_manifest(manifest.to_json()) == manifest and manifest.total_bytes == 3
    record = RunRecord(
        base_model=BaseModelSpec(id="org/m"), lora=LoraSpec(), created_at="t", run=ME,
        restored_from=RestoredFrom(run=ME, snapshot_id=sid(0), uri="s3://b/p/x/", global_step=10, restored_at="t"),
    )  # fmt: skip
    results = [
        SnapshotResult(uri="u", snapshot_id=sid(0), global_step=1, batches=1, files=1, bytes=1, completed_at="t",
                       retired=[sid(1)], swept=[]),
        RestoreResult(uri="u", snapshot_id=sid(0), global_step=1, batches=1, files=1, bytes=1, completed_at="t"),
        FailedResult(kind="restore", outcome="Failed", exit_code=64, reason="SnapshotFileCorrupt", message="m"),
    ]  # fmt: skip
    for instance in [record, *results]:
        wire = instance.model_dump(mode="json", by_alias=True)
        assert type(instance).model_validate(wire) == instance
    with pytest.raises(ValueError, match="only a sibling"):
        manifest.model_validate({**manifest.model_dump(by_alias=True), "links": {"adapters/latest": "../x"}})


def test_the_termination_message_stays_under_4_kb_keeping_the_newest_ids() -> None:
    from continual_trainer.snapshot.__main__ import termination_line
    from continual_trainer.snapshot.manifest import SnapshotResult

    swept = [sid(h) for h in range(300)]
    result = SnapshotResult(
        uri="s3://b/p/x/", snapshot_id=sid(400), global_step=1, batches=1, files=1, bytes=1, completed_at="t",
        retired=[sid(301), sid(302)], swept=swept,
    )  # fmt: skip
    line = termination_line(result)
    assert len(line.encode()) <= 4096
    kept = SnapshotResult.model_validate_json(line)
    assert kept.swept == swept[-len(kept.swept) :] and kept.retired == [sid(301), sid(302)]
