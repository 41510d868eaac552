"""Reading a data batch: sources (where the bytes are) and formats (how they become samples).

A *source* lists a batch's files and reads them; :class:`LocalSource` reads a path on the run's volume
(confined to the data root by :mod:`continual_trainer.sandbox`), and other sources (object stores)
implement the same :class:`BatchSource` protocol. Formats:

* JSON lines (``*.jsonl``, ``*.json``): one object per line, either ``{"text": ...}`` or
  ``{"prompt": ..., "completion": ...}`` (the loss is then taken on the completion only);
* plain text (anything else): one sample per non-empty line;
* either of them gzip-compressed (``*.jsonl.gz``, ``*.txt.gz``).

Everything is read and checked before training starts, whatever the source (:mod:`continual_trainer.content`):
a malformed line, a missing field, bytes that are not UTF-8, binary content, a control character in a
sample or an empty batch is a :class:`BadDataError` naming the file (and line), and nothing is trained.
A UTF-8 byte order mark at the start of a file is dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from continual_trainer.config import TrainerConfig
from continual_trainer.content import check_text, open_text
from continual_trainer.exitcodes import BadDataError
from continual_trainer.sandbox import batch_data_path, confine, data_root

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
    """A file, or every regular file below a folder (name order; hidden files are ignored).

    Every path is confined to ``root`` (symlinks followed) before it is read, and read through its resolved
    path, so a link swapped after the check cannot lead outside. Names stay as the user sees them.
    """

    def __init__(self, path: Path, root: Path, *, given: str | None = None) -> None:
        self.path = path
        self.root = root
        self.given = given if given is not None else str(path)  # as the config spells it, for messages

    @classmethod
    def from_config(cls, config: TrainerConfig) -> LocalSource:
        """The batch's ``data.path`` (relative to the run's folder), confined to the config's data root."""
        return cls(batch_data_path(config), data_root(config), given=config.batch.data.path)

    def describe(self) -> str:
        """The path."""
        return str(self.path)

    def _confine(self, path: Path) -> Path:
        given = self.given if path == self.path else f"{self.given}, its file {path.relative_to(self.path)}"
        fix = (
            "point batch.data.path at data on the run's volume"
            if path == self.path
            else "remove the symlink from the folder, or replace it by a copy of the file"
        )
        return confine(path, self.root, field="batch.data.path", given=given, fix=fix)

    def files(self) -> list[SourceFile]:
        """Read the files (a missing path is bad data: the batch points nowhere)."""
        real = self._confine(self.path)
        if real.is_file():
            return [SourceFile(self.path.name, real.read_bytes())]
        if real.is_dir():
            return [
                SourceFile(str(path.relative_to(self.path)), target.read_bytes())
                for path, target in self._walk(real)
            ]
        if real.exists():
            raise BadDataError(
                f"data path {self.path} is neither a regular file nor a folder: point batch.data.path at one"
            )
        raise BadDataError(
            f"data path {self.path} does not exist: check the batch's data.path (it is resolved on the "
            "run's volume)"
        )

    def _walk(self, real_root: Path) -> list[tuple[Path, Path]]:
        """(path as named below the folder, confined real path) of every non-hidden file, in name order.

        Symlinked folders inside the root are followed (each real folder once, so a link loop ends); every
        entry is confined before it is looked at, so a link out is refused rather than skipped.
        """
        found: list[tuple[Path, Path]] = []
        seen: set[Path] = set()

        def visit(folder: Path, real_folder: Path) -> None:
            if real_folder in seen:  # a link back up, or a second link to one folder: read it once
                return
            seen.add(real_folder)
            for entry in sorted(folder.iterdir()):  # sorted: which alias wins must not depend on the disk
                if entry.name.startswith("."):
                    continue
                target = self._confine(entry)
                if target.is_dir():
                    visit(entry, target)
                elif target.is_file():
                    found.append((entry, target))
                else:
                    raise BadDataError(
                        f"{entry}: neither a regular file nor a folder (a dangling symlink, a pipe, a "
                        "device?): remove it from the batch folder"
                    )

        visit(self.path, real_root)
        return sorted(found)


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
        text = open_text(f.name, f.data)
        kind = (
            fmt if fmt != "auto" else ("jsonl" if Path(text.format_name).suffix in JSONL_SUFFIXES else "text")
        )
        samples.extend(_parse_file(text.name, text.data, kind))
    if not samples:
        raise BadDataError(
            f"the batch at {source.describe()} has no samples ({len(files)} file(s), all empty): add data "
            "or remove the batch"
        )
    return LoadedBatch(samples=samples, digest=digest_files(files))


def _parse_file(name: str, data: bytes, kind: str) -> list[Sample]:
    samples = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        origin = f"{name}:{number}"
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise BadDataError(
                f"{origin}: not valid UTF-8 (byte {exc.start}): re-encode the file as UTF-8 (or, if it is a "
                "binary file, remove it from the batch)"
            ) from exc
        if not line.strip():
            continue
        if kind == "jsonl":
            samples.append(_parse_jsonl_line(line, origin))
        else:
            check_text(origin, line)
            samples.append(Sample(origin, text=line))
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
        check_text(origin, obj["text"], "field 'text'")
        return Sample(origin, text=obj["text"])
    if "prompt" in obj or "completion" in obj:
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                raise BadDataError(f"{origin}: field '{key}' is missing or not a string")
        if not obj["completion"].strip():
            raise BadDataError(f"{origin}: field 'completion' is empty: there is nothing to learn")
        check_text(origin, obj["prompt"], "field 'prompt'")
        check_text(origin, obj["completion"], "field 'completion'")
        return Sample(origin, prompt=obj["prompt"], completion=obj["completion"])
    raise BadDataError(
        f"{origin}: missing field: expected 'text', or 'prompt' and 'completion' (found: {sorted(obj)})"
    )
