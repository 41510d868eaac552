"""``main(config)``: train exactly one data batch of a continual run, resumably and exactly once.

A :class:`BatchSession` does it in explicit phases (:data:`PHASES`: lock, check, load, record, resume,
train, verify, publish), one method each; the table says which phases only the coordinator runs. The order
of work is chosen so that nothing is lost and nothing is trained twice:

1. take the volume's lock (one writer per run, ever);
2. check the config against the run record (rebuilt from the checkpoints if it went missing): another run's
   config and configuration drift are refused before anything loads;
3. a batch already completed returns at once (a re-run is a no-op);
4. read and check *all* of the batch's data (bad data trains nothing and touches no checkpoint);
5. build the model and its adapter; only then write (or complete) the run record;
6. on the first attempt, plan the batch's ledger record: data spec and digest, start step (the step the
   previous batch ended on), target step and the training settings; a retry reuses the record;
7. phase "resume": validate the checkpoints (quarantine the broken ones) and pick the newest valid one
   inside the batch; without one, phase "rebuild" re-creates the checkpoint the batch starts from (the
   previous batch's end) by re-training the previous batch's last steps, bit for bit; only then is a first
   attempt's record written, so a halt here leaves nothing that blocks a retry;
8. train the remaining steps, publishing checkpoints atomically; on SIGTERM checkpoint and exit "preempted";
9. verify ``global_step == target`` and the final checkpoint, export the adapter, complete the record,
   apply retention.
"""

from __future__ import annotations

import functools
import gc
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from continual_trainer import checkpoints as ckpts
from continual_trainer import preemption, ranks, runrecord, sandbox, timeline
from continual_trainer.config import BaseModelSpec, BatchSpec, DataSpec, LoraSpec, TrainerConfig, TrainingSpec
from continual_trainer.data import BatchSource, LoadedBatch, LocalSource, load_batch
from continual_trainer.exitcodes import (
    ExitCode,
    IntegrityError,
    PermanentError,
    TransientError,
)
from continual_trainer.fsutil import atomic_symlink, exclusive_lock, fsync_tree
from continual_trainer.history import HistorySink
from continual_trainer.identity import require_base_model_folder
from continual_trainer.ledger import BatchRecord, Ledger, Rebuild, RunRecord, utcnow
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
    from peft import PeftModel

    from continual_trainer.model import Encoded, EncodedBatch

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
    def history_file(self) -> Path:
        """Every progress event, appended (the report's source: see ``progress.HistorySink``)."""
        return self.root / "history.jsonl"

    @property
    def trace_file(self) -> Path:
        return self.root / "trace.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def make_sinks(config: TrainerConfig, layout: RunLayout) -> Broadcast:
    """The progress sinks the config asks for."""
    sinks: list[ProgressSink] = [HistorySink(layout.history_file)]
    if config.progress.stdout:
        sinks.append(StdoutSink())
    if config.progress.status_file:
        sinks.append(StatusFileSink(layout.status_file))
    if config.progress.kubernetes is not None:
        sinks.append(KubernetesStatusSink(config.progress.kubernetes))
    return Broadcast(sinks)


def resolve_data_path(config: TrainerConfig) -> Path:
    """A relative data path is relative to the run's folder (on the volume); reading it confines it."""
    return sandbox.batch_data_path(config)


def batch_source(config: TrainerConfig) -> BatchSource:
    """Where the batch's bytes come from: the run's volume (data.path) or an object store (data.uri)."""
    if config.batch.data.uri is not None:
        from continual_trainer.s3source import s3_batch_source

        return s3_batch_source(config)
    return LocalSource.from_config(config)


def load_data(config: TrainerConfig) -> LoadedBatch:
    """Read and check the config's batch: the one way data is read, to train it and to rebuild it."""
    return load_batch(batch_source(config), config.batch.data.format)


def data_location(config: TrainerConfig) -> str:
    """Where the batch's data is, for messages: the resolved path on the volume, or the URI."""
    uri = config.batch.data.uri
    return uri if uri is not None else str(resolve_data_path(config))


