"""``history.jsonl``: every progress event of every trainer process, appended, on the run's volume.

Why a history file of our own rather than what already exists: ``trainer_state.json``'s ``log_history``
lives in checkpoints, and retention deletes all but ``checkpointsKept`` of them (the engine also trims
``log_history`` so a long run's checkpoints stay small); it has no batch ids, and a killed attempt's steps
vanish with the checkpoint that was never written. The ledger keeps one result per batch, not per step,
and not the preemptions. ``history.jsonl`` is the only record that keeps every step of every attempt:

* **append-only**, one JSON object per line, each tagged with the ``session`` (one trainer process) that
  wrote it, so a reader tells attempts apart: a retry after a kill re-trains steps that an earlier session
  already logged, and the later session's lines are the ones that count;
* **durable where it matters**: every line is flushed (a crash of the process loses nothing), and the
  file is fsync'd at every checkpoint, batch start and batch end (a crash of the machine loses at most
  the steps since the last checkpoint, which are retrained anyway);
* **tolerant of a torn last line**: a writer killed mid-line leaves a fragment without a newline; the next
  writer ends it with a newline first, and the reader skips lines that do not parse (and says how many).

Like every sink it only observes: training reads nothing from it, so it cannot change a result.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ConfigDict, Field, ValidationError

from continual_trainer.records import ProgressEvent

log = logging.getLogger(__name__)


#: The events after which history.jsonl is fsync'd (a checkpoint makes its steps permanent, so should
#: their history be).
DURABLE_KINDS = frozenset({"checkpoint", "batch-started", "batch-finished", "batch-preempted"})


class HistoryEntry(ProgressEvent):
    """One line of ``history.jsonl``: an event, and the trainer process (session) that emitted it."""

    #: Lines written by a later version may carry more fields: read what we know, ignore the rest.
    model_config = ConfigDict(extra="ignore")

    session: str = Field(description="Which trainer process wrote the line (a new id per invocation).")


class HistorySink:
    """Appends every event to ``history.jsonl`` (module docstring: why, and how it stays readable)."""

    def __init__(self, path: Path, session: str | None = None) -> None:
        self.path = path
        self.session = session or uuid.uuid4().hex[:12]
        self._handle: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("ab")
            if handle.tell() > 0 and not _ends_with_newline(self.path):
                handle.write(b"\n")  # end a line torn by a killed writer, so that ours stays whole
            self._handle = handle
        return self._handle

    def emit(self, event: ProgressEvent) -> None:
        """Append one line; fsync at checkpoints and batch boundaries."""
        entry = HistoryEntry(**event.model_dump(), session=self.session)
        handle = self._open()
        handle.write(entry.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n")
        handle.flush()
        if event.kind in DURABLE_KINDS:
            os.fsync(handle.fileno())

    def close(self) -> None:
        """Close the file (the process exiting does the same)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


@dataclass
class History:
    """``history.jsonl`` read back: the entries in file order, and how many lines were skipped."""

    entries: list[HistoryEntry] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)


def read_history(path: Path) -> History:
    """Read ``history.jsonl``; lines that do not parse (a torn last line) are skipped and counted."""
    history = History()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return history
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            history.entries.append(HistoryEntry.model_validate_json(line))
        except ValidationError:
            history.skipped_lines.append(number)
    if history.skipped_lines:
        log.warning("%s: skipped unreadable lines %s (a torn write)", path, history.skipped_lines)
    return history
