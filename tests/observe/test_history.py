"""history.jsonl: every step of every attempt, tagged by session, durable, and readable after a torn write."""

from __future__ import annotations

import json
from collections import defaultdict

from tests.observe.conftest import InterruptedRun

from continual_trainer.history import HistorySink, read_history
from continual_trainer.records import ProgressEvent


def _event(step: int, kind: str = "progress") -> ProgressEvent:
    return ProgressEvent(
        kind=kind,
        run="r",
        batch_id="b1",
        global_step=step,
        batch_start_step=0,
        batch_target_step=6,
        loss=2.5,
        learning_rate=1e-3,
        time="2026-01-01T00:00:00Z",
    )


def test_a_torn_last_line_is_skipped_and_the_next_writer_keeps_its_own_lines_whole(tmp_path):
    path = tmp_path / "history.jsonl"
    first = HistorySink(path, session="one")
    first.emit(_event(1))
    first.emit(_event(2, "checkpoint"))
    first.close()
    with path.open("ab") as handle:  # a writer killed in the middle of a line
        handle.write(b'{"kind": "progress", "run": "r", "batchId": "b1", "globalSt')
    assert [e.global_step for e in read_history(path).entries] == [1, 2]

    second = HistorySink(path, session="two")
    second.emit(_event(3))
    second.close()
    history = read_history(path)
    assert [(e.session, e.global_step) for e in history.entries] == [("one", 1), ("one", 2), ("two", 3)]
    assert history.skipped_lines == [3]


def test_lines_from_a_newer_writer_with_more_fields_are_read(tmp_path):
    path = tmp_path / "history.jsonl"
    line = {**_event(4).model_dump(mode="json", by_alias=True), "session": "s", "futureField": 1}
    path.write_text(json.dumps(line) + "\n")
    assert read_history(path).entries[0].global_step == 4


def test_history_keeps_every_attempt_of_a_preempted_and_a_killed_batch(interrupted_run: InterruptedRun):
    history = read_history(interrupted_run.run_dir / "history.jsonl")
    assert history.skipped_lines == []
    sessions: dict[str, list] = defaultdict(list)
    for entry in history.entries:
        sessions[entry.session].append(entry)
    assert len(sessions) == 4  # b1 preempted, b1 resumed, b2 killed, b2 retried
    runs = list(sessions.values())
    kinds = [[e.kind for e in run if e.kind != "progress"] for run in runs]
    assert kinds[0][0] == "batch-started" and kinds[0][-1] == "batch-preempted"
    assert runs[0][-1].global_step == interrupted_run.preempted_at
    assert kinds[1][0] == "batch-started" and kinds[1][-1] == "batch-finished"
    assert runs[1][0].global_step == interrupted_run.preempted_at  # resumed where it stopped
    assert "batch-finished" not in kinds[2] and "batch-preempted" not in kinds[2]  # SIGKILL: no goodbye
    killed_steps = [e.global_step for e in runs[2] if e.kind == "progress"]
    assert killed_steps[-1] == interrupted_run.killed_after
    retried = {e.global_step: e for e in runs[3] if e.kind == "progress"}
    assert runs[3][0].global_step == 8  # the last checkpoint before the kill
    # every step 1..12 has a loss and an LR, and a step trained twice logged the same loss both times
    steps = {e.global_step for e in history.entries if e.kind == "progress"}
    assert steps == set(range(1, 13))
    for entry in runs[2]:
        if entry.kind == "progress" and entry.global_step in retried:
            assert entry.loss == retried[entry.global_step].loss
            assert entry.learning_rate == retried[entry.global_step].learning_rate