def recorded_config(config: TrainerConfig, record: BatchRecord) -> TrainerConfig:
    """``config`` as it was for a recorded batch: its id, its data spec and the settings it trained with."""
    data = record.data if record.data is not None else DataSpec(path=record.data_path)
    batch = BatchSpec(id=record.batch_id, data=data)
    return config.model_copy(update={"batch": batch, "training": record.training})


@dataclass(frozen=True)
class Phase:
    """One phase of a batch session: the start-up phase it enters, who runs it, what it does."""

    name: str
    #: The start-up phase it enters (:func:`preemption.phase`: SIGTERM messages and failpoints name it);
    #: None: it stays in the phase before (no new name, so no new failpoint).
    preemption: str | None
    #: "coordinator": only global rank 0 runs it, the other ranks wait for it; "all": every rank takes part
    #: (the other ranks as followers: they train what the coordinator orders, see followers.py, and never
    #: write the volume). With one process the process is the coordinator and runs every phase: this table
    #: is the one place where multi-rank runs differ.
    runs_on: Literal["coordinator", "all"]
    doc: str

    @property
    def coordinator_only(self) -> bool:
        return self.runs_on == "coordinator"


#: The phases of a batch session, in order. "Only the coordinator does this" is decided here, once.
PHASES: dict[str, Phase] = {
    phase.name: phase
    for phase in (
        Phase("lock", "lock", "coordinator", "take the volume's lock: one writer per run, ever"),
        Phase(
            "check",
            "checks",
            "coordinator",
            "run record (another run, drift), the batch's ledger state, its data",
        ),
        Phase("load", "model", "coordinator", "tokenizer, encoded samples, base model and adapter"),
        Phase(
            "record", None, "coordinator", "write the run record; plan the ledger record or count an attempt"
        ),
        Phase(
            "resume",
            None,
            "coordinator",
            "validate checkpoints (quarantine), pick the resume point, or rebuild the start one (trains: all ranks)",
        ),
        Phase("train", "training", "all", "train the remaining steps, publishing checkpoints"),
        Phase("verify", "finishing", "coordinator", "global_step == target, the batch-end checkpoint valid"),
        Phase("publish", None, "coordinator", "export the adapter, complete the ledger record, retention"),
    )
}


@dataclass(frozen=True)
class Checked:
    """What phase "check" established: the run record, the data root, an earlier attempt, the data."""

    run_record: RunRecord | None
    data_root: Path
    earlier: BatchRecord | None
    loaded: LoadedBatch


@dataclass(frozen=True)
class Loaded:
    """What phase "load" built: the tokenizer, the batch's encoded samples, the model with its adapter."""

    tokenizer: Any
    encoding: EncodedBatch
    model: PeftModel


@dataclass(frozen=True)
class Planned:
    """Phase "record": the batch's ledger record; a first attempt's is written once the resume point is known."""

    record: BatchRecord
    first_attempt: bool


