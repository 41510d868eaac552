"""Local mode's state folder (its etcd): one process at a time, one run per folder, inbox records.

* **one process**: an exclusive ``flock`` on ``STATE/lock`` (released by the kernel when the process dies,
  so a crash never leaves a stale lock). A second local-mode process on the same state folder, or on the
  same volume, is refused up front instead of racing the first one's trainer into retries.
* **one run**: ``STATE/run.json`` names the run that owns the folder (``namespace: local``,
  ``uid: local:<name>``, as local mode renders them to the trainer); another run's manifest is refused before
  anything is written, so it can neither continue the first run's adapter nor overwrite its statuses.
* **inbox records**: ``STATE/sources.json``, what was taken from the folder inbox
  (:class:`continual_operator.local.folder_inbox.SourceRecord`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from continual_operator.local.folder_inbox import SourceRecord
from continual_trainer.fsutil import atomic_write_json

LOCAL_NAMESPACE = "local"


class LocalModeError(Exception):
    """A problem with local mode's input (manifest, folders, state): the CLI prints it and exits 2."""


def run_uid(name: str) -> str:
    """The uid local mode gives a run (a cluster would give a UUID)."""
    return f"{LOCAL_NAMESPACE}:{name}"


@contextlib.contextmanager
def locked(*paths: Path) -> Iterator[None]:
    """Hold an exclusive lock on each of ``paths`` (lock files, created as needed), or refuse at once."""
    with contextlib.ExitStack() as stack:
        for path in dict.fromkeys(paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle: IO[str] = stack.enter_context(path.open("a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise LocalModeError(
                    f"{path} is locked by {holder}: another `continual-training local` (or demo) is running "
                    "on this volume or state folder. Wait for it to finish or stop it (Ctrl-C), then run "
                    "this command again"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
        yield


def claim(state: Path, run_name: str) -> None:
    """Record that ``state`` belongs to ``run_name``, or refuse when it belongs to another run."""
    path = state / "run.json"
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        owner = None
    except ValueError as exc:
        raise LocalModeError(f"{path} is unreadable ({exc}); move the state folder aside") from exc
    if owner is not None and owner.get("name") != run_name:
        raise LocalModeError(
            f"the state folder {state} belongs to run {owner.get('name')!r}, not {run_name!r}: training "
            f"{run_name!r} here would continue the other run's adapter and overwrite its statuses. Give "
            f"this run its own --volume (or its own --state and spec.storage.subPath); nothing was changed"
        )
    if owner is None:
        state.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"name": run_name, "namespace": LOCAL_NAMESPACE, "uid": run_uid(run_name)})


def load_sources(state: Path) -> dict[str, SourceRecord]:
    """The inbox records of earlier invocations (none on a new state folder)."""
    path = state / "sources.json"
    try:
        data = json.loads(path.read_text())
        return {source: SourceRecord.from_json(record) for source, record in data.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError) as exc:
        raise LocalModeError(f"{path} is unreadable ({exc}); move the state folder aside") from exc


def save_sources(state: Path, records: dict[str, SourceRecord]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state / "sources.json", {s: r.to_json() for s, r in sorted(records.items())})
