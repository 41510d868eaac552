"""The training engine: ``transformers.Trainer`` driven by our step plan, LR policy and RNG discipline.

Five deliberate departures from ``Trainer``'s defaults make a batch-by-batch run exact:

1. **One dataset item = one optimizer step.** Each item holds the step's micro-batches (from
   :mod:`continual_trainer.plan`); ``Trainer`` runs with ``gradient_accumulation_steps=1`` and
   :meth:`ContinualTrainer.training_step` accumulates over the micro-batches itself, normalising the loss
   by the step's label-token count. The step boundaries are therefore ours, identical whether a batch is
   trained alone, resumed mid-way, or concatenated with others in one process. The dataset given to
   ``Trainer`` holds only the steps still to do, and ``ignore_data_skip=True`` stops ``Trainer`` from
   fast-forwarding it by the run's global step.
2. **The LR is a pure function of the global step** (:class:`PolicyLR`), not a schedule rebuilt from
   ``max_steps``; its saved state is only the step.
3. **Dropout randomness is a function of the global step**: the RNG is re-seeded from (seed, global step)
   at the start of every optimizer step, and each micro-batch after the step's first from (that seed, its
   index in the step), so what a micro-batch draws does not depend on how many processes, dataloader
   iterators or restores came before it, nor on the rank that trains it.
4. **Saving is ours**: ``Trainer`` saves into a staging folder when our callback asks (every ``saveSteps``
   from the batch start, at the batch end, on SIGTERM); the callback then publishes it atomically.
5. **Settings are per step**: the seed, ``maxGradNorm`` and ``weightDecay`` of the batch a step belongs to
   are applied at the start of the step (:class:`StepSettingsCallback`), over whatever a restored
   ``optimizer.pt`` or the first batch's ``TrainingArguments`` say; so a setting changed between batches
   applies from the next batch, alone or in the reference run that trains several batches in one process.

With several ranks (``torchrun``, :mod:`continual_trainer.ranks`) the same engine trains DDP: every rank
gets every step item and trains its share of the step's micro-batches (:func:`continual_trainer.plan.rank_share`;
``Trainer``'s own distributed sharding of the dataloader is switched off, it would re-shard our plan), each
micro-batch re-seeded from (step seed, its index in the step) so that its dropout does not depend on the rank
that trains it. The loss of a rank is scaled by the world size, so DDP's average of the ranks' gradients is the
one-process sum. Once per step the ranks all-reduce two numbers: their loss (the coordinator's batch mean) and
their stop flags, so a SIGTERM on *any* rank checkpoints *every* rank at the same step. Only the coordinator
writes the volume: the checkpoint's files except each rank's ``rng_state_<rank>.pth``, the batch progress, the
trace, the publish; the ranks meet at a barrier before the publish and after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from continual_trainer import ranks
from continual_trainer.config import TrainingSpec
from continual_trainer.model import IGNORE_INDEX, Encoded, collate
from continual_trainer.plan import StepPlan, derive_seed, rank_share

log = logging.getLogger(__name__)

#: Per-batch accumulators stored inside every checkpoint, so a retried batch reports the same mean loss.
BATCH_PROGRESS_FILE = "continual-batch-progress.json"
#: Keep ``trainer_state.json`` small: its log history would otherwise grow with every step of the run.
LOG_HISTORY_KEPT = 100


class StepDataset(Dataset[dict[str, Any]]):
    """Optimizer steps as dataset items (see the module docstring, point 1).

    An item holds this rank's share of the step's micro-batches (all of them on one process) and the label
    tokens of the *whole* step, by which every rank normalises its loss.
    """

    def __init__(
        self, steps: list[tuple[StepPlan, list[Encoded]]], pad_id: int, gang: ranks.Ranks | None = None
    ) -> None:
        self.steps = steps
        self.pad_id = pad_id
        self.gang = gang or ranks.current()

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> dict[str, Any]:
        plan, encoded = self.steps[index]
        share = rank_share(plan, self.gang.rank, self.gang.world_size)
        idle = not share
        if idle:  # fewer micro-batches than ranks: join the all-reduce with a zero-weighted micro-batch
            share = [(0, plan.micro_batches[0])]
        micro = [collate([encoded[i] for i in mb], self.pad_id) for _, mb in share]
        # Right-padded micro-batches: a sample's label tokens are the same counted alone or collated.
        tokens = sum(encoded[i].label_tokens for i in plan.sample_indices)
        return {
            "micro_batches": micro,
            "micro_indices": [i for i, _ in share],
            "idle": idle,
            "num_label_tokens": tokens,
            "sample_ids": list(plan.sample_indices),
        }


def first_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The DataLoader hands us lists of one item (batch size 1): unwrap it."""
    return items[0]


class PolicyLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every param group's LR to ``lr_fn(step)``; its state is the step only.

    ``load_state_dict`` recomputes the LR from the step, so a learning rate changed in the config (recorded
    for the new batch) takes effect instead of the one saved in ``optimizer.pt``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr_fn: Callable[[int], float]) -> None:
        self.lr_fn = lr_fn
        super().__init__(optimizer)

    def get_lr(self) -> list[float | torch.Tensor]:
        return [self.lr_fn(max(self.last_epoch, 0))] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        lrs: list[float | torch.Tensor] = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


@dataclass
class LossMeter:
    """Token-weighted loss over the current batch (restored from the checkpoint a retry resumes from).

    A step's loss is first *staged* (this rank's part of it), then added once the ranks summed it
    (:meth:`SaveControl.on_step_end`; one process: its own part is the whole).
    """

    loss_sum: float = 0.0
    tokens: int = 0
    staged_loss: float = 0.0
    staged_tokens: int = 0

    @property
    def mean(self) -> float | None:
        return self.loss_sum / self.tokens if self.tokens else None

    def stage(self, loss_sum: float, tokens: int) -> None:
        self.staged_loss, self.staged_tokens = loss_sum, tokens

    def settle(self, loss_sum: float) -> None:
        """Add the step's loss summed over the ranks."""
        self.loss_sum += loss_sum
        self.tokens += self.staged_tokens
        self.staged_loss, self.staged_tokens = 0.0, 0


