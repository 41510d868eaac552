"""Shared pieces of the trainer benchmarks: synthetic batches, a model of a chosen size, a bare Trainer."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "run",
    "keeps",
    "training",
    "batch",
    "after",
    "batch",
    "while",
    "the",
    "operator",
    "records",
    "every",
    "step",
    "of",
    "the",
    "adapter",
    "and",
    "the",
    "ledger",
    "protects",
    "each",
    "checkpoint",
    "so",
    "that",
    "a",
    "retry",
    "resumes",
    "exactly",
    "where",
    "the",
    "last",
    "one",
    "ended",
]


def write_batches(
    root: Path, *, batches: int, samples: int, words: int, seed: int = 0
) -> list[tuple[str, Path]]:
    """``batches`` JSONL files of ``samples`` random sentences of about ``words`` words."""
    rng = random.Random(seed)
    out = []
    root.mkdir(parents=True, exist_ok=True)
    for b in range(batches):
        path = root / f"batch-{b:03d}.jsonl"
        with path.open("w") as handle:
            for _ in range(samples):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words)))
                handle.write(json.dumps({"text": text}) + "\n")
        out.append((f"b{b}", path))
    return out


def build_model(path: Path, *, hidden: int, layers: int) -> Path:
    """A random-init Llama of the given size with the project's locally trained tokenizer."""
    from continual_trainer.tinymodel import build_tiny_model

    return build_tiny_model(path, hidden=hidden, layers=layers)


def trainer_config(
    run_dir: Path,
    model: Path,
    batch_id: str,
    data: Path,
    training: dict[str, Any],
    progress: dict[str, Any] | None = None,
) -> Any:
    """A trainer config for one batch; ``progress`` replaces the default (status file, every 10 steps)."""
    from continual_trainer.config import TrainerConfig

    return TrainerConfig.model_validate(
        {
            "runName": "bench",
            "runDir": str(run_dir),
            # The data sandbox: the batches' folder is the data root (the model lies outside it, off-volume).
            "dataRoot": str(data.parent),
            "baseModel": {"path": str(model)},
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.05,
                "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            },
            "training": training,
            "batch": {"id": batch_id, "data": {"path": str(data)}},
            "progress": progress or {"stdout": False, "statusFile": True, "everySteps": 10},
            "terminationMessagePath": None,
        }
    )


def run_bare_trainer(
    configs: list[Any],
    out_dir: Path,
    *,
    accumulation: int | None = None,
    callbacks: list[Any] | None = None,
) -> dict[str, float]:
    """The same model, LoRA, data and steps with a stock ``Trainer`` (its own sampler and accumulation).

    One ``train()`` over all batches' samples (each repeated epochs times), logging every 10 steps and
    saving a checkpoint every batch's worth of steps, as the continual trainer must (at batch ends): the
    yardstick for our per-step overhead.

    Under a launcher (``torchrun``) it trains DDP like any ``Trainer`` script; ``accumulation`` then sets
    its per-rank accumulation (a stock step is ``per-device batch x accumulation x world size`` samples,
    ours ``per-device batch x gradientAccumulationSteps`` whatever the world size), ``callbacks`` are added.
    """
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from continual_trainer import model as modeling
    from continual_trainer.data import LocalSource, load_batch
    from continual_trainer.plan import total_steps

    first = configs[0]
    training = first.training
    tokenizer = modeling.load_tokenizer(first.base_model)
    items: list[modeling.Encoded] = []
    steps = 0
    for config in configs:
        samples = load_batch(LocalSource.from_config(config)).samples
        encoded = modeling.encode(samples, tokenizer, training.max_seq_length)
        items.extend(encoded * training.epochs_per_batch)
        steps += total_steps(
            len(samples),
            training.per_device_batch_size,
            training.gradient_accumulation_steps,
            training.epochs_per_batch,
        )
    pad = int(tokenizer.pad_token_id)
    model = modeling.load_model(first.base_model, first.lora, training)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=training.per_device_batch_size,
        gradient_accumulation_steps=accumulation or training.gradient_accumulation_steps,
        max_steps=steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="steps",
        save_steps=max(steps // len(configs), 1),
        report_to="none",
        bf16=training.precision == "bf16",
        use_cpu=not cuda,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # as our engine: every LoRA parameter takes part in every step
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=items,  # type: ignore[arg-type]
        data_collator=lambda b: modeling.collate(b, pad),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - start
    tokens = sum(e.label_tokens for e in items)
    return {
        "steps": steps,
        "train_runtime": float(output.metrics["train_runtime"]),
        "wall": wall,
        "tokens": tokens,
        "samples": len(items),
    }
