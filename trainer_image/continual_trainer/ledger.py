"""The batch ledger: what the run's volume knows about every batch, written before training starts.

Layout under ``<run_dir>/ledger/``::

    run.json                 the run's identity: which run owns the volume, the base model (path relative to
                             the data root or hub id, plus digests) and LoRA config (what drift is checked
                             against); written once the model and adapter were built, never before
    batches/<batch-id>.json  one record per batch: data digest, start and target step, the training settings
                             it started with, attempts, state, result

A batch's record is written (atomically) before its first attempt trains anything, and a retry reuses it:
the start step, the target step and the LR settings are never recomputed, so a retry after a config change
or a crash continues exactly the same batch. The ledger is also what makes a re-run of a finished batch a
no-op, and what retention asks before deleting a checkpoint.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError

from continual_trainer.config import BaseModelSpec, DataSpec, LoraSpec, Model, TrainingSpec
from continual_trainer.exitcodes import IntegrityError
from continual_trainer.fsutil import atomic_write_json
from continual_trainer.identity import ModelIdentity, RunIdentity
from continual_trainer.records import BatchResult

_M = TypeVar("_M", bound=Model)

BatchState = Literal["started", "completed", "failed"]


def utcnow() -> str:
    """RFC 3339 UTC timestamp."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RestoredFrom(Model):
    """Where a restored run's folder came from: the snapshot, and the run that took it (provenance)."""

    run: RunIdentity | None = Field(description="The run the snapshot was taken from.")
    snapshot_id: str
    uri: str = Field(description="The snapshot's folder, s3://bucket/prefix/<snapshotId>/.")
    global_step: int
    restored_at: str = Field(description="When the restore committed (RFC 3339 UTC).")


class RunRecord(Model):
    """Fixed for the life of a run: a change to any of these is configuration drift (or another run)."""

    base_model: BaseModelSpec = Field(
        description="baseModel as the config named it when the record was written (for people; the drift "
        "check uses ``model``, or this for records written before it existed)."
    )
    lora: LoraSpec
    created_at: str
    model: ModelIdentity | None = Field(
        default=None, description="The base model's identity; None in records written before it existed."
    )
    run: RunIdentity | None = Field(
        default=None,
        description="The run the volume belongs to; None in records written before it existed (the first "
        "run that comes adopts the volume).",
    )
    rebuilt_from: str | None = Field(
        default=None,
        description="Set when run.json was missing and rebuilt from this checkpoint or adapter folder.",
    )
    restored_from: RestoredFrom | None = Field(
        default=None,
        description="Set when the folder was restored from a snapshot: ``run`` is then the run it was "
        "restored for, and this keeps the run the snapshot was taken from.",
    )


class Rebuild(Model):
    """A batch-end checkpoint that was found damaged and re-trained bit for bit (see train.py, "rebuild")."""

    step: int = Field(description="The batch-end step whose checkpoint was rebuilt.")
    from_step: int = Field(description="The checkpoint it was re-trained from (0: from the base model).")
    at: str = Field(description="When (RFC 3339 UTC).")
    reason: str = Field(description="Why the checkpoint was rejected (its quarantine reason).")


class BatchRecord(Model):
    """Everything needed to (re)train one batch exactly."""

    batch_id: str
    sequence: int = Field(description="1 for the run's first batch, then 2, 3, ...")
    data_path: str
    data: DataSpec | None = Field(
        default=None,
        description="The batch's data spec as given (records written before it existed have data_path only); "
        "a damaged batch-end checkpoint is rebuilt from it.",
    )
    data_digest: str
    samples: int
    start_step: int
    target_step: int
    training: TrainingSpec = Field(description="The settings the batch started with; retries reuse them.")
    state: BatchState = "started"
    attempts: int = 1
    created_at: str
    completed_at: str | None = None
    result: BatchResult | None = None
    rebuilds: list[Rebuild] = Field(
        default_factory=list,
        description="Batch-end checkpoints of this batch that were rebuilt, oldest first.",
    )


class Ledger:
    """Reads and writes the ledger of one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "ledger"
        self.batches_dir = self.root / "batches"

    # -- run record -------------------------------------------------------------------------------------
    def read_run(self) -> RunRecord | None:
        """The run record, or None for a new run."""
        path = self.root / "run.json"
        if not path.exists():
            return None
        return self._parse(path, RunRecord)

    def write_run(self, record: RunRecord) -> None:
        """Create the run record (once, at the first batch)."""
        atomic_write_json(self.root / "run.json", record.model_dump(mode="json", by_alias=True))

    # -- batch records ----------------------------------------------------------------------------------
    def read_batch(self, batch_id: str) -> BatchRecord | None:
        """The record of one batch, or None if it never started."""
        path = self.batches_dir / f"{batch_id}.json"
        if not path.exists():
            return None
        return self._parse(path, BatchRecord)

    def write_batch(self, record: BatchRecord) -> None:
        """Create or replace a batch record atomically."""
        atomic_write_json(
            self.batches_dir / f"{record.batch_id}.json", record.model_dump(mode="json", by_alias=True)
        )

    def batches(self) -> list[BatchRecord]:
        """All batch records, in the order they started."""
        if not self.batches_dir.is_dir():
            return []
        records = [self._parse(p, BatchRecord) for p in self.batches_dir.glob("*.json")]
        return sorted(records, key=lambda r: r.sequence)

    def last_completed(self) -> BatchRecord | None:
        """The completed batch that ended last (its end checkpoint is protected from retention)."""
        done = [r for r in self.batches() if r.state == "completed"]
        return max(done, key=lambda r: r.target_step) if done else None

    @staticmethod
    def _parse(path: Path, kind: type[_M]) -> _M:
        try:
            return kind.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            raise IntegrityError(
                f"the ledger file {path} is unreadable ({exc.__class__.__name__}: {exc}); it is written "
                "atomically, so this means outside interference: restore the run's last snapshot into a new run "
                "(spec.restoreFrom: s3://BUCKET/PREFIX/<snapshotId>/ on a new ContinualTrainingRun; local mode: "
                "continual-training restore --volume NEW_VOLUME --source s3://BUCKET/PREFIX/<snapshotId>/)"
            ) from exc