class BatchSession:
    """One batch of a run, trained phase by phase (:data:`PHASES`; the module docstring tells why this order).

    ``main`` takes the lock and calls :meth:`run`, which goes through the other phases; each phase is one
    method, and whether it runs on this process is :meth:`runs` (the coordinator runs all of them).
    """

    def __init__(self, config: TrainerConfig, warm: Warm | None = None) -> None:
        self.config = config
        #: What an earlier batch of the same (coalesced) invocation left loaded.
        self.warm = warm if warm is not None else Warm()
        self.layout = RunLayout(config.root)
        self.ledger = Ledger(self.layout.root)
        #: Global rank 0 (one process: always); the other ranks follow it (followers.py), never run a session.
        self.is_coordinator = ranks.current().is_coordinator
        self.started = time.monotonic()

    def runs(self, name: str) -> bool:
        """Whether this process runs the phase ``name`` (a coordinator-only phase runs on rank 0 only)."""
        return self.is_coordinator or not PHASES[name].coordinator_only

    def enter(self, name: str) -> None:
        """Enter a phase: its start-up phase for SIGTERM and failpoints (see preemption.py)."""
        timeline.mark(name)
        at = PHASES[name].preemption
        if at is not None:
            preemption.phase(at)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Phase "lock": hold the volume's lock while the body runs (a second trainer is refused)."""
        self.enter("lock")
        layout = self.layout
        layout.root.mkdir(parents=True, exist_ok=True)
        try:
            with exclusive_lock(layout.lock):
                yield
        except BlockingIOError as exc:
            raise TransientError(
                f"another trainer holds the lock on {layout.lock}: only one process may write a run's volume"
            ) from exc

    def run(self) -> BatchResult:
        """The phases after "lock": the batch's result, or raise a :class:`TrainerError`."""
        self.started = time.monotonic()
        checked = self.check()
        if isinstance(checked, BatchResult):
            return checked
        loaded = self.load(checked)
        planned = self.record(checked)
        session = Session(
            self.config, self.layout, self.ledger, loaded.tokenizer, make_sinks(self.config, self.layout)
        )
        resumed = self.resume(session, planned)
        if resumed.preempted is not None:
            return self._timed(resumed.preempted)
        record = planned.record
        preempted = self.train(session, record, loaded, resumed)
        if preempted is not None:
            return self._timed(preempted)
        final = self.verify(record)
        return self.publish(session, record, loaded, resumed, final)

    def _timed(self, result: BatchResult) -> BatchResult:
        return result.model_copy(update={"duration_seconds": round(time.monotonic() - self.started, 3)})

    def check(self) -> Checked | BatchResult:
        """Phase "check": everything cheap, before anything heavy loads.

        The run record (rebuilt from the checkpoints if it went missing) refuses another run's config and
        configuration drift; a completed batch returns its result at once (a re-run is a no-op); a failed
        one is refused; all of the batch's data is read and checked, and must be what an earlier attempt
        started with.
        """
        self.enter("check")
        config, ledger = self.config, self.ledger
        root = sandbox.data_root(config)
        run_record = runrecord.read_or_rebuild(ledger, self.layout.root)
        runrecord.check(config, run_record, root)
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

        loaded = load_data(config)
        if record is not None and record.data_digest != loaded.digest:
            raise PermanentError(
                f"batch id {batch_id!r} was started with other data ({record.data_digest}, now {loaded.digest}): "
                "a batch's data must not change; give the new data a new batch id",
                reason="BatchDataChanged",
            )
        return Checked(run_record, root, record, loaded)

    def load(self, checked: Checked) -> Loaded:
        """Phase "load": the tokenizer, the encoded batch, the base model with its (seeded) adapter.

        Loading the model is the slow part (even importing its libraries): after every cheap check.
        """
        config = self.config
        require_base_model_folder(config.base_model, checked.data_root)
        self.enter("load")
        timeline.mark("load: import torch, transformers, peft")
        _import_training_libraries()
        from continual_trainer import model as modeling

        base = config.base_model  # main() made an on-volume path absolute (sandbox.confined_base_model)
        warm = self.warm
        timeline.mark("load: tokenizer")
        if warm.tokenizer is None or warm.base != base:
            warm.base, warm.tokenizer, warm.model = base, modeling.load_tokenizer(base), None
        tokenizer = warm.tokenizer
        training = checked.earlier.training if checked.earlier is not None else config.training
        timeline.mark("load: encode")
        encoding = modeling.encode_batch(checked.loaded.samples, tokenizer, training.max_seq_length)
        timeline.mark("load: model")
        model = warm.take_model(config.lora, training, self._start_step(checked))
        if model is None:
            model = modeling.load_model(base, config.lora, training)
        else:
            log.info("batch %s: the model stays loaded from the batch before (coalesced)", config.batch.id)
        return Loaded(tokenizer, encoding, model)

    def _start_step(self, checked: Checked) -> int:
        """The step the batch starts from: its record's, or (planned next) where the last completed one ended."""
        if checked.earlier is not None:
            return checked.earlier.start_step
        last = self.ledger.last_completed()
        return last.target_step if last is not None else 0

    def record(self, checked: Checked) -> Planned:
        """Phase "record": the run record, then the batch's ledger record.

        Only now, with the model and adapter built, may the run record be written (it is what drift is
        checked against: a record from a failed build would refuse the fixed config). A first attempt plans
        its record (start step = where the previous batch ended, target step, settings), which is written
        once the resume point is known (:meth:`resume`); a retry reuses its record and counts the attempt.
        """
        self.enter("record")
        config, ledger = self.config, self.ledger
        runrecord.settle(config, ledger, checked.run_record, checked.data_root)
        record = checked.earlier
        if record is None:
            return Planned(_plan_batch(config, ledger, self.layout, checked.loaded), first_attempt=True)
        record = record.model_copy(update={"attempts": record.attempts + 1})
        ledger.write_batch(record)
        if record.training != config.training:
            log.warning(
                "batch %s keeps the settings it started with; config changes apply next batch",
                record.batch_id,
            )
        return Planned(record, first_attempt=False)

    def resume(self, session: Session, planned: Planned) -> Resumed:
        """Phase "resume" (or "rebuild"), then a first attempt's ledger record is written.

        Only after the resume point is known: a batch that halts before training (no checkpoint to start
        from) leaves no record behind that would block the advised recovery (retry it, or submit its data
        under another batch id).
        """
        self.enter("resume")
        resumed = resume_phase(session, planned.record)
        if resumed.preempted is None and planned.first_attempt:
            record = planned.record
            self.ledger.write_batch(record)
            log.info(
                "batch %s: steps %s..%s (%s samples)",
                record.batch_id,
                record.start_step,
                record.target_step,
                record.samples,
            )
        return resumed

    def train(
        self, session: Session, record: BatchRecord, loaded: Loaded, resumed: Resumed
    ) -> BatchResult | None:
        """Phase "train": the remaining steps (none left: nothing); a result only when SIGTERM stopped it."""
        training = record.training
        window = BatchWindow(record.start_step, record.target_step)

        def lr_fn(step: int) -> float:
            return lr_at(training.lr_schedule, training.learning_rate, step, window)

        resume = resumed.checkpoint
        done_step = resume.step if resume is not None else 0
        event = _event_factory(self.config, record)
        session.sinks.emit(event("batch-started", done_step, resume))
        if done_step >= record.target_step:
            return None
        self.enter("train")
        encoded = loaded.encoding.samples
        return _train(
            self.config,
            self.layout,
            record,
            encoded,
            resume,
            lr_fn,
            loaded.tokenizer,
            session.sinks,
            loaded.model,
        )

    def verify(self, record: BatchRecord) -> Path:
        """Phase "verify": the batch-end checkpoint exists and is valid (else the batch is not complete)."""
        self.enter("verify")
        final = self.layout.checkpoints / f"checkpoint-{record.target_step}"
        reason = ckpts.validate(final, self.config.lora)
        if reason is not None:
            raise IntegrityError(
                f"training stopped but the batch-end checkpoint {final} is not valid ({reason}); the batch is not "
                "complete and will be retried from the last valid checkpoint"
            )
        return final

    def publish(
        self, session: Session, record: BatchRecord, loaded: Loaded, resumed: Resumed, final: Path
    ) -> BatchResult:
        """Phase "publish": export the adapter, complete the ledger record, apply retention, report."""
        self.enter("publish")
        from continual_trainer.engine import read_meter

        layout = self.layout
        meter = read_meter(final, record.start_step, record.target_step)
        adapter = _export_adapter(layout, final, record.target_step, loaded.tokenizer)
        result = BatchResult(
            batch_id=record.batch_id,
            outcome="Succeeded",
            start_step=record.start_step,
            end_step=record.target_step,
            target_step=record.target_step,
            samples=record.samples,
            tokens=meter.tokens,
            mean_loss=meter.mean,
            truncated=loaded.encoding.truncation,
            rebuilt=resumed.rebuilt,
            checkpoint=str(final.relative_to(layout.root)),
            adapter=str(adapter.relative_to(layout.root)),
            duration_seconds=round(time.monotonic() - self.started, 3),
        )
        self.ledger.write_batch(
            record.model_copy(update={"state": "completed", "completed_at": utcnow(), "result": result})
        )
        ckpts.retain(
            ckpts.list_published(layout.checkpoints), record.training.checkpoints_kept, {record.target_step}
        )
        from continual_trainer.s3source import release_cache

        release_cache(self.config)
        self.warm.keep(loaded.model, self.config.lora, record.training, record.target_step)
        event = _event_factory(self.config, record)
        session.sinks.emit(
            event(
                "batch-finished", record.target_step, ckpts.Checkpoint(final, record.target_step), meter.mean
            )
        )
        return result