class ContinualTrainer(Trainer):
    """``Trainer`` with our sampler, step-level accumulation and loss (module docstring, point 1)."""

    def __init__(self, *args: Any, meter: LossMeter, trace: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = meter
        self.gang = ranks.current()
        self.trace = trace if self.gang.is_coordinator else None  # the coordinator writes the volume
        # Our loss is already normalised by the step's token count: Trainer must not rescale it.
        self.loss_is_scaled_for_ga = True
        #: Multiplies every micro-batch loss: the world size (DDP averages the ranks' gradients), 0 when idle.
        self.loss_weight = 1
        #: Set by make_trainer: the callback that seeds each step (its seed seeds the micro-batches too).
        self.step_settings: StepSettingsCallback | None = None

    def get_train_dataloader(self) -> Any:
        loader = super().get_train_dataloader()
        if self.gang.distributed:
            # accelerate shards the batches over the ranks (BatchSamplerShard): every rank must see every step
            # item and take its share itself. Neutralised as Trainer does for its BatchRebalanceSampler
            # (read from transformers 5.24, Trainer._get_dataloader); tested in tests/trainer/test_ranks.py.
            sharded = getattr(loader, "batch_sampler", None)
            if sharded is None or not hasattr(sharded, "num_processes"):
                raise RuntimeError(f"unexpected train dataloader {type(loader).__name__}: cannot unshard it")
            sharded.num_processes = 1
            sharded.process_index = 0
        return loader

    def _get_train_sampler(self, train_dataset: Any = None) -> SequentialSampler:
        # Order is decided by the plan; a RandomSampler would reshuffle (and draw from the global RNG).
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        assert isinstance(dataset, StepDataset)
        return SequentialSampler(dataset)

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        del num_items_in_batch  # Trainer cannot count our nested items; we know the exact count
        tokens = int(inputs["num_label_tokens"])
        micro = inputs["micro_batches"]
        self.loss_weight = 0 if inputs["idle"] else self.gang.world_size
        total = torch.zeros((), device=self.args.device)
        for i, (index, mb) in enumerate(zip(inputs["micro_indices"], micro, strict=True)):
            if index > 0 and self.step_settings is not None:
                # Micro-batch 0 draws from the step's seed (set at the step's start); the others from their
                # own, so a micro-batch's dropout is the same on whichever rank trains it.
                torch.manual_seed(derive_seed("micro", self.step_settings.step_seed, index))
            last = i == len(micro) - 1
            # One gradient all-reduce per step and rank: at its last micro-batch (DDP; one process: no-op).
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with sync:
                total = total + super().training_step(model, mb, num_items_in_batch=tokens)
        # This rank's part of the step's summed loss (the weight undone); the ranks add theirs at the step end.
        self.meter.stage(float(total) * tokens / self.loss_weight if self.loss_weight else 0.0, tokens)
        if self.trace is not None:
            with self.trace.open("a") as handle:
                handle.write(json.dumps({"step": self.state.global_step, "samples": inputs["sample_ids"]}))
                handle.write("\n")
        return total

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Sum of token cross-entropies over this micro-batch / label tokens in the whole step."""
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1, :].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            labels[:, 1:].reshape(-1).to(logits.device),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ) / max(int(num_items_in_batch or 1), 1)
        if self.loss_weight != 1:
            loss = loss * self.loss_weight
        return (loss, outputs) if return_outputs else loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        failpoint("save-mid", self.state.global_step)  # fault injection for tests: a kill mid-save
        super()._save_optimizer_and_scheduler(output_dir)


def failpoint(name: str, step: int) -> None:
    """Fault injection for tests (like etcd's failpoints): ``CONTINUAL_TRAINER_FAILPOINTS=save-mid@7``.

    When the named point is reached at the given global step the process SIGKILLs itself, or, with
    ``=stop`` (``step-end@9=stop``), SIGSTOPs itself so that a test can act on a process frozen at a known
    step (kill it from outside, then let the retry go on with SIGCONT). Unset in production; documented
    in docs/trainer.md.
    """
    spec = os.environ.get("CONTINUAL_TRAINER_FAILPOINTS")
    if not spec or not on_failpoint_rank():
        return
    for item in spec.split(","):
        point, _, rest = item.partition("@")
        at, _, action = rest.partition("=")
        if point == name and at.isdigit() and int(at) == step:
            signum = signal.SIGSTOP if action == "stop" else signal.SIGKILL
            log.error("failpoint %s@%s: %s", name, at, signum.name)
            sys.stderr.flush()
            os.kill(os.getpid(), signum)


def on_failpoint_rank() -> bool:
    """Failpoints fire on every rank, or with ``CONTINUAL_TRAINER_FAILPOINT_RANK=<r>`` on rank ``r`` only."""
    only = os.environ.get("CONTINUAL_TRAINER_FAILPOINT_RANK")
    return only is None or int(only) == ranks.current().rank


#: The settings of the batch a global step belongs to (one batch per invocation; several in the reference).
SettingsAt = Callable[[int], TrainingSpec]


class StepSettingsCallback(TrainerCallback):
    """At the start of every optimizer step, apply the settings of the batch the step belongs to.

    * the RNG is re-seeded from (seed, global step) (module docstring, point 3);
    * ``max_grad_norm`` is set on the arguments ``Trainer`` reads at every step;
    * ``weight_decay`` is set on the optimizer's param groups that decay. ``optimizer.pt`` restores the
      param groups' hyperparameters as they were saved, so without this a weight decay changed between
      batches would be silently ignored (the LR has the same problem and :class:`PolicyLR` solves it).

    Setting a value to what it already is changes nothing, so this is exact whether a batch runs alone,
    resumed, or in one process with others (the reference run).
    """

    def __init__(self, settings_at: SettingsAt, decaying: frozenset[int]) -> None:
        self.settings_at = settings_at
        #: ``id()`` of the parameters ``Trainer`` puts in its weight-decay group (the others never decay).
        self.decaying = decaying
        #: The seed of the step in progress (its micro-batches after the first derive theirs from it).
        self.step_seed = 0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        settings = self.settings_at(state.global_step)
        self.step_seed = derive_seed("step", settings.seed, state.global_step)
        torch.manual_seed(self.step_seed)
        args.max_grad_norm = settings.max_grad_norm
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            return
        for group in optimizer.param_groups:
            decays = any(id(p) in self.decaying for p in group["params"])
            group["weight_decay"] = settings.weight_decay if decays else 0.0


@dataclass
class StopRequest:
    """Set from the SIGTERM handler; read by :class:`SaveControl` at the end of the current step.

    With several ranks, the gang's agreement at the step's end (any rank's flag) sets it on every rank.
    """

    requested: bool = False


@dataclass
class SaveControl(TrainerCallback):
    """Decides when to save and stop, and publishes every staged checkpoint (module docstring, point 4).

    ``boundaries`` are the global steps at which a batch ends (one for a normal invocation; every batch
    end for the uninterrupted reference run); ``batch_start(step)`` gives the start of the batch a step is
    in, from which ``save_steps(step)`` (that batch's ``saveSteps``) is counted.
    """

    save_steps: Callable[[int], int]
    target: int
    boundaries: frozenset[int]
    batch_start: Callable[[int], int]
    on_publish: Callable[[Path, int], None]
    meter: LossMeter
    stop: StopRequest = field(default_factory=StopRequest)
    on_progress: Callable[[TrainerState, dict[str, float]], None] | None = None
    gang: ranks.Ranks = field(default_factory=ranks.current)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # A resumed TrainerState carries the first run's logging/saving cadence: use ours.
        state.logging_steps = int(args.logging_steps)
        state.save_steps = 0

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = state.global_step
        failpoint("step-end", step)
        # The one collective of a step: the ranks' losses and stop flags (one process: its own values). Only
        # the flags agreed here stop the gang: a SIGTERM after this point is seen by the next step's sum.
        loss_sum, stops = ranks.all_reduce_sum([self.meter.staged_loss, float(self.stop.requested)])
        self.meter.settle(loss_sum)
        agreed = stops > 0
        self.stop.requested = self.stop.requested or agreed
        if step in self.boundaries or (step - self.batch_start(step - 1)) % self.save_steps(step - 1) == 0:
            control.should_save = True
        if step >= self.target or agreed:
            control.should_save = True
            control.should_training_stop = True
        if len(state.log_history) > LOG_HISTORY_KEPT:
            del state.log_history[: len(state.log_history) - LOG_HISTORY_KEPT]

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        staged = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        # Every rank's files (its rng_state_<rank>.pth) are in the staging folder before it is published.
        ranks.barrier(f"staged-{state.global_step}")
        if self.gang.is_coordinator:
            (staged / BATCH_PROGRESS_FILE).write_text(
                json.dumps({"lossSum": self.meter.loss_sum, "tokens": self.meter.tokens})
            )
        if state.global_step in self.boundaries:
            # The next batch starts from zero (only the reference run crosses boundaries in-process).
            self.meter.loss_sum, self.meter.tokens = 0.0, 0
        if self.gang.is_coordinator:
            self.on_publish(staged, state.global_step)
        # No rank goes on (or stops) before the checkpoint is published.
        ranks.barrier(f"published-{state.global_step}")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.on_progress is not None and logs is not None and "loss" in logs:
            self.on_progress(state, logs)


def read_meter(checkpoint: Path | None, batch_start: int, step: int) -> LossMeter:
    """Restore the batch's loss accumulators from the checkpoint a retry resumes from."""
    if checkpoint is None or step == batch_start:
        return LossMeter()
    data = json.loads((checkpoint / BATCH_PROGRESS_FILE).read_text())
    return LossMeter(loss_sum=float(data["lossSum"]), tokens=int(data["tokens"]))


def training_arguments(
    training: TrainingSpec, *, output_dir: Path, max_steps: int, logging_steps: int
) -> TrainingArguments:
    """``TrainingArguments`` for our engine: accumulation, saving, scheduling and data order are ours."""
    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=1,  # one item = one optimizer step (module docstring)
        gradient_accumulation_steps=1,
        max_steps=max_steps,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        lr_scheduler_type="constant",  # replaced by PolicyLR in make_trainer
        logging_strategy="steps",
        logging_steps=logging_steps,
        save_strategy="no",  # SaveControl decides
        report_to="none",
        seed=training.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        ignore_data_skip=True,  # the dataset already starts where the resumed checkpoint left off
        bf16=training.precision == "bf16",
        fp16=training.precision == "fp16",
        use_cpu=not cuda,
        disable_tqdm=True,
        include_num_input_tokens_seen="no",
        ddp_find_unused_parameters=False,  # every LoRA parameter takes part in every step
    )


def make_trainer(
    model: torch.nn.Module,
    dataset: StepDataset,
    args: TrainingArguments,
    *,
    settings_at: SettingsAt,
    lr_fn: Callable[[int], float],
    callbacks: list[TrainerCallback],
    meter: LossMeter,
    trace: Path | None,
) -> ContinualTrainer:
    """Build the trainer with our scheduler in place of ``Trainer``'s and per-step settings."""
    ranks.init()  # several ranks: Trainer (accelerate) trains DDP on the gang's process group
    trainer = ContinualTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=first_item,
        callbacks=callbacks,
        meter=meter,
        trace=trace,
    )
    # The weight-decay group as Trainer.create_optimizer builds it (read from transformers 5.24).
    decay_names = set(trainer.get_decay_parameter_names(model))
    decaying = frozenset(id(p) for n, p in model.named_parameters() if n in decay_names)
    trainer.step_settings = StepSettingsCallback(settings_at, decaying)
    trainer.add_callback(trainer.step_settings)

    def create_scheduler(num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        del num_training_steps  # the whole point: our LR does not depend on it
        if trainer.lr_scheduler is None:
            target = optimizer or trainer.optimizer
            assert target is not None
            trainer.lr_scheduler = PolicyLR(target, lr_fn)  # type: ignore[assignment]
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler  # type: ignore[method-assign]
    # stdout carries our JSON progress lines; Trainer's own printed log dicts would interleave with them.
    trainer.remove_callback(PrinterCallback)
    return trainer


def install_sigterm(stop: StopRequest) -> Callable[[], None]:
    """On SIGTERM, ask the loop to checkpoint and stop at the end of the current step; return an undo."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        del signum, frame
        log.warning("SIGTERM: saving a checkpoint at the end of the current step, then exiting (preempted)")
        stop.requested = True

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
