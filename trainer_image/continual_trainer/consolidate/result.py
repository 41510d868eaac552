"""The consolidation job's result record: one JSON line in the termination-message file (no torch here).

The shape is the artifact-job contract shared with the operator (``status.lastConsolidation`` is read
from it) and with local mode; camelCase on the wire, like every other record of the trainer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from continual_trainer.config import Model
from continual_trainer.records import shortened_termination_message

#: Output dtypes, as the command line and the manifest spell them.
OutputDType = Literal["float32", "bfloat16", "float16"]


class ConsolidationResult(Model):
    """A finished consolidation (``exitCode`` 0), or why there is none (``reason`` and ``message``)."""

    kind: Literal["consolidation"] = "consolidation"
    output: str | None = Field(
        default=None,
        description="Where the model was published: a volume folder, or s3://bucket/prefix/<id>/.",
    )
    global_step: int | None = Field(default=None, description="The adapter's global step.")
    batches: int | None = Field(default=None, description="Completed batches the adapter has trained.")
    dtype: str | None = Field(default=None, description="The published weights' dtype.")
    shards: int | None = Field(default=None, description="Safetensors shards written.")
    max_abs_diff: float | None = Field(
        default=None, description="The check's measured max |logits(merged) - logits(base + adapter)|."
    )
    tolerance: float | None = Field(default=None, description="The check's tolerance (maxAbsDiff <= it).")
    completed_at: str | None = Field(default=None, description="RFC 3339 UTC time of the publish.")
    exit_code: int = 0
    reason: str | None = None
    message: str | None = Field(default=None, description="For failures: what went wrong and the fix.")

    def to_termination_message(self) -> str:
        """A JSON document of at most 4 KB (the message is shortened if needed)."""
        return shortened_termination_message(self)
