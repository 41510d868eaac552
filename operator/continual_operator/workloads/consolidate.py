"""The ``consolidate`` kind: ``python -m continual_trainer.consolidate`` merges the latest adapter into the
base model and publishes a deployable Hugging Face folder (spec.consolidation.output, on the volume or S3).

Key ``s<step>``: one consolidation per completed step. Result: ``{"kind": "consolidation", "output",
"globalStep", "batches", "dtype", "maxAbsDiff", "tolerance", "completedAt", ...}``.
"""

from __future__ import annotations

from continual_operator.api import ContinualTrainingRun
from continual_operator.workloads.artifact import ArtifactKind, ArtifactRequest

CONSOLIDATE = ArtifactKind("consolidate", "consolidation", ("python", "-m", "continual_trainer.consolidate"))


def consolidate_request(run: ContinualTrainingRun, step: int, attempt: int) -> ArtifactRequest:
    spec = run.spec.consolidation
    assert spec is not None
    return ArtifactRequest(run, f"s{step}", attempt, ("--output", spec.output, "--dtype", spec.dtype))