@dataclass
class Warm:
    """What a coalesced invocation keeps loaded from one batch to the next: the tokenizer and the model.

    The model a batch trained is handed to the next batch only if that one starts where it ended, with the
    same LoRA settings and precision: its adapter weights are then those of the checkpoint the next batch
    resumes from (and are loaded from it again on resume), its base weights never change (frozen), and
    everything else that training depends on (optimizer, scheduler, RNG, data order) is rebuilt per batch
    from the checkpoint and the ledger, as in a fresh process.
    """

    base: BaseModelSpec | None = None
    tokenizer: Any = None
    model: PeftModel | None = None
    key: tuple[LoraSpec, str, int] | None = None

    def take_model(self, lora: LoraSpec, training: TrainingSpec, start_step: int) -> PeftModel | None:
        """The kept model if it fits a batch starting at ``start_step`` (it is handed over once), else None."""
        model, key = self.model, self.key
        self.model = self.key = None
        if model is not None and key == (lora, training.precision, start_step):
            return model
        return None

    def keep(self, model: PeftModel, lora: LoraSpec, training: TrainingSpec, end_step: int) -> None:
        """Keep ``model``, trained to ``end_step``, for the next batch of the invocation."""
        self.model, self.key = model, (lora, training.precision, end_step)


def main(config: TrainerConfig, warm: Warm | None = None) -> BatchResult:
    """Train the config's batch; return its result or raise a :class:`TrainerError`.

    ``warm``: the state an earlier batch of the same coalesced invocation left loaded (see :class:`Warm`).
    """
    # An on-volume base model outside the data root is refused before anything is touched.
    config = config.model_copy(update={"base_model": sandbox.confined_base_model(config)})
    session = BatchSession(config, warm)
    if not session.runs("lock"):
        raise RuntimeError(
            f"{ranks.current().describe()}: main() is the coordinator's; the other ranks run followers.follow "
            "(continual_trainer.cli does so)"
        )
    with session.lock():
        return session.run()


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
    digest = load_data(config).digest
    if digest != record.data_digest:
        raise PermanentError(
            f"batch id {record.batch_id!r} was already trained with other data ({record.data_digest}, now "
            f"{digest}): give the new data a new batch id",
            reason="BatchDataChanged",
        )


