"""Local mode's folder inbox: which entries are complete batches, what they are named, what changed.

Every entry of the inbox folder (a file, or a folder of files for a multi-file batch) is one batch. The
rules are those of the S3 inbox, applied to a folder:

* **complete before taken.** A folder batch is taken at once when its marker file (``_SUCCESS``, the
  Hadoop convention the S3 inbox uses) exists, otherwise, like a file, once it has *settled*: nothing in it
  (the file, or every file and sub-folder) was modified for ``settle_seconds``. A writer that pauses for
  longer than that would look finished, so the recommended drop is atomic: write under a hidden name
  (``.batch-007.jsonl.part``) or elsewhere on the same filesystem, then rename into the inbox. Hidden
  entries (a leading ``.``) are never batches.
* **one name per entry.** An entry whose name already is a batch name keeps it without its extension
  (``batch-001.jsonl`` -> ``batch-001``, see :func:`naming.plain_source_name`); any other name, or a plain
  name another entry took first (``b1.jsonl`` and then ``b1.txt``), gets :func:`naming.source_batch_name`
  (readable slug + hash of the full file name). Names are recorded the first time an entry is taken and
  never change, so two entries never share a batch.
* **changed after taken.** Each taken entry's size, modification time and SHA-256 are recorded; an entry
  whose content later differs is reported (once), never retrained under the same batch and never ignored.
  A deleted entry is fine: its batch stays as it is.

This module only looks at the folder; :mod:`continual_operator.local.mode` turns what it finds into
``TrainingBatch`` objects, events and the exit code.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_operator.naming import plain_source_name, source_batch_name

#: The completion marker of a folder batch (the S3 inbox's default too).
DEFAULT_MARKER = "_SUCCESS"
#: How long an entry must be left alone before it is taken (seconds).
DEFAULT_SETTLE_SECONDS = 5.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """Cheap identity of an entry's content: total size, newest modification time, number of files."""

    size: int
    mtime_ns: int
    files: int


@dataclass(frozen=True)
class SourceRecord:
    """What was taken: the entry, its batch name, and its content when taken (local state, JSON)."""

    source: str
    name: str
    sha256: str
    size: int
    mtime_ns: int
    files: int = 1
    #: The digest last reported as a change (reported once per new content, not on every poll).
    changed_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SourceRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.size, self.mtime_ns, self.files)


@dataclass(frozen=True)
class NotABatch:
    """An inbox entry that is not (or not yet) a batch, and why (printed in the summary)."""

    source: str
    reason: str
    waiting: bool = False  # True: it may become one (still being written, no marker yet)


@dataclass(frozen=True)
class Change:
    """A taken entry whose content differs from what was recorded."""

    record: SourceRecord
    sha256: str


@dataclass
class Scan:
    """One look at the inbox."""

    taken: list[SourceRecord] = field(default_factory=list)
    not_batches: list[NotABatch] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    #: Entries whose reported change is over: restored, or deleted.
    cleared: list[SourceRecord] = field(default_factory=list)
    entries: int = 0


def fingerprint(path: Path) -> Fingerprint:
    """Size, newest mtime (folders included: creating a file in one changes its mtime) and file count."""
    stat = path.stat()
    if not path.is_dir():
        return Fingerprint(stat.st_size, stat.st_mtime_ns, 1)
    size, newest, files = 0, stat.st_mtime_ns, 0
    for p in path.rglob("*"):
        st = p.lstat()
        newest = max(newest, st.st_mtime_ns)
        if p.is_file():
            size += st.st_size
            files += 1
    return Fingerprint(size, newest, files)


