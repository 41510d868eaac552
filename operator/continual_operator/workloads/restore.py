"""The ``restore`` kind: ``python -m continual_trainer.snapshot restore`` verifies a snapshot and writes it
into the (empty) run folder, before the run's first batch.

Key: a hash of ``spec.restoreFrom``, so that a corrected source is a new restore (the failed one of the old
source is left behind). Result: ``{"kind": "restore", "uri", "snapshotId", "globalStep", "batches",
"inbox", ...}``: the run continues from that step, and takes the S3 inbox's watermark back.
"""

from __future__ import annotations

import hashlib

from continual_operator.api import ContinualTrainingRun
from continual_operator.workloads.artifact import ArtifactKind, ArtifactRequest

RESTORE = ArtifactKind("restore", "restore", ("python", "-m", "continual_trainer.snapshot", "restore"))


def restore_key(source: str) -> str:
    """What a restore Job is about: the source, hashed to a label value."""
    return "r" + hashlib.sha256(source.encode()).hexdigest()[:10]


def restore_request(run: ContinualTrainingRun, attempt: int) -> ArtifactRequest:
    source = run.spec.restore_from
    assert source is not None
    return ArtifactRequest(run, restore_key(source), attempt, ("--source", source))
