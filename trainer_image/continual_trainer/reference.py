"""The uninterrupted run: several batches in one process and one ``Trainer.train()`` call.

It is the yardstick the continual trainer is measured against. Exactness: a run trained batch by batch in
separate processes (even killed and retried) must end with bit-identical adapter weights and the same
learning rate at every step. Overhead: the benchmarks compare a fresh process per batch with these same
steps in one warm process.

It shares the data plan, the step items, the LR policy and the RNG discipline with :mod:`train` -- that is
what "the same data in the same order" means -- but none of the resume machinery: no ledger, no checkpoint
loading (unless ``resume_from`` is given, which the tests use to build controls). Launched as several ranks
(``torchrun``), it trains them DDP exactly as the batch-by-batch trainer does, the coordinator publishing.

Each batch is trained with *its own* config's settings, as the batch-by-batch trainer does: data order,
batch size, accumulation, epochs and sequence length shape its steps; learning rate and schedule, seed,
weight decay, gradient clipping and ``saveSteps`` apply from its first step. Settings that cannot change
inside one ``Trainer`` (base model, LoRA, precision) are the first config's.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continual_trainer import checkpoints as ckpts
from continual_trainer import engine, ranks, sandbox
from continual_trainer import model as modeling
from continual_trainer.config import TrainerConfig, TrainingSpec
from continual_trainer.plan import build_plan
from continual_trainer.schedules import BatchWindow, lr_at
from continual_trainer.train import RunLayout, load_data


@dataclass
class UninterruptedResult:
    """What the run did: LR and loss per step (keyed by the global step after the step), final step."""

    final_step: int
    windows: list[BatchWindow]
    learning_rates: dict[int, float] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    train_runtime: float = 0.0


def run_uninterrupted(
    configs: list[TrainerConfig], run_dir: Path, *, resume_from: Path | None = None, logging_steps: int = 1
) -> UninterruptedResult:
    """Train ``configs``' batches back to back in this process; checkpoints go to ``run_dir/checkpoints``."""
    first = configs[0]
    base = sandbox.confined_base_model(first)  # as main() loads it: a relative path is on the data root
    layout = RunLayout(run_dir)
    tokenizer = modeling.load_tokenizer(base)
    start = 0
    if resume_from is not None:
        start = int(json.loads((resume_from / "trainer_state.json").read_text())["global_step"])
    items: list[tuple[Any, list[modeling.Encoded]]] = []
    windows: list[BatchWindow] = []
    for config in configs:
        training = config.training
        samples = load_data(config).samples
        encoded = modeling.encode(samples, tokenizer, training.max_seq_length)
        plan = build_plan(
            len(samples),
            batch_size=training.per_device_batch_size,
            accumulation=training.gradient_accumulation_steps,
            epochs=training.epochs_per_batch,
            seed=training.seed,
            batch_id=config.batch.id,
        )
        windows.append(BatchWindow(start, start + len(plan)))
        start += len(plan)
        items.extend((step, encoded) for step in plan)
    ends = [w.target for w in windows]

    def window_of(step: int) -> int:
        return min(bisect.bisect_right(ends, step), len(windows) - 1)

    def settings_at(step: int) -> TrainingSpec:
        return configs[window_of(step)].training

    def lr_fn(step: int) -> float:
        training = settings_at(step)
        return lr_at(training.lr_schedule, training.learning_rate, step, windows[window_of(step)])

    result = UninterruptedResult(final_step=windows[-1].target, windows=windows)

    def on_publish(staged: Path, step: int) -> None:  # the coordinator's (SaveControl calls it there)
        batch_id = configs[window_of(step - 1)].batch.id
        ckpts.publish(
            staged, layout.checkpoints, batch_id=batch_id, step=step, world_size=ranks.current().world_size
        )

    def on_progress(state: Any, logs: dict[str, float]) -> None:
        result.learning_rates[state.global_step] = logs["learning_rate"]
        result.losses[state.global_step] = logs["loss"]

    meter = engine.LossMeter()
    control = engine.SaveControl(
        save_steps=lambda step: settings_at(step).save_steps,
        target=result.final_step,
        boundaries=frozenset(ends),
        batch_start=lambda step: windows[window_of(step)].start,
        on_publish=on_publish,
        meter=meter,
        on_progress=on_progress,
    )
    args = engine.training_arguments(
        first.training, output_dir=layout.staging, max_steps=result.final_step, logging_steps=logging_steps
    )
    model = modeling.load_model(base, first.lora, first.training)
    trainer = engine.make_trainer(
        model,
        engine.StepDataset(items, int(tokenizer.pad_token_id)),
        args,
        settings_at=settings_at,
        lr_fn=lr_fn,
        callbacks=[control],
        meter=meter,
        trace=None,
    )
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    result.train_runtime = float(output.metrics["train_runtime"])
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m continual_trainer.reference --run-dir DIR CONFIG...``: the yardstick as a process.

    So that it can be launched as the trainer is, e.g. by ``torchrun --nproc-per-node 2`` (the tests compare a
    batch-by-batch gang with it); checkpoints go to ``DIR/checkpoints``.
    """
    import argparse

    from continual_trainer.config import parse_config

    parser = argparse.ArgumentParser(prog="continual_trainer.reference", description=main.__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("configs", nargs="+", type=Path, help="trainer configs, one per batch, in order")
    args = parser.parse_args(argv)
    configs = [parse_config(path.read_text()) for path in args.configs]
    result = run_uninterrupted(configs, args.run_dir)
    if ranks.current().is_coordinator:
        print(json.dumps({"finalStep": result.final_step, "learningRates": result.learning_rates}))
    ranks.shutdown()


if __name__ == "__main__":
    main()