def content_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in name order)."""
    outer = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        inner = hashlib.sha256()
        with p.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                inner.update(chunk)
        name = "" if p == path else p.relative_to(path).as_posix()
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


@dataclass
class FolderInbox:
    """The inbox folder and what was taken from it (``records``, keyed by entry name, kept in local state)."""

    folder: Path
    records: dict[str, SourceRecord] = field(default_factory=dict)
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    marker: str = DEFAULT_MARKER
    #: Names other batches (``TrainingBatch`` manifests) use: an entry never takes one of them.
    reserved: Callable[[], Iterable[str]] = lambda: ()
    clock: Callable[[], float] = time.time
    _digests: dict[str, tuple[Fingerprint, str]] = field(default_factory=dict, repr=False)

    def scan(self) -> Scan:
        """Take the entries that are complete, list the others with a reason, and find changes."""
        if not self.folder.is_dir():
            raise FileNotFoundError(f"the inbox {self.folder} is not a folder")
        scan = Scan()
        entries = sorted(self.folder.iterdir(), key=lambda p: p.name)
        scan.entries = len(entries)
        for path in entries:
            record = self.records.get(path.name)
            if record is not None:
                change = self._changed(path, record)
                if change is not None:
                    scan.changes.append(change)
                elif record.changed_sha256 is not None and self.records[path.name].changed_sha256 is None:
                    scan.cleared.append(record)
                continue
            outcome = self._take(path)
            if isinstance(outcome, SourceRecord):
                self.records[path.name] = outcome
                scan.taken.append(outcome)
            else:
                scan.not_batches.append(outcome)
        present = {p.name for p in entries}
        for source, record in list(self.records.items()):
            if source not in present and record.changed_sha256 is not None:
                self.records[source] = _replace(record, changed_sha256=None)
                scan.cleared.append(record)
        return scan

    def _take(self, path: Path) -> SourceRecord | NotABatch:
        if path.name.startswith("."):
            return NotABatch(path.name, "hidden (a leading '.'): never a batch")
        if path.name == self.marker:
            return NotABatch(path.name, f"the marker {self.marker} belongs inside a folder batch")
        if not (path.is_file() or path.is_dir()):
            return NotABatch(path.name, "neither a file nor a folder")
        try:
            before = fingerprint(path)
            marked = path.is_dir() and (path / self.marker).is_file()
            age = self.clock() - before.mtime_ns / 1e9
            if not marked and age < self.settle_seconds:
                return NotABatch(
                    path.name,
                    f"still being written (modified {max(age, 0):.1f}s ago; taken once unchanged for "
                    f"{self.settle_seconds:g}s"
                    + (f" or once it holds {self.marker})" if path.is_dir() else ")"),
                    waiting=True,
                )
            digest = content_digest(path)
            if fingerprint(path) != before:
                return NotABatch(path.name, "changed while it was read; looking again later", waiting=True)
        except OSError as exc:
            return NotABatch(path.name, f"cannot be read ({exc.strerror or exc}); fix its permissions")
        name = self._name(path)
        if name is None:
            return NotABatch(
                path.name, "its batch name is taken by another batch; rename the file (any new name works)"
            )
        return SourceRecord(path.name, name, digest, before.size, before.mtime_ns, before.files)

    def _name(self, path: Path) -> str | None:
        taken = {r.name for r in self.records.values()} | set(self.reserved())
        for candidate in (
            plain_source_name(path.name, is_file=not path.is_dir()),
            source_batch_name(path.name),
        ):
            if candidate is not None and candidate not in taken:
                return candidate
        return None

    def accept(self, source: str, sha256: str) -> bool:
        """Record an entry's new content as the one taken (its batch had not started); False when it
        changed yet again meanwhile (then the next scan reports it)."""
        record, looked = self.records[source], self._digests.get(source)
        if looked is None or looked[1] != sha256:
            return False
        try:
            if fingerprint(self.folder / source) != looked[0]:
                return False
        except OSError:
            return False
        now = looked[0]
        self.records[source] = _replace(
            record, sha256=sha256, size=now.size, mtime_ns=now.mtime_ns, files=now.files, changed_sha256=None
        )
        return True

    def _changed(self, path: Path, record: SourceRecord) -> Change | None:
        """A change of content (not a mere touch) not reported before; the record follows a touch."""
        try:
            now = fingerprint(path)
            if now == record.fingerprint:
                return None
            cached = self._digests.get(path.name)
            digest = cached[1] if cached and cached[0] == now else content_digest(path)
            self._digests[path.name] = (now, digest)  # a changed file is not re-read on every poll
        except OSError:
            return None  # deleted (or replaced) while we looked: a deleted entry is fine
        if digest == record.sha256:  # touched, or restored after a change
            self.records[path.name] = _replace(
                record, size=now.size, mtime_ns=now.mtime_ns, files=now.files, changed_sha256=None
            )
            return None
        if digest == record.changed_sha256:
            return None
        self.records[path.name] = _replace(record, changed_sha256=digest)
        return Change(record, digest)


def _replace(record: SourceRecord, **changes: Any) -> SourceRecord:
    return SourceRecord(**{**record.__dict__, **changes})
