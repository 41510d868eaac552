"""The training curve of a run, read from its volume: what ``report`` draws and the status page shows.

Two records on the volume are read, each for what only it knows:

* ``history.jsonl`` (``continual_trainer.history``): loss and LR at every step of every
  trainer process (*session*), batch starts, checkpoints, preemptions;
* the ledger (``ledger/batches/*.json``): each batch's step range, samples, state and result (tokens,
  mean loss, duration), which stays true even when the history is partial.

How attempts are folded into one curve: within a batch, a step trained by two sessions (a retry after a
kill re-trains the steps after its last checkpoint) keeps the later session's point (training is exact,
so both are equal on CPU; on a GPU the later one is the one the adapter carries). Points are kept per
batch, never merged across batches by step alone: a batch that failed for good is rolled back and the next
batch trains the same step numbers again, so its segment is drawn on its own, as failed.

Pure: reads files, imports neither matplotlib nor torch (the renderers are in ``report``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from continual_trainer.history import HistoryEntry, read_history
from continual_trainer.ledger import BatchRecord, Ledger

HISTORY_FILE = "history.jsonl"
#: How deep below --volume run folders are looked for (a run's folder is the volume's subPath, e.g.
#: ``runs/demo``).
SEARCH_DEPTH = 3

MarkKind = Literal["preempted", "retried"]


@dataclass(frozen=True)
class StepPoint:
    """Loss and learning rate logged at one global step."""

    step: int
    loss: float | None
    learning_rate: float | None


@dataclass(frozen=True)
class Mark:
    """Something that happened at a step: a preemption (SIGTERM), or a retry resuming after a stop."""

    step: int
    kind: MarkKind
    batch_id: str
    label: str


@dataclass
class BatchCurve:
    """One batch: its ledger facts and its points."""

    batch_id: str
    state: str
    start_step: int
    target_step: int
    end_step: int | None
    samples: int
    tokens: int | None
    mean_loss: float | None
    duration_seconds: float | None
    attempts: int
    preemptions: int
    points: list[StepPoint] = field(default_factory=list)


@dataclass
class RunCurve:
    """Everything the report shows about one run."""

    name: str
    run_dir: Path
    batches: list[BatchCurve]
    marks: list[Mark]
    skipped_lines: list[int]

    @property
    def global_step(self) -> int:
        """The step the run has reached (the end of its last completed batch, or the last point)."""
        done = [b.target_step for b in self.batches if b.state == "completed"]
        logged = [p.step for b in self.batches for p in b.points]
        return max([0, *done, *logged])


def find_runs(volume: Path) -> list[Path]:
    """Run folders on a volume: ``volume`` itself or folders below it holding ``ledger/run.json``."""
    found: list[Path] = []
    frontier = [volume]
    for _depth in range(SEARCH_DEPTH + 1):
        below: list[Path] = []
        for folder in frontier:
            if (folder / "ledger" / "run.json").is_file():
                found.append(folder)
                continue  # a run folder holds no other run
            below.extend(p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith("."))
        frontier = below
    return found


def load_curve(run_dir: Path) -> RunCurve:
    """Read a run folder's ledger and history into a :class:`RunCurve`."""
    history = read_history(run_dir / HISTORY_FILE)
    records = Ledger(run_dir).batches()
    by_batch: dict[str, list[HistoryEntry]] = defaultdict(list)
    for entry in history.entries:
        by_batch[entry.batch_id].append(entry)
    batches: list[BatchCurve] = []
    marks: list[Mark] = []
    for record in records:
        entries = by_batch.get(record.batch_id, [])
        batch = _batch_curve(record, entries)
        batches.append(batch)
        marks.extend(_marks(record.batch_id, entries))
    names = [e.run for e in history.entries]
    return RunCurve(
        name=names[-1] if names else run_dir.name,
        run_dir=run_dir,
        batches=batches,
        marks=marks,
        skipped_lines=history.skipped_lines,
    )


def _sessions(entries: list[HistoryEntry]) -> dict[str, list[HistoryEntry]]:
    """Entries grouped by the trainer process that wrote them, in the order the processes ran."""
    sessions: dict[str, list[HistoryEntry]] = {}
    for entry in entries:
        sessions.setdefault(entry.session, []).append(entry)
    return sessions


def _batch_curve(record: BatchRecord, entries: list[HistoryEntry]) -> BatchCurve:
    points: dict[int, StepPoint] = {}
    for entry in entries:  # file order: a later session's point replaces an earlier one (docstring)
        if entry.kind == "progress":
            points[entry.global_step] = StepPoint(entry.global_step, entry.loss, entry.learning_rate)
    sessions = _sessions(entries)
    result = record.result
    return BatchCurve(
        batch_id=record.batch_id,
        state=record.state,
        start_step=record.start_step,
        target_step=record.target_step,
        end_step=result.end_step if result is not None else None,
        samples=record.samples,
        tokens=result.tokens if result is not None else None,
        mean_loss=result.mean_loss if result is not None else None,
        duration_seconds=_duration(record, list(sessions.values())),
        attempts=max(record.attempts, len(sessions)),
        preemptions=sum(1 for e in entries if e.kind == "batch-preempted"),
        points=[points[step] for step in sorted(points)],
    )


def _duration(record: BatchRecord, sessions: list[list[HistoryEntry]]) -> float | None:
    """Seconds the trainer spent on the batch over all attempts: the last attempt's measured duration
    (the result), plus the span of each earlier session as its history shows it."""
    last = record.result.duration_seconds if record.result is not None else None
    earlier = sessions[:-1] if last is not None else sessions
    spans = [_span(s) for s in earlier]
    if last is None and not spans:
        return None
    return round((last or 0.0) + sum(spans), 3)


def _span(session: list[HistoryEntry]) -> float:
    times = [dt.datetime.fromisoformat(e.time) for e in session]
    return (max(times) - min(times)).total_seconds()


def _marks(batch_id: str, entries: list[HistoryEntry]) -> list[Mark]:
    """A preemption where a session says so; a retry where a later session of the batch starts."""
    marks: list[Mark] = []
    for number, session in enumerate(_sessions(entries).values(), start=1):
        marks.extend(
            Mark(e.global_step, "preempted", batch_id, f"{batch_id}: preempted")
            for e in session
            if e.kind == "batch-preempted"
        )
        first = session[0]
        if number > 1 and first.kind == "batch-started":
            marks.append(Mark(first.global_step, "retried", batch_id, f"{batch_id}: attempt {number}"))
    return marks
