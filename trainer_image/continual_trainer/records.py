"""Records the trainer writes for others to read: batch results and progress events.

These shapes are part of the trainer's contract (no torch here): the operator parses the result record from
the pod's termination message and mirrors progress events into the custom resource's status; local mode
reads them from the volume. camelCase on the wire, like the CRD.
"""

from __future__ import annotations

import json
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


def shortened_termination_message(record: Model) -> str:
    """``record`` as one JSON document of at most 4 KB, its ``message`` shortened if needed (a result record
    with a ``message`` field: the trainer's, an artifact job's)."""
    text = record.model_dump_json(by_alias=True, exclude_none=True)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
        return text
    overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
    current = str(getattr(record, "message", None) or "")
    message = current[: max(0, len(current) - overflow)] + " [...]"
    return record.model_copy(update={"message": message}).model_dump_json(by_alias=True, exclude_none=True)


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
    rebuilt: str | None = Field(
        default=None,
        description="Set when the checkpoint the batch started from was damaged and rebuilt first: what was "
        "rebuilt, from which checkpoint, and why (for an Event); the ledger records it too.",
    )
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
        return shortened_termination_message(self)


#: What a compact entry of a :class:`JobResult` may leave out, because :func:`parse_results` derives it:
#: a completed batch's checkpoint and adapter folders, and its target step (its end step).
_DERIVED = ("checkpoint", "adapter", "target_step")


class JobResult(Model):
    """The outcome of a coalesced invocation (a config with ``nextBatches``): one result per batch, in order.

    ``results`` holds the batches the invocation reached: the completed ones (``Succeeded`` or
    ``AlreadyCompleted``), then at most one that did not complete (``Preempted``: it resumes from its
    checkpoint on the next attempt; ``Failed``: its exit code and message say why). Batches after that one are
    absent: they were not touched. The ledger keeps every field of every result; the termination message
    (:meth:`to_termination_message`) keeps what the operator needs within Kubernetes' 4096 bytes.
    """

    kind: Literal["batches"] = "batches"
    exit_code: int = Field(description="The invocation's exit code: that of the last result (0: all done).")
    results: list[BatchResult]

    def to_termination_message(self) -> str:
        """A JSON document of at most 4 KB, whatever the results: compacted step by step until it fits.

        1. in full; 2. without what :func:`parse_results` derives (a completed batch's checkpoint, adapter
        and target step); 3. without durations, with the rebuild and truncation details reduced to their
        counts; 4. without those details; last, the message of the batch that did not complete is shortened.
        The ledger keeps every field.
        """
        for level in range(_LEVELS):
            text = self._render(level)
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                return text
        last = self.results[-1]  # an empty list always fits
        message = last.message or ""
        overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT + 16
        shortened = last.model_copy(update={"message": message[: max(0, len(message) - overflow)] + " [...]"})
        return self.model_copy(update={"results": [*self.results[:-1], shortened]})._render(_LEVELS - 1)

    def _render(self, level: int) -> str:
        if level == 0:
            return self.model_dump_json(by_alias=True, exclude_none=True)
        entries = [_compact(r, level) for r in self.results]
        return json.dumps(
            {"kind": self.kind, "exitCode": self.exit_code, "results": entries}, separators=(",", ":")
        )


#: The compaction levels of :meth:`JobResult.to_termination_message`.
_LEVELS = 4


def _compact(result: BatchResult, level: int) -> dict[str, object]:
    """One result at a compaction level >= 1 (see :meth:`JobResult.to_termination_message`)."""
    drop: set[str] = set()
    if result.outcome in ("Succeeded", "AlreadyCompleted"):
        drop.update(_DERIVED)
    if level >= 2:
        drop.update({"duration_seconds", "rebuilt", "truncated"})
    data = result.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude_defaults=True, exclude=drop
    )
    if level == 2 and result.rebuilt is not None:
        data["rebuilt"] = "yes: see the run's ledger"
    if level == 2 and result.truncated is not None:
        summary = result.truncated
        data["truncated"] = {"samples": summary.samples, "tokensDropped": summary.tokens_dropped, "first": ""}
    return data


def parse_results(text: str) -> list[BatchResult]:
    """The batch results in a termination message: a single batch's :class:`BatchResult` or a :class:`JobResult`.

    What a compact :class:`JobResult` left out is derived again: a completed batch's target step is its end
    step, its checkpoint ``checkpoints/checkpoint-<end>`` and its adapter ``adapters/step-<end>``.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("kind") != "batches":
        return [BatchResult.model_validate(data)]
    job = JobResult.model_validate(data)
    return [_derived(r) for r in job.results]


def _derived(result: BatchResult) -> BatchResult:
    if result.outcome not in ("Succeeded", "AlreadyCompleted") or result.end_step is None:
        return result
    end = result.end_step
    defaults = {
        "target_step": end,
        "checkpoint": f"checkpoints/checkpoint-{end}",
        "adapter": f"adapters/step-{end}",
    }
    update = {k: v for k, v in defaults.items() if getattr(result, k) is None}
    return result.model_copy(update=update)


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
