"""``main(config)``: train exactly one data batch of a continual run, resumably and exactly once.

The order of work is chosen so that nothing is lost and nothing is trained twice:

1. take the volume's lock (one writer per run, ever);
2. check the config against the run record (configuration drift is refused before anything loads);
3. a batch already completed returns at once (a re-run is a no-op);
4. read and check *all* of the batch's data (bad data trains nothing and touches no checkpoint);
5. on the first attempt, write the batch's ledger record: data digest, start step (the step the previous
   batch ended on), target step and the training settings; a retry reuses the record;
6. validate the checkpoints (quarantine the broken ones) and pick the newest valid one inside the batch;
7. train the remaining steps, publishing checkpoints atomically; on SIGTERM checkpoint and exit "preempted";
8. verify ``global_step == target`` and the final checkpoint, export the adapter, complete the record,
   apply retention.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from continual_trainer import checkpoints as ckpts
from continual_trainer.config import TrainerConfig, TrainingSpec
from continual_trainer.data import BatchSource, LoadedBatch, LocalSource, load_batch
from continual_trainer.exitcodes import (
    ConfigDriftError,
    ExitCode,
    IntegrityError,
    PermanentError,
    TransientError,
)
from continual_trainer.fsutil import atomic_symlink, exclusive_lock, fsync_tree
from continual_trainer.ledger import BatchRecord, Ledger, RunRecord, utcnow
from continual_trainer.plan import build_plan, total_steps
from continual_trainer.progress import (
    Broadcast,
    KubernetesStatusSink,
    ProgressSink,
    StatusFileSink,
    StdoutSink,
)
from continual_trainer.records import BatchResult, EventKind, ProgressEvent
from continual_trainer.schedules import BatchWindow, lr_at

if TYPE_CHECKING:
    from continual_trainer.model import Encoded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLayout:
    """Where things live in a run's folder."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def staging(self) -> Path:
        """``Trainer``'s output_dir: checkpoints are written here, then renamed into ``checkpoints``."""
        return self.checkpoints / ".staging"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def trace_file(self) -> Path:
        return self.root / "trace.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def make_sinks(config: TrainerConfig, layout: RunLayout) -> Broadcast:
    """The progress sinks the config asks for."""
    sinks: list[ProgressSink] = []
    if config.progress.stdout:
        sinks.append(StdoutSink())
    if config.progress.status_file:
        sinks.append(StatusFileSink(layout.status_file))
    if config.progress.kubernetes is not None:
        sinks.append(KubernetesStatusSink(config.progress.kubernetes))
    return Broadcast(sinks)


def resolve_data_path(config: TrainerConfig) -> Path:
    """A relative data path is relative to the run's folder (on the volume)."""
    assert config.batch.data.path is not None, "a uri batch has no data path"
    path = Path(config.batch.data.path)
    return path if path.is_absolute() else config.root / path


def batch_source(config: TrainerConfig) -> BatchSource:
    """Where the batch's bytes come from: the run's volume (data.path) or an object store (data.uri)."""
    if config.batch.data.uri is not None:
        from continual_trainer.s3source import s3_batch_source

        return s3_batch_source(config)
    return LocalSource(resolve_data_path(config))


def main(config: TrainerConfig) -> BatchResult:
    """Train the config's batch; return its result or raise a :class:`TrainerError`."""
    layout = RunLayout(config.root)
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(layout.lock):
            return _main_locked(config, layout)
    except BlockingIOError as exc:
        raise TransientError(
            f"another trainer holds the lock on {layout.lock}: only one process may write a run's volume"
        ) from exc


def check_drift(config: TrainerConfig, ledger: Ledger) -> None:
    """Refuse a config whose base model or LoRA settings differ from the run's (before loading anything)."""
    run = ledger.read_run()
    if run is None:
        return
    pairs: list[tuple[str, object, object]] = [
        ("baseModel.path", run.base_model.path, config.base_model.path),
        ("baseModel.id", run.base_model.id, config.base_model.id),
        ("baseModel.revision", run.base_model.revision, config.base_model.revision),
        ("lora.r", run.lora.r, config.lora.r),
        ("lora.alpha", run.lora.alpha, config.lora.alpha),
        ("lora.dropout", run.lora.dropout, config.lora.dropout),
        ("lora.targetModules", run.lora.target_modules, config.lora.target_modules),
        ("lora.bias", run.lora.bias, config.lora.bias),
    ]
    for name, recorded, wanted in pairs:
        if recorded != wanted:
            raise ConfigDriftError(
                f"{name} is {wanted!r} but the run's checkpoints were trained with {recorded!r}: a run's base "
                f"model and LoRA settings cannot change. Set {name} back to {recorded!r}, or start a new run "
                "(a new run folder) for the new settings"
            )


