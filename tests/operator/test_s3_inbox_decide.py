"""The pure S3-inbox decider, as tables: listings in, batches / watermark / Events out (no S3, no cluster)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from continual_operator.api import InboxSpec, InboxStatus
from continual_operator.inbox.decide import (
    AuditPage,
    Ingested,
    Listing,
    SourceObject,
    Unit,
    batch_manifest,
    decide,
    effective_status,
    inbox_batch_name,
    next_start_after,
    retry_seconds,
    wanted,
)
from continual_operator.naming import source_batch_name

RUN = "demo"
T0 = dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def obj(key: str, etag: str = "e1", size: int = 10, modified: float = 0.0) -> SourceObject:
    return SourceObject(key=key, etag=etag, size=size, last_modified=at(modified))


def units(*keys: str, modified: float = 0.0) -> list[Unit]:
    return [Unit(k, obj(k, modified=modified)) for k in keys]


def spec(**kw: Any) -> InboxSpec:
    return InboxSpec.model_validate({"uri": "s3://bucket/in/", **kw})


def ingested(*keys: str, etag: str = "e1", size: int = 10, reported: str | None = None) -> list[Ingested]:
    return [Ingested(inbox_batch_name(RUN, k), k, etag, size, reported) for k in keys]


def listing(new: list[Unit], audit: list[SourceObject] | None = None, **kw: Any) -> Listing:
    page = AuditPage(kw.pop("start_after", None), audit or [], kw.pop("truncated", False))
    return Listing(new, page, kw.pop("listed_at", at(100)), **kw)


# -- forward: order, filters, idempotency -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "watermark", "kw", "created", "new_watermark"),
    [
        # order by key, whatever order the listing came in; sequence numbers follow the key order
        (["b.jsonl", "a.jsonl", "c.jsonl"], None, {}, ["a.jsonl", "b.jsonl", "c.jsonl"], "c.jsonl"),
        # a re-listing below or at the watermark creates nothing
        (["a.jsonl", "b.jsonl"], "b.jsonl", {}, [], "b.jsonl"),
        (["a.jsonl", "b.jsonl", "c.jsonl"], "b.jsonl", {}, ["c.jsonl"], "c.jsonl"),
        # filters: exclude wins over include; the watermark moves past filtered keys
        (["a.jsonl", "b.txt", "c.jsonl"], None, {"include": ["*.jsonl"]}, ["a.jsonl", "c.jsonl"], "c.jsonl"),
        (["a.jsonl", "tmp/x.jsonl"], None, {"exclude": ["tmp/*"]}, ["a.jsonl"], "tmp/x.jsonl"),
    ],
)
def test_forward_order_filters_and_watermark(
    keys: list[str], watermark: str | None, kw: dict[str, Any], created: list[str], new_watermark: str
) -> None:
    old = InboxStatus(watermark=watermark, batches_created=7 if watermark else None)
    decision = decide(RUN, spec(**kw), old, listing(units(*keys)), [])
    assert [b.key for b in decision.create] == created
    assert decision.status.watermark == new_watermark
    first = 8 if watermark else 1
    assert [b.order for b in decision.create] == list(range(first, first + len(created)))
    assert all(b.name == inbox_batch_name(RUN, b.key) for b in decision.create)
    assert decision.status.batches_created == (7 if watermark else 0) + len(created)


def test_a_batch_created_before_a_crash_is_not_created_again_but_the_watermark_moves() -> None:
    # The operator created the batch, then died before patching the watermark: the next poll sees the same
    # key above the watermark and the batch already there.
    decision = decide(RUN, spec(), InboxStatus(), listing(units("a.jsonl", "b.jsonl")), ingested("a.jsonl"))
    assert [(b.key, b.order) for b in decision.create] == [("b.jsonl", 2)]  # a.jsonl keeps number 1
    assert decision.status.watermark == "b.jsonl"
    assert decision.status.batches_created == 2


def test_prefix_mode_waits_for_the_marker_and_keeps_key_order() -> None:
    prefix = spec(batchFrom="Prefix")
    page = [Unit("2025-01/", obj("2025-01/_SUCCESS")), Unit("2025-02/", None), Unit("2025-03/", obj("m"))]
    decision = decide(RUN, prefix, None, listing(page), [])
    assert [(b.key, b.uri) for b in decision.create] == [("2025-01/", "s3://bucket/in/2025-01/")]
    assert decision.status.watermark == "2025-01/"  # 2025-03/ waits behind the incomplete 2025-02/


def test_marker_and_folder_placeholders_are_never_data_and_names_are_injective() -> None:
    assert not wanted(spec(exclude=["*"]), "a")
    assert inbox_batch_name(RUN, "A.jsonl") != inbox_batch_name(RUN, "a.jsonl")
    assert inbox_batch_name("other", "a.jsonl") != inbox_batch_name(RUN, "a.jsonl")
    assert inbox_batch_name(RUN, "a.jsonl") == f"{RUN}-{source_batch_name('a.jsonl')}"
    long_run = "r" * 240
    name = inbox_batch_name(long_run, "x.jsonl")
    assert len(name) <= 253
    assert name != inbox_batch_name(long_run, "y.jsonl")
    assert next_start_after(spec(batchFrom="Prefix"), "2025-01/") == "2025-010"
    assert next_start_after(spec(), "a.jsonl") == "a.jsonl"


# -- below the watermark: late, changed, deleted -----------------------------------------------------------
def test_an_object_below_the_watermark_is_reported_once_and_not_trained() -> None:
    s = spec()
    # first poll: takes b, starts the first audit pass at t=100
    first = decide(RUN, s, None, listing(units("b.jsonl"), [], listed_at=at(100)), [])
    assert first.status.audit_pass_time is not None
    # a.jsonl is uploaded at t=150 (below b); the next pass starts at t=200 and finds it
    page = [obj("a.jsonl", modified=150), obj("b.jsonl")]
    second = decide(RUN, s, first.status, listing([], page, listed_at=at(200)), ingested("b.jsonl"))
    assert second.create == ()
    [event] = second.events
    assert (event.type, event.reason) == ("Warning", "InboxObjectBelowWatermark")
    assert "s3://bucket/in/a.jsonl" in event.message
    assert "copy it to a key that sorts after 'b.jsonl'" in event.message
    assert "spec.data.uri: s3://bucket/in/a.jsonl" in event.message
    assert second.status.late_objects == 1
    # the pass after that began at t=300 > 150: no second report
    third = decide(RUN, s, second.status, listing([], page, listed_at=at(300)), ingested("b.jsonl"))
    assert third.events == ()
    assert third.status.late_objects == 1


def test_a_deleted_batch_is_not_reported_as_late_nor_re_ingested() -> None:
    s = spec()
    status = InboxStatus(watermark="b.jsonl", audit_pass_time="2025-03-01T09:01:00Z", batches_created=2)
    page = [obj("a.jsonl", modified=0), obj("b.jsonl", modified=0)]
    decision = decide(RUN, s, status, listing(units("a.jsonl", "b.jsonl"), page), ingested("b.jsonl"))
    assert decision.create == ()
    assert decision.events == ()


@pytest.mark.parametrize(
    ("listed", "reported", "reason"),
    [
        ([obj("a.jsonl", etag="e2", size=11)], None, "InboxObjectChanged"),
        ([obj("a.jsonl", etag="e1", size=12)], None, "InboxObjectChanged"),
        ([], None, "InboxObjectDeleted"),
        ([obj("a.jsonl", etag="e2", size=11)], "etag:e2", None),  # reported already
        ([], "deleted", None),
        ([obj("a.jsonl")], None, None),  # unchanged
    ],
)
def test_changed_or_deleted_after_ingestion(
    listed: list[SourceObject], reported: str | None, reason: str | None
) -> None:
    status = InboxStatus(watermark="b.jsonl", audit_pass_time="2025-03-01T09:00:00Z")
    page = [*listed, obj("b.jsonl")]
    records = [*ingested("a.jsonl", reported=reported), *ingested("b.jsonl")]
    decision = decide(RUN, spec(), status, listing([], page), records)
    assert decision.create == ()
    assert [e.reason for e in decision.events] == ([reason] if reason else [])
    if reason:
        assert decision.notes[0].batch == inbox_batch_name(RUN, "a.jsonl")
        assert "not retrained" in decision.events[0].message or "not re-created" in decision.events[0].message
        assert decision.status.changed_objects == 1


def test_the_audit_walks_a_long_history_page_by_page_and_wraps() -> None:
    s = spec()
    keys = [f"{i:04}.jsonl" for i in range(6)]
    records = ingested(*keys)
    status = InboxStatus(watermark=keys[-1], audit_pass_time="2025-03-01T09:00:00Z")
    # page 1 of the pass: keys 0-2, truncated; key 1 is missing from it -> deleted (inside the range)
    page1 = [obj(keys[0]), obj(keys[2])]
    first = decide(RUN, s, status, listing([], page1, truncated=True), records)
    assert first.status.audit_cursor == keys[2]
    assert [e.reason for e in first.events] == ["InboxObjectDeleted"]
    assert keys[1] in first.events[0].message
    # page 2 from the cursor: keys 3-5; nothing outside (2, 5] is judged, the pass ends
    page2 = [obj(keys[3]), obj(keys[4]), obj(keys[5])]
    second = decide(RUN, s, first.status, listing([], page2, start_after=keys[2]), records)
    assert second.events == ()
    assert second.status.audit_cursor is None


def test_prefix_mode_audits_markers() -> None:
    s = spec(batchFrom="Prefix")
    status = InboxStatus(watermark="p2/", audit_pass_time="2025-03-01T09:00:00Z")
    page = [obj("p1/_SUCCESS", etag="new"), obj("p1/data.jsonl"), obj("p2/_SUCCESS")]
    decision = decide(RUN, s, status, listing([], page), ingested("p1/", "p2/"))
    assert [e.reason for e in decision.events] == ["InboxObjectChanged"]


# -- the batch and the retry delay ---------------------------------------------------------------------
def test_the_batch_manifest_records_its_source_and_owner() -> None:
    decision = decide(RUN, spec(), None, listing(units("x/a.jsonl")), [])
    [new] = decision.create
    manifest = batch_manifest(namespace="ml", run=RUN, run_uid="uid-1", batch=new)
    assert manifest["spec"] == {"runName": RUN, "order": 1, "data": {"uri": "s3://bucket/in/x/a.jsonl"}}
    meta = manifest["metadata"]
    assert meta["ownerReferences"][0]["uid"] == "uid-1"
    assert meta["annotations"]["continual.dev/source-key"] == "x/a.jsonl"
    assert meta["annotations"]["continual.dev/source-etag"] == "e1"
    assert meta["annotations"]["continual.dev/source-size"] == "10"
    assert Ingested.from_annotations(meta["name"], meta["annotations"]) == Ingested(
        meta["name"], "x/a.jsonl", "e1", 10
    )


def test_retry_delay_doubles_and_is_capped() -> None:
    s = spec(pollSeconds=30)
    assert [retry_seconds(s, n) for n in (1, 2, 3, 10)] == [30, 60, 120, 600]
    assert retry_seconds(spec(pollSeconds=3600), 5) == 3600  # never more often than pollSeconds


def test_a_late_object_seen_by_two_checks_in_the_same_second_is_reported_once() -> None:
    # the store's clock has one-second resolution: both checks began in the second the object came
    status = InboxStatus(watermark="b.jsonl", audit_pass_time="2025-03-01T09:01:40Z")
    page = [obj("a.jsonl", modified=100), obj("b.jsonl")]
    first = decide(RUN, spec(), status, listing([], page, listed_at=at(100.5)), ingested("b.jsonl"))
    assert [e.reason for e in first.events] == ["InboxObjectBelowWatermark"]
    assert first.status.reported_late == ["a.jsonl"]
    second = decide(RUN, spec(), first.status, listing([], page, listed_at=at(100.9)), ingested("b.jsonl"))
    assert second.events == ()
    assert second.status.late_objects == 1


def test_another_uri_or_unit_starts_a_new_watermark_and_the_sequence_goes_on() -> None:
    old = decide(RUN, spec(), None, listing(units("b.jsonl")), []).status
    assert (old.uri, old.batch_from, old.watermark) == ("s3://bucket/in/", "Object", "b.jsonl")
    moved = spec(uri="s3://bucket/other/")
    decision = decide(RUN, moved, old, listing(units("a.jsonl")), [])
    assert [(b.key, b.uri, b.order) for b in decision.create] == [("a.jsonl", "s3://bucket/other/a.jsonl", 2)]
    assert decision.status.watermark == "a.jsonl"
    assert next_start_after(moved, effective_status(moved, old).watermark) is None
    same = decide(RUN, spec(), old, listing(units("a.jsonl", "b.jsonl")), [])
    assert same.create == ()


@pytest.mark.parametrize("marker", ["DONE", "a/_SUCCESS", "_"])
def test_a_marker_must_be_a_name_the_trainer_never_reads_as_data(marker: str) -> None:
    with pytest.raises(ValueError, match="marker"):
        spec(marker=marker)
    assert spec(marker=".done").marker == ".done"
