"""What the ranks other than the coordinator do: train what the coordinator orders, end as it ends.

One batch session runs per gang, on the coordinator (global rank 0, :mod:`continual_trainer.ranks`): it
alone takes the volume's lock, checks the run record and the data, plans or reuses the ledger record,
validates the checkpoints and picks the one to resume from (or rebuilds the batch's start), publishes,
verifies and exports. A *follower* (every other rank) never writes the volume and decides nothing; it

1. waits for a message from the coordinator;
2. for a :class:`TrainOrder` (sent at the start of every training run of the session: the batch itself,
   and before it the re-training of a damaged batch start), builds the same model and trains its share of
   the same steps from the same checkpoint, in lock step with the coordinator (DDP);
3. for an :class:`Outcome` (sent by the coordinator once its own outcome is decided: success, already
   complete, preempted, a refusal or an error), ends with the same exit code and result.

So the protocol is the same on every path, and "only the coordinator does this" is decided once, in the
CLI: the coordinator runs :func:`continual_trainer.train.main`, the others run :func:`follow`. A rank that
dies fails the attempt (``torchrun`` stops the others); the retry is a fresh gang that resumes from the last
published checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continual_trainer import ranks

if TYPE_CHECKING:
    from continual_trainer.config import TrainerConfig
    from continual_trainer.exitcodes import ExitCode
    from continual_trainer.ledger import BatchRecord
    from continual_trainer.model import Encoded
    from continual_trainer.records import BatchResult, JobResult

log = logging.getLogger(__name__)

#: How long the coordinator tries to hand its outcome to the followers before it exits anyway.
OUTCOME_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class TrainOrder:
    """Train ``record``'s steps from ``resume`` (a checkpoint folder; None: from the base model)."""

    record: dict[str, Any]  # BatchRecord, as JSON (a pydantic model travels as plain data)
    resume: str | None
    resume_step: int
    encoded: list[Encoded]


@dataclass(frozen=True)
class Outcome:
    """The coordinator's outcome: every rank exits with it."""

    code: int
    result: dict[str, Any]  # BatchResult, as JSON


def announce(record: BatchRecord, resume: Path | None, resume_step: int, encoded: list[Encoded]) -> None:
    """Coordinator: tell the followers to train ``record`` from ``resume`` (one process: nothing to do)."""
    gang = ranks.current()
    if not gang.distributed or not gang.is_coordinator:
        return
    order = TrainOrder(record.model_dump(mode="json"), str(resume) if resume else None, resume_step, encoded)
    ranks.broadcast_object(order)


def finish(code: ExitCode, result: BatchResult | JobResult) -> None:
    """Coordinator: hand the outcome to the followers, so that every rank exits with it (best effort).

    A coalesced invocation's outcome is its last batch's: the followers trained every batch's orders.
    """
    gang = ranks.current()
    if not gang.distributed or not gang.is_coordinator or not ranks.joined():
        return
    from continual_trainer.records import JobResult

    if isinstance(result, JobResult):
        if not result.results:
            return
        result = result.results[-1]
    try:
        ranks.broadcast_object(
            Outcome(int(code), result.model_dump(mode="json")), timeout=OUTCOME_TIMEOUT_SECONDS
        )
    except (
        ranks.RankLostError,
        RuntimeError,
        TimeoutError,
    ) as exc:  # a follower is gone: its exit ended the attempt
        log.warning("could not hand the outcome to the other ranks: %s", exc)


def follow(config: TrainerConfig) -> tuple[ExitCode, BatchResult]:
    """Follower: train every order of the coordinator, then return its outcome."""
    from continual_trainer import model as modeling
    from continual_trainer import sandbox
    from continual_trainer.exitcodes import ExitCode
    from continual_trainer.progress import Broadcast
    from continual_trainer.records import BatchResult

    config = config.model_copy(update={"base_model": sandbox.confined_base_model(config)})
    tokenizer = None
    while True:
        message = ranks.broadcast_object(None)
        if isinstance(message, Outcome):
            return ExitCode(message.code), BatchResult.model_validate(message.result)
        if not isinstance(message, TrainOrder):
            raise TypeError(f"unexpected message from the coordinator: {type(message).__name__}")
        if tokenizer is None:
            tokenizer = modeling.load_tokenizer(config.base_model)
        _train_order(config, message, tokenizer, Broadcast([]))


def _train_order(config: TrainerConfig, order: TrainOrder, tokenizer: Any, sinks: Any) -> None:
    from continual_trainer import checkpoints as ckpts
    from continual_trainer import model as modeling
    from continual_trainer import train
    from continual_trainer.ledger import BatchRecord
    from continual_trainer.schedules import BatchWindow, lr_at

    record = BatchRecord.model_validate(order.record)
    training = record.training
    window = BatchWindow(record.start_step, record.target_step)

    def lr_fn(step: int) -> float:
        return lr_at(training.lr_schedule, training.learning_rate, step, window)

    resume = ckpts.Checkpoint(Path(order.resume), order.resume_step) if order.resume else None
    log.info(
        "%s: training steps %s..%s of batch %s",
        ranks.current().describe(),
        order.resume_step if resume else record.start_step,
        record.target_step,
        record.batch_id,
    )
    model = modeling.load_model(config.base_model, config.lora, training)
    layout = train.RunLayout(config.root)
    train._train(config, layout, record, order.encoded, resume, lr_fn, tokenizer, sinks, model)
