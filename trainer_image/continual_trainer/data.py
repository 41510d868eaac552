"""Reading a data batch: sources (where the bytes are) and formats (how they become samples).

A *source* lists a batch's files and reads them; :class:`LocalSource` reads a path on the run's volume, and
other sources (object stores) implement the same :class:`BatchSource` protocol. Formats:

* JSON lines (``*.jsonl``, ``*.json``): one object per line, either ``{"text": ...}`` or
  ``{"prompt": ..., "completion": ...}`` (the loss is then taken on the completion only);
* plain text (anything else): one sample per non-empty line.

Everything is read and checked before training starts: a malformed line, a missing field, bytes that are
not UTF-8 or an empty batch is a :class:`BadDataError` naming the file and line, and nothing is trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from continual_trainer.exitcodes import BadDataError

JSONL_SUFFIXES = {".jsonl", ".json"}


@dataclass(frozen=True)
class SourceFile:
    """One file of a batch: a display name (for error messages) and its bytes."""

    name: str
    data: bytes


class BatchSource(Protocol):
    """Where a batch's files come from."""

    def describe(self) -> str:
        """A human-readable location (for messages)."""
        ...

    def files(self) -> list[SourceFile]:
        """The batch's files, in a stable order."""
        ...


class LocalSource:
    """A file, or every regular file below a folder (name order; hidden files are ignored)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        """The path."""
        return str(self.path)

    def files(self) -> list[SourceFile]:
        """Read the files (a missing path is bad data: the batch points nowhere)."""
        if self.path.is_file():
            return [SourceFile(self.path.name, self.path.read_bytes())]
        if not self.path.is_dir():
            raise BadDataError(
                f"data path {self.path} does not exist: check the batch's data.path (it is resolved on the "
                "run's volume)"
            )
        paths = sorted(
            p
            for p in self.path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
        )
        return [SourceFile(str(p.relative_to(self.path)), p.read_bytes()) for p in paths]


@dataclass(frozen=True)
class Sample:
    """One training sample and where it came from."""

    origin: str  # "file:line"
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass(frozen=True)
class LoadedBatch:
    """A batch's samples and the digest of its content."""

    samples: list[Sample]
    digest: str


def digest_files(files: Iterable[SourceFile]) -> str:
    """sha256 over names and contents: the same batch id with other data is refused."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + str(len(f.data)).encode() + b"\0")
        h.update(f.data)
    return "sha256:" + h.hexdigest()


def load_batch(source: BatchSource, fmt: Literal["auto", "jsonl", "text"] = "auto") -> LoadedBatch:
    """Read, decode and check every sample of a batch."""
    files = source.files()
    samples: list[Sample] = []
    for f in files:
        kind = fmt if fmt != "auto" else ("jsonl" if Path(f.name).suffix in JSONL_SUFFIXES else "text")
        samples.extend(_parse_file(f, kind))
    if not samples:
        raise BadDataError(
            f"the batch at {source.describe()} has no samples ({len(files)} file(s), all empty): add data "
            "or remove the batch"
        )
    return LoadedBatch(samples=samples, digest=digest_files(files))


def _parse_file(f: SourceFile, kind: str) -> list[Sample]:
    samples = []
    for number, raw in enumerate(f.data.split(b"\n"), start=1):
        origin = f"{f.name}:{number}"
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise BadDataError(
                f"{origin}: not valid UTF-8 (byte {exc.start}): re-encode the file as UTF-8"
            ) from exc
        if not line.strip():
            continue
        samples.append(_parse_jsonl_line(line, origin) if kind == "jsonl" else Sample(origin, text=line))
    return samples


def _parse_jsonl_line(line: str, origin: str) -> Sample:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadDataError(f"{origin}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise BadDataError(f"{origin}: expected a JSON object with 'text' or 'prompt'/'completion'")
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise BadDataError(f"{origin}: field 'text' must be a non-empty string")
        return Sample(origin, text=obj["text"])
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise BadDataError(f"{origin}: field '{key}' is missing or not a string")
        if not obj["completion"].strip():
            raise BadDataError(f"{origin}: field 'completion' is empty: there is nothing to learn")
        return Sample(origin, prompt=obj["prompt"], completion=obj["completion"])
    raise BadDataError(
        f"{origin}: missing field: expected 'text', or 'prompt' and 'completion' (found: {sorted(obj)})"
    )