def _plan_batch(config: TrainerConfig, ledger: Ledger, layout: RunLayout, loaded: LoadedBatch) -> BatchRecord:
    """First attempt of a batch: fix its start and target steps (written once the resume point is known)."""
    records = _close_abandoned(config, ledger)
    unfinished = [r for r in records if r.state == "started"]
    if unfinished:
        other = unfinished[0]
        raise IntegrityError(
            f"batch {other.batch_id!r} is still in progress (steps {other.start_step}..{other.target_step}); "
            f"batches train one at a time, in order: before {config.batch.id!r}, run {other.batch_id!r} again "
            "to finish it (the same batch id and data), or give it up by listing it in the trainer config's "
            "abandonBatches (the operator does so for a TrainingBatch that failed under "
            "spec.failurePolicy.onPermanentFailure: SkipBatch)",
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
                    "batch explains it: the ledger and the checkpoints disagree; restore the run's last snapshot "
                    "into a new run (spec.restoreFrom: s3://BUCKET/PREFIX/<snapshotId>/ on a new "
                    "ContinualTrainingRun; local mode: continual-training restore --volume NEW_VOLUME --source "
                    "s3://BUCKET/PREFIX/<snapshotId>/)"
                )
            ckpts.quarantine(ckpt.path, f"trained by failed batch(es) {sorted(failed)}", layout.root)
    training = config.training
    steps = total_steps(
        len(loaded.samples),
        training.per_device_batch_size,
        training.gradient_accumulation_steps,
        training.epochs_per_batch,
    )
    return BatchRecord(
        batch_id=config.batch.id,
        sequence=len(records) + 1,
        data_path=config.batch.data.path or str(config.batch.data.uri),
        data=config.batch.data,
        data_digest=loaded.digest,
        samples=len(loaded.samples),
        start_step=start,
        target_step=start + steps,
        training=training,
        created_at=utcnow(),
    )


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
    """The newest valid checkpoint inside the batch's window (None: there is none)."""
    beyond = [c for c in valid if c.step > record.target_step]
    if beyond:
        raise IntegrityError(
            f"{beyond[0].path} is past the target step {record.target_step} of batch {record.batch_id!r}, "
            "the batch in progress: global_step would go backwards; restore the run's last snapshot into a new "
            "run (spec.restoreFrom: s3://BUCKET/PREFIX/<snapshotId>/ on a new ContinualTrainingRun; local mode: "
            "continual-training restore --volume NEW_VOLUME --source s3://BUCKET/PREFIX/<snapshotId>/)",
        )
    inside = [c for c in valid if record.start_step <= c.step <= record.target_step]
    return inside[-1] if inside else None


