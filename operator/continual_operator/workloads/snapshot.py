"""The ``snapshot`` kind: ``python -m continual_trainer.snapshot create`` uploads the run folder to S3.

Key ``s<step>``: one snapshot per completed step. Arguments: ``--destination`` (spec.snapshots.destination),
``--keep``, ``--pin`` (retention, applied by the job after its manifest is committed) and
``--inbox-state`` (the run's ``status.inbox``, so that the S3 inbox's watermark travels with the snapshot).
Result: ``{"kind": "snapshot", "uri", "snapshotId", "globalStep", "batches", "completedAt", ...}``.
"""

from __future__ import annotations

import json

from continual_operator.api import ContinualTrainingRun
from continual_operator.workloads.artifact import ArtifactKind, ArtifactRequest

SNAPSHOT = ArtifactKind("snapshot", "snapshot", ("python", "-m", "continual_trainer.snapshot", "create"))


def snapshot_request(run: ContinualTrainingRun, step: int, attempt: int) -> ArtifactRequest:
    spec = run.spec.snapshots
    assert spec is not None
    args = ["--destination", spec.destination, "--keep", str(spec.keep)]
    for pinned in spec.pin:
        args += ["--pin", pinned]
    if run.status.inbox is not None:
        args += [
            "--inbox-state",
            json.dumps(
                run.status.inbox.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
            ),
        ]
    return ArtifactRequest(run, f"s{step}", attempt, tuple(args))