def _main_locked(config: TrainerConfig, layout: RunLayout) -> BatchResult:
    started = time.monotonic()
    ledger = Ledger(layout.root)
    check_drift(config, ledger)
    batch_id = config.batch.id
    record = ledger.read_batch(batch_id)

    if record is not None and record.state == "completed":
        _check_same_data(record, config)
        assert record.result is not None
        log.info("batch %s already completed at step %s: nothing to do", batch_id, record.target_step)
        from continual_trainer.s3source import release_cache

        release_cache(config)  # a cache left behind by a process killed right after completing
        return record.result.model_copy(update={"outcome": "AlreadyCompleted", "duration_seconds": 0.0})
    if record is not None and record.state == "failed":
        raise PermanentError(
            f"batch {batch_id} failed permanently before ({record.result.message if record.result else ''}); "
            "submit the data again under a new batch id",
            reason="BatchFailed",
        )

    loaded = load_batch(batch_source(config), config.batch.data.format)
    if record is not None and record.data_digest != loaded.digest:
        raise PermanentError(
            f"batch id {batch_id!r} was started with other data ({record.data_digest}, now {loaded.digest}): "
            "a batch's data must not change; give the new data a new batch id",
            reason="BatchDataChanged",
        )

    # Loading the model is the slow part; do it after every cheap check has passed.
    from continual_trainer import model as modeling

    tokenizer = modeling.load_tokenizer(config.base_model)
    training = record.training if record is not None else config.training
    encoded = modeling.encode(loaded.samples, tokenizer, training.max_seq_length)

    if ledger.read_run() is None:
        ledger.write_run(RunRecord(base_model=config.base_model, lora=config.lora, created_at=utcnow()))
    if record is None:
        record = _begin_batch(config, ledger, layout, loaded)
    else:
        record = record.model_copy(update={"attempts": record.attempts + 1})
        ledger.write_batch(record)
        if record.training != config.training:
            log.warning(
                "batch %s keeps the settings it started with; config changes apply next batch", batch_id
            )

    sinks = make_sinks(config, layout)
    valid = ckpts.scan(layout.checkpoints, config.lora, layout.root)
    resume = _resume_point(record, valid)
    window = BatchWindow(record.start_step, record.target_step)

    def lr_fn(step: int) -> float:
        return lr_at(training.lr_schedule, training.learning_rate, step, window)

    done_step = resume.step if resume is not None else 0
    event = _event_factory(config, record)
    sinks.emit(event("batch-started", done_step, resume))
    if done_step < record.target_step:
        outcome = _train(config, layout, record, encoded, resume, lr_fn, tokenizer, sinks)
        if outcome is not None:  # preempted
            return outcome.model_copy(update={"duration_seconds": round(time.monotonic() - started, 3)})

    final = layout.checkpoints / f"checkpoint-{record.target_step}"
    reason = ckpts.validate(final, config.lora)
    if reason is not None:
        raise IntegrityError(
            f"training stopped but the batch-end checkpoint {final} is not valid ({reason}); the batch is not "
            "complete and will be retried from the last valid checkpoint"
        )
    from continual_trainer.engine import read_meter

    meter = read_meter(final, record.start_step, record.target_step)
    adapter = _export_adapter(layout, final, record.target_step, tokenizer)
    result = BatchResult(
        batch_id=batch_id,
        outcome="Succeeded",
        start_step=record.start_step,
        end_step=record.target_step,
        target_step=record.target_step,
        samples=record.samples,
        tokens=meter.tokens,
        mean_loss=meter.mean,
        checkpoint=str(final.relative_to(layout.root)),
        adapter=str(adapter.relative_to(layout.root)),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    ledger.write_batch(
        record.model_copy(update={"state": "completed", "completed_at": utcnow(), "result": result})
    )
    ckpts.retain(ckpts.list_published(layout.checkpoints), training.checkpoints_kept, {record.target_step})
    from continual_trainer.s3source import release_cache

    release_cache(config)
    sinks.emit(
        event("batch-finished", record.target_step, ckpts.Checkpoint(final, record.target_step), meter.mean)
    )
    return result


def _check_same_data(record: BatchRecord, config: TrainerConfig) -> None:
    """A completed batch re-submitted with other data is an error, not a silent no-op.

    A uri batch is not read from the store again once completed (that would download the whole batch for a
    no-op); the record's digest keeps what it trained.
    """
    if config.batch.data.uri is not None:
        return
    data_path = resolve_data_path(config)
    if not data_path.exists():
        return  # the data may have been cleaned up after training: nothing to compare with
    digest = load_batch(LocalSource(data_path), config.batch.data.format).digest
    if digest != record.data_digest:
        raise PermanentError(
            f"batch id {record.batch_id!r} was already trained with other data ({record.data_digest}, now "
            f"{digest}): give the new data a new batch id",
            reason="BatchDataChanged",
        )


def _begin_batch(
    config: TrainerConfig, ledger: Ledger, layout: RunLayout, loaded: LoadedBatch
) -> BatchRecord:
    """First attempt of a batch: fix its start and target steps in the ledger before training anything."""
    records = _close_abandoned(config, ledger)
    unfinished = [r for r in records if r.state == "started"]
    if unfinished:
        other = unfinished[0]
        raise IntegrityError(
            f"batch {other.batch_id!r} is still in progress (steps {other.start_step}..{other.target_step}); "
            f"batches train one at a time, in order: finish (retry) {other.batch_id!r} before "
            f"{config.batch.id!r}",
            reason="BatchInProgress",
        )
    last = ledger.last_completed()
    start = last.target_step if last is not None else 0
    # Checkpoints past the start were trained by a batch that failed permanently: move them aside.
    failed = {r.batch_id for r in records if r.state == "failed"}
    for ckpt in ckpts.list_published(layout.checkpoints):
        if ckpt.step > start:
            if not failed:
                raise IntegrityError(
                    f"{ckpt.path} is past step {start}, where the last completed batch ended, and no failed "
                    "batch explains it: the ledger and the checkpoints disagree; restore from a snapshot"
                )
            ckpts.quarantine(ckpt.path, f"trained by failed batch(es) {sorted(failed)}", layout.root)
    training = config.training
    steps = total_steps(
        len(loaded.samples),
        training.per_device_batch_size,
        training.gradient_accumulation_steps,
        training.epochs_per_batch,
    )
    record = BatchRecord(
        batch_id=config.batch.id,
        sequence=len(records) + 1,
        data_path=config.batch.data.path or str(config.batch.data.uri),
        data_digest=loaded.digest,
        samples=len(loaded.samples),
        start_step=start,
        target_step=start + steps,
        training=training,
        created_at=utcnow(),
    )
    ledger.write_batch(record)
    log.info(
        "batch %s: steps %s..%s (%s samples)", record.batch_id, start, record.target_step, record.samples
    )
    return record


def _close_abandoned(config: TrainerConfig, ledger: Ledger) -> list[BatchRecord]:
    """Mark the unfinished records of batches the caller gave up on as failed; return all records."""
    records = ledger.batches()
    for i, record in enumerate(records):
        if record.state == "started" and record.batch_id in config.abandon_batches:
            message = f"abandoned before batch {config.batch.id!r} (steps {record.start_step}..{record.target_step})"
            result = BatchResult(
                batch_id=record.batch_id, outcome="Failed", reason="Abandoned", message=message
            )
            records[i] = record.model_copy(update={"state": "failed", "result": result})
            ledger.write_batch(records[i])
            log.warning("batch %s: %s", record.batch_id, message)
    return records


def _resume_point(record: BatchRecord, valid: list[ckpts.Checkpoint]) -> ckpts.Checkpoint | None:
    """The newest valid checkpoint inside the batch's window (None: a fresh start at step 0)."""
    beyond = [c for c in valid if c.step > record.target_step]
    if beyond:
        raise IntegrityError(
            f"{beyond[0].path} is past the target step {record.target_step} of batch {record.batch_id!r}, "
            "the batch in progress: global_step would go backwards; restore the volume from a snapshot",
        )
    inside = [c for c in valid if record.start_step <= c.step <= record.target_step]
    if inside:
        return inside[-1]
    if record.start_step == 0:
        return None
    raise IntegrityError(
        f"no valid checkpoint at step {record.start_step}, where batch {record.batch_id!r} starts (the end of "
        "the previous batch); see quarantine/ for why it was rejected, and restore it from a snapshot",
        reason="MissingBatchStartCheckpoint",
    )


def _event_factory(config: TrainerConfig, record: BatchRecord) -> Callable[..., ProgressEvent]:
    def make(
        kind: EventKind,
        step: int,
        checkpoint: ckpts.Checkpoint | None = None,
        loss: float | None = None,
        lr: float | None = None,
        sps: float | None = None,
    ) -> ProgressEvent:
        return ProgressEvent(
            kind=kind,
            run=config.run_name,
            batch_id=record.batch_id,
            global_step=step,
            batch_start_step=record.start_step,
            batch_target_step=record.target_step,
            loss=loss,
            learning_rate=lr,
            samples_per_second=sps,
            latest_checkpoint=checkpoint.path.name if checkpoint is not None else None,
            time=utcnow(),
        )

    return make


def _train(
    config: TrainerConfig,
    layout: RunLayout,
    record: BatchRecord,
    encoded: list[Encoded],
    resume: ckpts.Checkpoint | None,
    lr_fn: Callable[[int], float],
    tokenizer: object,
    sinks: Broadcast,
) -> BatchResult | None:
    """Run the remaining steps of the batch. Returns a result only when preempted."""
    from continual_trainer import engine
    from continual_trainer import model as modeling

    training: TrainingSpec = record.training
    plan = build_plan(
        record.samples,
        batch_size=training.per_device_batch_size,
        accumulation=training.gradient_accumulation_steps,
        epochs=training.epochs_per_batch,
        seed=training.seed,
        batch_id=record.batch_id,
    )
    done = (resume.step if resume is not None else 0) - record.start_step
    remaining = [(step, encoded) for step in plan[done:]]
    pad_id = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]
    dataset = engine.StepDataset(remaining, pad_id)
    meter = engine.read_meter(resume.path if resume else None, record.start_step, record.start_step + done)
    shutil.rmtree(layout.staging, ignore_errors=True)  # leftovers of a save that was killed: never complete
    event = _event_factory(config, record)
    latest: list[ckpts.Checkpoint | None] = [resume]
    last_time = [time.monotonic(), record.start_step + done]

    def on_publish(staged: Path, step: int) -> None:
        final = ckpts.publish(staged, layout.checkpoints, batch_id=record.batch_id, step=step)
        latest[0] = ckpts.Checkpoint(final, step)
        ckpts.retain(
            ckpts.list_published(layout.checkpoints), training.checkpoints_kept, {record.start_step, step}
        )
        sinks.emit(event("checkpoint", step, latest[0]))

    def on_progress(state: object, logs: dict[str, float]) -> None:
        step = int(state.global_step)  # type: ignore[attr-defined]
        now = time.monotonic()
        steps = step - last_time[1]
        sps = None
        if steps > 0 and now > last_time[0]:
            samples_per_step = training.per_device_batch_size * training.gradient_accumulation_steps
            sps = round(steps * samples_per_step / (now - last_time[0]), 3)
        last_time[0], last_time[1] = now, step
        sinks.emit(event("progress", step, latest[0], logs.get("loss"), logs.get("learning_rate"), sps))

    control = engine.SaveControl(
        save_steps=training.save_steps,
        target=record.target_step,
        boundaries=frozenset({record.target_step}),
        batch_start=lambda _step: record.start_step,
        on_publish=on_publish,
        meter=meter,
        on_progress=on_progress,
    )
    args = engine.training_arguments(
        training,
        output_dir=layout.staging,
        max_steps=record.target_step,
        logging_steps=config.progress.every_steps,
    )
    model = modeling.load_model(config.base_model, config.lora, training)
    trainer = engine.make_trainer(
        model,
        dataset,
        args,
        lr_fn=lr_fn,
        callbacks=[engine.StepSeedCallback(training.seed), control],
        meter=meter,
        trace=layout.trace_file if config.trace_samples else None,
    )
    restore = engine.install_sigterm(control.stop)
    try:
        trainer.train(resume_from_checkpoint=str(resume.path) if resume is not None else None)
    finally:
        restore()
    step = trainer.state.global_step
    if step >= record.target_step:
        return None
    if control.stop.requested:
        checkpoint = latest[0]
        if checkpoint is None or checkpoint.step != step:
            raise IntegrityError(f"preempted at step {step} but no checkpoint was published at that step")
        return BatchResult(
            batch_id=record.batch_id,
            outcome="Preempted",
            start_step=record.start_step,
            end_step=step,
            target_step=record.target_step,
            samples=record.samples,
            checkpoint=str(checkpoint.path.relative_to(layout.root)),
            exit_code=int(ExitCode.PREEMPTED),
            reason="Preempted",
            message=f"SIGTERM: checkpointed at step {step} of {record.target_step}; retry to continue",
        )
    raise IntegrityError(
        f"training stopped at global step {step} before the batch's target step {record.target_step}: the "
        "batch is not complete (it will resume from its last checkpoint)"
    )


def _export_adapter(layout: RunLayout, checkpoint: Path, step: int, tokenizer: object) -> Path:
    """Copy the batch-end adapter to ``adapters/step-N`` (atomically) and point ``adapters/latest`` at it."""
    final = layout.adapters / f"step-{step}"
    if not final.exists():
        staged = layout.adapters / f".staging-step-{step}"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy2(checkpoint / name, staged / name)
        tokenizer.save_pretrained(str(staged))  # type: ignore[attr-defined]
        fsync_tree(staged)
        staged.rename(final)
    atomic_symlink(final.name, layout.adapters / "latest")
    return final
