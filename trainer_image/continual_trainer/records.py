"""Records the trainer writes for others to read: batch results and progress events.

These shapes are part of the trainer's contract (no torch here): the operator parses the result record from
the pod's termination message and mirrors progress events into the custom resource's status; local mode
reads them from the volume. camelCase on the wire, like the CRD.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from continual_trainer.config import Model

#: Kubernetes truncates termination messages at 4096 bytes; we stay well under it.
TERMINATION_MESSAGE_LIMIT = 4096

#: ``checkpoint-rebuilt``: a damaged batch-end checkpoint was re-trained bit for bit before the batch that
#: starts from it (``message`` says which, from which checkpoint, and why it was rejected).
#: ``batch-preempted``: SIGTERM stopped the batch at a checkpoint (it resumes from there on a retry).
EventKind = Literal[
    "progress", "checkpoint", "checkpoint-rebuilt", "batch-started", "batch-finished", "batch-preempted"
]


class TruncationSummary(Model):
    """Samples cut to ``training.maxSeqLength`` tokens: the model never saw their tail."""

    samples: int = Field(description="Samples truncated (each counted once, not per epoch).")
    tokens_dropped: int = Field(
        description="Tokens cut off (of very long samples: of the part that was tokenized)."
    )
    characters_not_tokenized: int = Field(
        default=0, description="Characters of very long samples cut off before tokenizing."
    )
    first: str = Field(description="The first truncated sample, as file:line.")


class BatchResult(Model):
    """The outcome of one trainer invocation, written to the ledger and to the termination-message file."""

    batch_id: str
    outcome: Literal["Succeeded", "AlreadyCompleted", "Preempted", "Failed"]
    start_step: int | None = None
    end_step: int | None = Field(default=None, description="Global step reached (the target on success).")
    target_step: int | None = None
    samples: int | None = Field(default=None, description="Samples in the batch (each trained epochs times).")
    tokens: int | None = Field(default=None, description="Trained (label) tokens over the whole batch.")
    mean_loss: float | None = Field(default=None, description="Token-weighted mean loss over the batch.")
    truncated: TruncationSummary | None = Field(
        default=None, description="What truncation to maxSeqLength cut off (absent: nothing)."
    )
    checkpoint: str | None = Field(default=None, description="The checkpoint folder the invocation ended on.")
    adapter: str | None = Field(default=None, description="The exported adapter folder (success only).")
    duration_seconds: float | None = None
    exit_code: int = 0
    reason: str | None = None
    message: str | None = Field(default=None, description="For failures: what went wrong and the fix.")

    def to_termination_message(self) -> str:
        """A JSON document of at most 4 KB (the message is shortened if needed)."""
        text = self.model_dump_json(by_alias=True, exclude_none=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
        message = (self.message or "")[: max(0, len(self.message or "") - overflow)] + " [...]"
        return self.model_copy(update={"message": message}).model_dump_json(by_alias=True, exclude_none=True)


class ProgressEvent(Model):
    """A snapshot of training progress, sent to every progress sink."""

    kind: EventKind = "progress"
    run: str
    batch_id: str
    global_step: int
    batch_start_step: int
    batch_target_step: int
    loss: float | None = None
    learning_rate: float | None = None
    samples_per_second: float | None = None
    latest_checkpoint: str | None = None
    message: str | None = Field(
        default=None, description="checkpoint-rebuilt only: what happened, for an Event."
    )
    time: str = Field(description="RFC 3339 UTC timestamp.")

    @property
    def batch_progress(self) -> float:
        """Fraction of the batch done, 0..1."""
        span = self.batch_target_step - self.batch_start_step
        return 1.0 if span <= 0 else (self.global_step - self.batch_start_step) / span