@dataclass(frozen=True)
class Session:
    """What the phases of one invocation share."""

    config: TrainerConfig
    layout: RunLayout
    ledger: Ledger
    tokenizer: Any
    sinks: Broadcast


@dataclass(frozen=True)
class Resumed:
    """Where the batch continues (None: from step 0), or the result of a SIGTERM during a rebuild."""

    checkpoint: ckpts.Checkpoint | None
    preempted: BatchResult | None = None
    #: What the rebuild phase did, for the batch's result (None: nothing was rebuilt).
    rebuilt: str | None = None


def resume_phase(session: Session, record: BatchRecord) -> Resumed:
    """Phase "resume": validate the checkpoints (quarantining broken ones) and pick the newest inside the batch.

    Without one, a batch that does not start at step 0 needs the checkpoint its predecessor ended on: if it
    is damaged or gone, :func:`rebuild_phase` re-creates it.
    """
    config, layout = session.config, session.layout
    valid = ckpts.scan(layout.checkpoints, config.lora, layout.root)
    resume = _resume_point(record, valid)
    if resume is not None or record.start_step == 0:
        return Resumed(resume)
    return rebuild_phase(session, record, valid)


def rebuild_phase(session: Session, record: BatchRecord, valid: list[ckpts.Checkpoint]) -> Resumed:
    """Phase "rebuild": re-train the end of the previous batch to re-create the checkpoint this batch starts from.

    Training is exact and the ledger keeps the previous batch's data spec, data digest and settings, so its
    end checkpoint can be re-created bit for bit: resume from the newest valid checkpoint inside its window
    (or from the base model if it started at step 0) and train its remaining steps, exactly as a retry of
    that batch would. Impossible when its data is gone or changed, or when no checkpoint inside its window
    survived: then halt, naming what exists and what the user can do.
    """
    config, layout, ledger = session.config, session.layout, session.ledger
    step = record.start_step
    why = ckpts.quarantine_reason(layout.root, step) or f"checkpoints/checkpoint-{step} does not exist"
    previous = next((r for r in ledger.batches() if r.state == "completed" and r.target_step == step), None)
    if previous is None:
        problems = [f"no completed batch in the ledger ends at step {step}"]
        raise _cannot_rebuild(session, record, valid, why, problems, previous, data_problem=False)
    base = next((c for c in reversed(valid) if previous.start_step <= c.step < step), None)
    problems = []
    if base is None and previous.start_step > 0:
        problems.append(
            f"no valid checkpoint is left inside batch {previous.batch_id!r} (steps {previous.start_step}.."
            f"{step}) to re-train it from"
        )
    loaded: LoadedBatch | None = None
    source = recorded_config(config, previous)
    try:
        loaded = load_data(source)
        from continual_trainer.s3source import release_cache

        release_cache(source)  # the samples are in memory: a uri batch's re-download is not kept
    except PermanentError as exc:
        problems.append(f"batch {previous.batch_id!r}'s data cannot be read again: {exc.message}")
    else:
        if loaded.digest != previous.data_digest:
            problems.append(
                f"batch {previous.batch_id!r}'s data at {data_location(source)} changed since it trained "
                f"(recorded {previous.data_digest}, now {loaded.digest})"
            )
    if problems or loaded is None:
        data_problem = loaded is None or loaded.digest != previous.data_digest
        raise _cannot_rebuild(session, record, valid, why, problems, previous, data_problem=data_problem)

    from continual_trainer import model as modeling

    origin = base.path.name if base is not None else "the base model (step 0)"
    log.warning(
        "checkpoint-%s (the end of batch %s) is not valid (%s): rebuilding it from %s",
        step,
        previous.batch_id,
        why,
        origin,
    )
    training = previous.training
    encoded = modeling.encode(loaded.samples, session.tokenizer, training.max_seq_length)
    window = BatchWindow(previous.start_step, step)

    def lr_fn(at: int) -> float:
        return lr_at(training.lr_schedule, training.learning_rate, at, window)

    # A model of its own, loaded as that batch trained (its precision): the current batch's stays untouched.
    model = modeling.load_model(config.base_model, config.lora, training)
    stopped = _train(config, layout, previous, encoded, base, lr_fn, session.tokenizer, session.sinks, model)
    if stopped is not None:
        update = {
            "batch_id": record.batch_id,
            "start_step": record.start_step,
            "target_step": record.target_step,
            "samples": record.samples,
            "message": f"SIGTERM while rebuilding checkpoint-{step} of batch {previous.batch_id!r}: "
            f"checkpointed at step {stopped.end_step}; retry to continue",
        }
        return Resumed(None, preempted=stopped.model_copy(update=update))
    final = layout.checkpoints / f"checkpoint-{step}"
    reason = ckpts.validate(final, config.lora)
    if reason is not None:
        raise IntegrityError(f"the rebuilt checkpoint {final} is not valid ({reason}); retry the batch")
    from_step = base.step if base is not None else 0
    entry = Rebuild(step=step, from_step=from_step, at=utcnow(), reason=why)
    ledger.write_batch(previous.model_copy(update={"rebuilds": [*previous.rebuilds, entry]}))
    message = (
        f"checkpoint-{step} (the end of batch {previous.batch_id!r}) was not valid ({why}); rebuilt it bit for "
        f"bit by re-training steps {from_step + 1}..{step} from {origin}"
    )
    log.warning("%s", message)
    rebuilt = ckpts.Checkpoint(final, step)
    event = _event_factory(config, previous)("checkpoint-rebuilt", step, rebuilt)
    session.sinks.emit(event.model_copy(update={"message": message}))
    return Resumed(rebuilt, rebuilt=message)


