"""Local mode over several invocations on one volume: every inbox file is a batch of its own, a file
changed after it trained is reported (exit 3) and never retrained, and another run is refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from continual_operator.cli import run as cli_run
from continual_operator.local.mode import (
    EXIT_OK,
    EXIT_SOURCE_CHANGED,
    LocalModeError,
    LocalOptions,
    LocalRun,
    run_local,
)

DEMO = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"


def _lines(word: str, n: int = 8) -> str:
    return "".join(json.dumps({"text": f"{word} sample {i} of the batch"}) + "\n" for i in range(n))


def _setup(tmp_path: Path, tiny_model: Path) -> LocalOptions:
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # cut at the first dot, as before, both were batch "x-data" and one was never trained
    (inbox / "x-data.2024-01.jsonl").write_text(_lines("january"))
    (inbox / "x-data.2024-02.jsonl").write_text(_lines("february"))
    (inbox / ".x-data.2024-03.jsonl.part").write_text(_lines("march", 3))  # still being copied
    manifest = tmp_path / "run.yaml"
    manifest.write_text(DEMO.read_text())
    return LocalOptions(
        manifest=manifest,
        volume=volume,
        state=volume / ".local-state",
        inbox=inbox,
        poll_seconds=0.2,
        settle_seconds=0,
    )


def _state(options: LocalOptions) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(options.state.iterdir()) if p.is_file()}


def _events(options: LocalOptions, reason: str) -> list[dict]:
    lines = (options.state / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["reason"] == reason]


@pytest.mark.slow
def test_files_become_distinct_batches_and_a_change_after_training_is_reported(
    tiny_model: Path, tmp_path: Path
) -> None:
    options = _setup(tmp_path, tiny_model)
    out: list[str] = []
    assert run_local(options, out=out.append) == EXIT_OK
    batches = json.loads((options.state / "batches.json").read_text())
    assert {n: (b["phase"], b["startStep"], b["endStep"]) for n, b in batches.items()} == {
        "x-data.2024-01": ("Succeeded", 0, 2),
        "x-data.2024-02": ("Succeeded", 2, 4),
    }
    assert (
        f"inbox {options.inbox}: 3 entries -> 2 batches; not batches: .x-data.2024-03.jsonl.part "
        "(hidden (a leading '.'): never a batch)" in out
    )
    trained = _state(options)

    # overwritten with other data after it trained: reported, not retrained, exit 3 until resolved
    (options.inbox / "x-data.2024-01.jsonl").write_text(_lines("other"))
    out.clear()
    assert run_local(options, out=out.append) == EXIT_SOURCE_CHANGED
    (event,) = _events(options, "SourceChanged")
    assert event["type"] == "Warning" and event["name"] == "x-data.2024-01"
    assert "not retrained under this batch" in event["message"]
    assert any("[Warning] TrainingBatch/x-data.2024-01 SourceChanged" in line for line in out)
    assert any(line.startswith("changed after their batch started") for line in out)
    assert json.loads((options.state / "batches.json").read_text()) == batches
    assert json.loads((options.state / "status.json").read_text())["globalStep"] == 4
    assert run_local(options, out=out.append) == EXIT_SOURCE_CHANGED  # still changed: still exit 3 ...
    assert len(_events(options, "SourceChanged")) == 1  # ... but one Event, not one per invocation

    # deleting a trained file is fine
    (options.inbox / "x-data.2024-01.jsonl").unlink()
    assert run_local(options, out=out.append) == EXIT_OK
    assert json.loads((options.state / "batches.json").read_text()) == batches

    # another run on the same volume is refused before anything is written
    other = yaml.safe_load(DEMO.read_text())
    other["metadata"]["name"] = "demo-2"
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    before = _state(options)
    with pytest.raises(LocalModeError, match=r"belongs to run 'demo', not 'demo-2'.*own --volume"):
        run_local(dataclasses.replace(options, manifest=tmp_path / "other.yaml"), out=out.append)
    argv = ["local", "--run", str(tmp_path / "other.yaml"), "--inbox", str(options.inbox)]
    with pytest.raises(SystemExit) as exited:
        cli_run([*argv, "--volume", str(options.volume)])
    assert exited.value.code == 2
    assert _state(options) == before
    assert set(trained) <= set(before)


def test_a_file_still_being_written_is_not_a_batch_yet_and_keeps_local_mode_waiting(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "run.yaml").write_text(DEMO.read_text())
    options = LocalOptions(
        manifest=tmp_path / "run.yaml",
        volume=tmp_path / "v",
        state=tmp_path / "s",
        inbox=inbox,
        settle_seconds=2,
    )
    out: list[str] = []
    state = LocalRun(options, out=out.append)
    (inbox / "batch-001.jsonl").write_text(_lines("partial", 2))  # 2 of 12 lines copied so far
    state.refresh()
    assert state.batches == {} and not state.idle()
    assert len(out) == 1 and out[0].startswith("inbox: waiting for batch-001.jsonl: still being written (")
    time.sleep(1)
    (inbox / "batch-001.jsonl").write_text(_lines("complete", 12))
    state.refresh()
    assert state.batches == {}  # the copy went on: the settle time started again
    time.sleep(2.2)
    state.refresh()
    (batch,) = state.batches.values()
    assert batch.metadata.name == "batch-001"
    assert json.loads((options.state / "sources.json").read_text())["batch-001.jsonl"]["size"] == len(
        _lines("complete", 12)
    )


def test_a_file_changed_before_its_batch_started_trains_the_new_content(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "run.yaml").write_text(DEMO.read_text())
    options = LocalOptions(
        manifest=tmp_path / "run.yaml",
        volume=tmp_path / "v",
        state=tmp_path / "s",
        inbox=inbox,
        settle_seconds=0,
    )
    out: list[str] = []
    state = LocalRun(options, out=out.append)
    (inbox / "b1.jsonl").write_text(_lines("first"))
    state.refresh()
    assert state.batches["b1"].status.phase is None  # taken, not started
    (inbox / "b1.jsonl").write_text(_lines("second", 9))
    state.refresh()
    assert any("SourceUpdated" in line and "it trains the new content" in line for line in out)
    assert state.changed_sources() == []
    recorded = json.loads((options.state / "sources.json").read_text())["b1.jsonl"]
    assert recorded["size"] == len(_lines("second", 9)) and "changed_sha256" not in recorded
