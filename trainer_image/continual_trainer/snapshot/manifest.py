"""Snapshot ids, the manifest that commits a snapshot, and the jobs' result records.

A snapshot id is ``<UTC yyyymmddThhmmssZ>-step<globalStep:08d>``: ids sort by time, and the step shows in
a listing. The manifest names every file with its size and sha256, the run it was taken from, the global
step and batches it ends at, and the inbox watermark; it is the last object written, so its presence is
what makes a snapshot *committed*.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from continual_trainer.config import Model
from continual_trainer.identity import RunIdentity

MANIFEST_NAME = "manifest.json"
#: Written first, deleted after the commit: who is uploading, since when (see retention.sweepable).
MARKER_NAME = ".in-progress.json"

SNAPSHOT_ID_RE = re.compile(r"^\d{8}T\d{6}Z-step\d{8}$")
#: The run-folder entries a snapshot may carry; a manifest naming anything else is refused on restore.
TOP_LEVEL = ("checkpoints", "ledger", "adapters", "history.jsonl")


def snapshot_id(when: dt.datetime, global_step: int) -> str:
    """``20261201T030000Z-step00000120``."""
    return f"{when.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-step{global_step:08d}"


def is_snapshot_id(name: str) -> bool:
    """Whether a folder below the destination prefix is a snapshot (anything else is never touched)."""
    return SNAPSHOT_ID_RE.match(name) is not None


def rfc3339(when: dt.datetime) -> str:
    """RFC 3339 UTC, to the second."""
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def safe_relative(path: str) -> str | None:
    """Why a path from a manifest is unsafe to write below the run folder, or None when it is fine."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or "\\" in path:
        return "not a relative POSIX path"
    if any(p in {"", ".", ".."} for p in parts) or "//" in path:
        return "has an empty, '.' or '..' segment"
    if parts[0] not in TOP_LEVEL:
        return f"is outside {', '.join(TOP_LEVEL)}"
    return None


class FileEntry(Model):
    """One file of the snapshot, relative to the run folder (and to the snapshot's prefix)."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe(cls, value: str) -> str:
        problem = safe_relative(value)
        if problem is not None:
            raise ValueError(f"file path {value!r} {problem}")
        return value


class SnapshotManifest(Model):
    """``manifest.json``: what makes a snapshot complete, and what a restore checks every byte against."""

    format: Literal[1] = 1
    snapshot_id: str = Field(pattern=SNAPSHOT_ID_RE.pattern)
    run: RunIdentity = Field(description="The run the snapshot was taken from.")
    global_step: int = Field(ge=0, description="The step the last completed batch ended at.")
    batches: int = Field(ge=0, description="Completed batches.")
    last_batch: str = Field(description="The last completed batch's id.")
    created_at: str = Field(description="When the upload started (RFC 3339 UTC).")
    committed_at: str = Field(description="When the manifest was written.")
    files: list[FileEntry]
    links: dict[str, str] = Field(
        default_factory=dict, description="Symlinks (path -> target), e.g. adapters/latest -> step-120."
    )
    inbox: Any = Field(default=None, description="The --inbox-state JSON given at snapshot time, or null.")

    @field_validator("links")
    @classmethod
    def _safe_links(cls, value: dict[str, str]) -> dict[str, str]:
        for path, target in value.items():
            problem = safe_relative(path)
            if problem is not None:
                raise ValueError(f"link {path!r} {problem}")
            if "/" in target or target in {"", ".", ".."}:
                raise ValueError(f"link {path!r} points at {target!r}: only a sibling name is allowed")
        return value

    @property
    def total_bytes(self) -> int:
        """The size of every file together."""
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        return (self.model_dump_json(by_alias=True, indent=2) + "\n").encode()


def parse_manifest(data: bytes) -> SnapshotManifest:
    """Parse ``manifest.json``; a ValueError says what is wrong with it."""
    try:
        return SnapshotManifest.model_validate(json.loads(data))
    except (ValueError, ValidationError) as exc:
        first = str(exc).splitlines()
        raise ValueError("; ".join(line.strip() for line in first[:4])) from exc


class SnapshotResult(Model):
    """The snapshot job's result line (termination message)."""

    kind: Literal["snapshot"] = "snapshot"
    uri: str
    snapshot_id: str
    global_step: int
    batches: int
    files: int
    bytes: int
    completed_at: str
    retired: list[str]
    swept: list[str]


class RestoreResult(Model):
    """The restore job's result line (termination message)."""

    kind: Literal["restore"] = "restore"
    uri: str
    snapshot_id: str
    global_step: int
    batches: int
    files: int
    bytes: int
    completed_at: str
    inbox: Any = None


class FailedResult(Model):
    """The result line of an artifact job that did not succeed (exit code 64, 75 or 85)."""

    kind: Literal["snapshot", "restore"]
    outcome: Literal["Failed", "Preempted"]
    exit_code: int
    reason: str
    message: str