def _cannot_rebuild(
    session: Session,
    record: BatchRecord,
    valid: list[ckpts.Checkpoint],
    why: str,
    problems: list[str],
    previous: BatchRecord | None,
    *,
    data_problem: bool,
) -> IntegrityError:
    """The halt when a batch-start checkpoint can be neither found nor rebuilt: what exists, what to do."""
    layout, step = session.layout, record.start_step
    have = ", ".join(c.path.name for c in valid) or "none"
    moved = ", ".join(p.name for p in ckpts.quarantined(layout.root, step)) or "none"
    fixes = []
    if previous is not None and data_problem:
        data = data_location(recorded_config(session.config, previous))
        fixes.append(
            f"put batch {previous.batch_id!r}'s data back at {data} exactly as it trained ({previous.data_digest}): "
            "the trainer then rebuilds the checkpoint itself"
        )
    lowest = previous.start_step if previous is not None else step
    fixes.append(
        f"copy a valid checkpoint-<N> with {lowest} <= N <= {step} from a backup of the volume into "
        f"{layout.checkpoints}"
    )
    fixes.append(
        "restore the run's last snapshot into a new run (spec.restoreFrom on a new ContinualTrainingRun; local "
        "mode: continual-training restore --volume NEW_VOLUME --source s3://BUCKET/PREFIX/<snapshotId>/)"
    )
    if session.ledger.read_batch(record.batch_id) is None:
        again = "under this batch id or a new one: nothing of it was recorded"
    else:
        again = "with the same batch id: it continues where it stopped"
    after = f"(the end of batch {previous.batch_id!r})" if previous is not None else ""
    return IntegrityError(
        f"no valid checkpoint at step {step}, where batch {record.batch_id!r} starts {after}: {why}; it cannot "
        f"be rebuilt: {'; '.join(problems)}. Valid checkpoints: {have}; in quarantine/: {moved}. To go on, "
        f"{', or '.join(fixes)}; then run batch {record.batch_id!r} again ({again}). Or start a new run "
        "(a new run folder)",
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
    model: PeftModel,
) -> BatchResult | None:
    """Run the remaining steps of the batch. Returns a result only when preempted.

    Several ranks: the coordinator runs it and orders the followers to run it too (their share of each
    step, :mod:`continual_trainer.followers`); only the coordinator writes the volume and decides the outcome.
    """
    from continual_trainer import engine, followers

    gang = ranks.current()

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
    if gang.is_coordinator:
        # Leftovers of a save that was killed: never complete.
        shutil.rmtree(layout.staging, ignore_errors=True)
        followers.announce(record, resume.path if resume else None, resume.step if resume else 0, encoded)
    event = _event_factory(config, record)
    latest: list[ckpts.Checkpoint | None] = [resume]
    last_time = [time.monotonic(), record.start_step + done]

    def on_publish(staged: Path, step: int) -> None:
        runrecord.stamp(staged, Ledger(layout.root))
        final = ckpts.publish(
            staged, layout.checkpoints, batch_id=record.batch_id, step=step, world_size=gang.world_size
        )
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
        save_steps=lambda _step: training.save_steps,
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
    timeline.mark("train: build Trainer")
    trainer = engine.make_trainer(
        model,
        dataset,
        args,
        settings_at=lambda _step: training,
        lr_fn=lr_fn,
        callbacks=[control, _timeline_callback()],
        meter=meter,
        trace=layout.trace_file if config.trace_samples else None,
    )
    restore = engine.install_sigterm(control.stop)
    timeline.mark("train: Trainer start-up, resume from the checkpoint")
    try:
        trainer.train(resume_from_checkpoint=str(resume.path) if resume is not None else None)
    finally:
        restore()
    if not gang.is_coordinator:
        return None  # a follower trained its share; the coordinator decides and reports the outcome
    step = trainer.state.global_step
    if step >= record.target_step:
        return None
    if control.stop.requested:
        checkpoint = latest[0]
        if checkpoint is None or checkpoint.step != step:
            raise IntegrityError(f"preempted at step {step} but no checkpoint was published at that step")
        sinks.emit(event("batch-preempted", step, checkpoint))
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


@functools.cache
def _import_training_libraries() -> None:
    """Import torch, transformers and peft (through ``model`` and ``engine``) once, with the collector paused.

    The imports create about 400,000 objects that live as long as the process; the collector would walk
    them again and again while they are created (about 0.5 s of a 3 s import on CPU), and at every full
    collection after: the one ``Trainer`` runs before training (accelerate's ``free_memory``, 0.4 s) and
    its own. So it is paused during the imports and they are then moved out of its way (``gc.freeze``).
    Objects created later (models, tensors, a batch's data) are collected as before.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        from continual_trainer import engine, model

        del engine, model
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _timeline_callback() -> Any:
    """A callback that marks the start of the first step and reports the start-up timeline at its end."""
    from transformers import TrainerCallback

    class Marks(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            timeline.mark("train: first step")

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            timeline.report()

    return Marks()


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
