"""The folder inbox's rules on a real folder: complete before taken, one name per entry, changes reported."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from continual_operator.local.folder_inbox import FolderInbox, SourceRecord, content_digest
from continual_operator.naming import object_name_problem, source_batch_name
from continual_trainer.config import is_valid_batch_id


def _old(path: Path, seconds: float = 3600) -> Path:
    """Back-date a file (and a folder's contents) as if it had been written long ago."""
    stamp = time.time() - seconds
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (stamp, stamp))
    return path


def _write(path: Path, text: str, *, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return _old(path) if old else path


def test_names_stay_distinct_where_file_names_differ_only_after_a_dot(tmp_path: Path) -> None:
    for name in ("x-data.2024-01.jsonl", "x-data.2024-02.jsonl", "b1.jsonl", "b1.txt", "Batch 7.txt"):
        _write(tmp_path / name, '{"text": "hi"}\n')
    _write(tmp_path / "b1" / "part.txt", "a\n")
    _old(tmp_path / "b1")
    scan = FolderInbox(tmp_path, settle_seconds=5).scan()
    names = {r.source: r.name for r in scan.taken}
    assert names == {
        "Batch 7.txt": source_batch_name("Batch 7.txt"),
        "b1": "b1",  # first in name order keeps the plain name ...
        "b1.jsonl": source_batch_name("b1.jsonl"),  # ... the others get the hashed one
        "b1.txt": source_batch_name("b1.txt"),
        "x-data.2024-01.jsonl": "x-data.2024-01",
        "x-data.2024-02.jsonl": "x-data.2024-02",
    }
    assert len(set(names.values())) == len(names)
    assert scan.not_batches == [] and scan.entries == 6


def test_names_taken_earlier_or_by_manifests_are_never_reused(tmp_path: Path) -> None:
    earlier = {"b1.jsonl": SourceRecord("b1.jsonl", "b1", "0" * 64, 1, 1)}
    _write(tmp_path / "b1.txt", "new\n")
    _write(tmp_path / "b2.txt", "new\n")
    inbox = FolderInbox(tmp_path, dict(earlier), settle_seconds=0, reserved=lambda: {"b2"})
    taken = {r.source: r.name for r in inbox.scan().taken}
    assert taken == {"b1.txt": source_batch_name("b1.txt"), "b2.txt": source_batch_name("b2.txt")}
    assert inbox.records["b1.jsonl"] == earlier["b1.jsonl"]  # deleted after it was taken: kept as is


def test_a_file_is_taken_only_once_it_settled(tmp_path: Path) -> None:
    now = [time.time()]
    inbox = FolderInbox(tmp_path, settle_seconds=5, clock=lambda: now[0])
    _write(tmp_path / "b1.jsonl", '{"text": "one"}\n', old=False)
    first = inbox.scan()
    assert first.taken == []
    assert first.not_batches[0].waiting and "still being written" in first.not_batches[0].reason
    with (tmp_path / "b1.jsonl").open("a") as handle:  # the copy goes on: the settle time starts again
        handle.write('{"text": "two"}\n')
    now[0] = time.time() + 4
    assert inbox.scan().taken == []
    now[0] = time.time() + 6
    (taken,) = inbox.scan().taken
    assert (taken.name, taken.size) == ("b1", (tmp_path / "b1.jsonl").stat().st_size)
    assert taken.sha256 == content_digest(tmp_path / "b1.jsonl")


def test_a_folder_batch_is_taken_at_once_with_its_marker_and_otherwise_once_settled(tmp_path: Path) -> None:
    inbox = FolderInbox(tmp_path, settle_seconds=3600)
    _write(tmp_path / "b1" / "part-1.txt", "a\n", old=False)
    _write(tmp_path / "b2" / "part-1.txt", "a\n", old=False)
    _write(tmp_path / "b2" / "_SUCCESS", "", old=False)
    _write(tmp_path / "_SUCCESS", "")
    _write(tmp_path / ".b3.jsonl.part", "copying\n")
    scan = inbox.scan()
    assert [r.name for r in scan.taken] == ["b2"]
    why = {n.source: (n.waiting, n.reason) for n in scan.not_batches}
    assert why["b1"][0] and "or once it holds _SUCCESS" in why["b1"][1]
    assert why[".b3.jsonl.part"] == (False, "hidden (a leading '.'): never a batch")
    assert not why["_SUCCESS"][0] and "inside a folder batch" in why["_SUCCESS"][1]
    # a file added to an old folder makes it recent again (the folder's mtime changes too)
    _old(tmp_path / "b1")
    _write(tmp_path / "b1" / "part-2.txt", "b\n", old=False)
    later = FolderInbox(tmp_path, settle_seconds=60).scan()
    assert [r.name for r in later.taken] == ["b2"]
    assert any(n.source == "b1" and n.waiting for n in later.not_batches)


def test_a_change_after_taken_is_reported_once_and_a_touch_or_a_deletion_is_not(tmp_path: Path) -> None:
    path = _write(tmp_path / "b1.jsonl", '{"text": "one"}\n')
    inbox = FolderInbox(tmp_path, settle_seconds=0)
    (record,) = inbox.scan().taken
    os.utime(path)  # touched, same content
    assert inbox.scan().changes == []
    path.write_text('{"text": "other"}\n')
    (change,) = inbox.scan().changes
    assert change.record.sha256 == record.sha256 and change.sha256 == content_digest(path)
    assert inbox.scan().changes == []  # reported once ...
    assert inbox.records["b1.jsonl"].changed_sha256 == change.sha256  # ... and still outstanding
    assert inbox.records["b1.jsonl"].sha256 == record.sha256  # what was trained stays recorded
    path.unlink()  # a deleted entry is fine: the warning is over
    scan = inbox.scan()
    assert scan.cleared and inbox.records["b1.jsonl"].changed_sha256 is None
    _write(path, '{"text": "third"}\n')  # the same name again: a change of batch b1, not a new batch
    scan = inbox.scan()
    assert scan.taken == [] and [c.record.name for c in scan.changes] == ["b1"]


def test_records_round_trip_through_json() -> None:
    record = SourceRecord("b1", "b1", "a" * 64, 3, 4, files=2, changed_sha256="b" * 64)
    assert SourceRecord.from_json(record.to_json()) == record


_FILE_NAMES = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40
).filter(lambda n: n not in {".", ".."} and len(n.encode()) <= 255)


@settings(max_examples=100, deadline=None)
@given(st.lists(_FILE_NAMES, min_size=1, max_size=12, unique=True), st.booleans())
def test_property_every_entry_of_any_inbox_gets_its_own_valid_batch_name(
    names: list[str], twice: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        inbox = FolderInbox(Path(folder), settle_seconds=0)
        half = len(names) // 2 if twice else len(names)
        for batch in (names[:half], names[half:]):  # entries arriving over two looks, too
            for name in batch:
                (Path(folder) / name).write_text("x\n")
            inbox.scan()
        expected = {n for n in names if not n.startswith(".") and n != "_SUCCESS"}
        assert set(inbox.records) == expected
        batch_names = [r.name for r in inbox.records.values()]
        assert len(set(batch_names)) == len(batch_names)
        assert all(is_valid_batch_id(n) and object_name_problem(n) is None for n in batch_names)
