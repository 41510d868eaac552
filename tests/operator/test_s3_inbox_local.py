"""Local mode's S3 inbox (``--inbox s3://...``): the operator's rules, the watermark in the state folder.

Against moto's S3 over HTTP; the run manifest's ``spec.objectStore`` points at it and the credentials come
from the environment (boto3's chain), as they would on a laptop.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.s3server import S3Server

from continual_operator.inbox.decide import inbox_batch_name
from continual_operator.inbox.local import STATE_FILE, LocalS3Inbox, client_for, inbox_spec
from continual_operator.inbox.store import InboxStoreError
from continual_operator.local.mode import LocalOptions, load_run, run_local

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "operator" / "continual_operator" / "demo" / "run.yaml"
DATA = ROOT / "trainer_image" / "continual_trainer" / "demo_data"
BUCKET = "local-inbox"
URI = f"s3://{BUCKET}/in/"


@pytest.fixture
def store(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.make_bucket(BUCKET)
    return s3_server


def manifest(tmp_path: Path, store: S3Server, **inbox: Any) -> Path:
    body: dict[str, Any] = {
        "apiVersion": "continual.dev/v1alpha1",
        "kind": "ContinualTrainingRun",
        "metadata": {"name": "laptop"},
        "spec": {
            "baseModel": {"path": "models/tiny"},
            "storage": {"existingClaim": "local"},
            "objectStore": store.object_store(),
            **({"inbox": {"uri": URI, **inbox}} if inbox else {}),
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def open_inbox(path: Path, state: Path, uri: str = URI) -> LocalS3Inbox:
    run = load_run(path)
    return LocalS3Inbox.load(inbox_spec(run, uri, 2.0), run.metadata.name, state, lambda: client_for(run))


def test_objects_become_batches_in_key_order_and_a_restart_resumes_from_the_watermark(
    tmp_path: Path, store: S3Server
) -> None:
    store.put(BUCKET, "in/002.jsonl", b"b\n")
    store.put(BUCKET, "in/001.jsonl", b"a\n")
    path, state = manifest(tmp_path, store), tmp_path / "state"
    inbox = open_inbox(path, state)
    now = dt.datetime.now(dt.UTC)
    assert inbox.due(now)
    events = inbox.poll(now)
    assert [e.reason for e in events] == ["InboxBatchesCreated"]
    assert [(b.name, b.uri, b.order) for b in inbox.batches()] == [
        (inbox_batch_name("laptop", "001.jsonl"), f"{URI}001.jsonl", 1),
        (inbox_batch_name("laptop", "002.jsonl"), f"{URI}002.jsonl", 2),
    ]
    assert not inbox.due(now + dt.timedelta(seconds=1))  # pollSeconds 2 (from --poll-seconds)
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["status"]["watermark"] == "002.jsonl"

    # a new process: the same batches, the watermark kept; a late object is reported, not taken
    store.put(BUCKET, "in/000.jsonl", b"late\n")
    store.put(BUCKET, "in/003.jsonl", b"c\n")
    again = open_inbox(path, state)
    events = again.poll(now + dt.timedelta(seconds=3))
    assert sorted(e.reason for e in events) == ["InboxBatchesCreated", "InboxObjectBelowWatermark"]
    assert [b.order for b in again.batches()] == [1, 2, 3]
    assert again.batches()[-1].uri == f"{URI}003.jsonl"


def test_the_manifests_inbox_settings_apply_with_the_uri_from_the_command_line(
    tmp_path: Path, store: S3Server
) -> None:
    store.put(BUCKET, "in/a.jsonl", b"a\n")
    store.put(BUCKET, "in/b.txt", b"b\n")
    path = manifest(tmp_path, store, include=["*.jsonl"], pollSeconds=60)
    inbox = open_inbox(path, tmp_path / "state")
    assert inbox.spec.poll_seconds == 60
    inbox.poll(dt.datetime.now(dt.UTC))
    assert [b.uri for b in inbox.batches()] == [f"{URI}a.jsonl"]


def test_a_missing_bucket_is_reported_and_nothing_is_recorded_but_the_failure(
    tmp_path: Path, store: S3Server
) -> None:
    path, state = manifest(tmp_path, store), tmp_path / "state"
    inbox = open_inbox(path, state, "s3://no-such-bucket/in/")
    with pytest.raises(InboxStoreError, match="no-such-bucket") as caught:
        inbox.poll(dt.datetime.now(dt.UTC))
    assert caught.value.reason == "NoSuchBucket"
    saved = json.loads((state / STATE_FILE).read_text())
    assert saved["batches"] == {}
    assert saved["status"]["consecutiveFailures"] == 1
    assert saved["status"]["watermark"] is None


@pytest.mark.slow
def test_local_mode_trains_the_s3_inbox_in_key_order_with_contiguous_steps(
    tiny_model: Path, tmp_path: Path, store: S3Server
) -> None:
    # two batches keep it short; tests/e2e/test_s3_inbox.py trains three on a cluster
    for name in ("batch-002.jsonl", "batch-001.jsonl"):
        store.put(BUCKET, f"in/{name}", (DATA / name).read_bytes())
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    demo = yaml.safe_load(DEMO.read_text())
    demo["spec"]["objectStore"] = store.object_store()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(demo))
    options = LocalOptions(
        manifest=path, volume=volume, state=tmp_path / "state", s3_inbox=URI, poll_seconds=0.2
    )
    lines: list[str] = []
    assert run_local(options, out=lines.append) == 0, "\n".join(lines)
    run = json.loads((options.state / "status.json").read_text())
    batches = json.loads((options.state / "batches.json").read_text())
    name = demo["metadata"]["name"]
    assert {k: (v["phase"], v["startStep"], v["endStep"]) for k, v in batches.items()} == {
        inbox_batch_name(name, "batch-001.jsonl"): ("Succeeded", 0, 6),
        inbox_batch_name(name, "batch-002.jsonl"): ("Succeeded", 6, 12),
    }
    assert run["globalStep"] == 12
    # a second invocation lists again and creates nothing
    assert run_local(options, out=lines.append) == 0
    assert json.loads((options.state / "batches.json").read_text()) == batches


def test_the_command_line_tells_an_s3_inbox_from_a_folder(tmp_path: Path) -> None:
    from continual_operator.cli import _local_options, build_parser

    args = build_parser().parse_args(
        ["local", "--run", "run.yaml", "--inbox", URI, "--volume", str(tmp_path)]
    )
    options = _local_options(args, tmp_path / "run.yaml")
    assert (options.s3_inbox, options.inbox) == (URI, None)
    args = build_parser().parse_args(
        ["local", "--run", "run.yaml", "--inbox", "drop", "--volume", str(tmp_path)]
    )
    options = _local_options(args, tmp_path / "run.yaml")
    assert options.s3_inbox is None
    assert options.inbox == Path("drop").resolve()
