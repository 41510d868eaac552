"""Trainer benchmarks on the CPU.

1. Per-batch process overhead: the three batches trained as the Jobs do (a fresh ``continual-trainer``
   process per batch: start, load, resume, train, checkpoint, export) vs the same steps in one warm process
   (the uninterrupted reference run).
2. Steps/s of our trainer (step plan, own accumulation, LR policy, per-step reseeding, atomic checkpoints)
   vs a bare ``Trainer`` on the same model, data and number of steps. Goal: overhead <= 5 %.

Usage: python benchmarks/trainer_overhead.py [--hidden 128 --layers 4 --samples 96 --repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_model, run_bare_trainer, trainer_config, write_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--samples", type=int, default=96, help="samples per batch")
    parser.add_argument("--words", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from continual_trainer.reference import run_uninterrupted

    tmp = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    model = build_model(tmp / "model", hidden=args.hidden, layers=args.layers)
    batches = write_batches(tmp / "data", batches=3, samples=args.samples, words=args.words)
    training = {
        "perDeviceBatchSize": 8,
        "gradientAccumulationSteps": 2,
        "epochsPerBatch": 1,
        "saveSteps": 10_000,
        "maxSeqLength": 128,
        "learningRate": 1e-3,
    }
    print(
        f"model: Llama hidden={args.hidden} layers={args.layers}; 3 batches x {args.samples} samples; torch threads={os.cpu_count()}"
    )

    fresh, warm, ours_sps, bare_sps = [], [], [], []
    for r in range(args.repeats):
        run_dir = tmp / f"fresh-{r}"
        start = time.perf_counter()
        for bid, path in batches:
            cfg = trainer_config(run_dir, model, bid, path, training)
            cfg_path = tmp / f"cfg-{r}-{bid}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "continual_trainer.cli",
                    "--config",
                    str(cfg_path),
                    "--log-level",
                    "WARNING",
                ],
                check=True,
                capture_output=True,
            )
        fresh.append(time.perf_counter() - start)

        warm_dir = tmp / f"warm-{r}"
        configs = [trainer_config(warm_dir, model, bid, path, training) for bid, path in batches]
        start = time.perf_counter()
        result = run_uninterrupted(configs, warm_dir, logging_steps=10)
        warm.append(time.perf_counter() - start)
        ours_sps.append(result.final_step / result.train_runtime)

        bare = run_bare_trainer(configs, tmp / f"bare-{r}")
        bare_sps.append(bare["steps"] / bare["train_runtime"])
        shutil.rmtree(run_dir)
        shutil.rmtree(warm_dir)

    steps = result.final_step
    med = statistics.median
    per_batch = (med(fresh) - med(warm)) / len(batches)
    print(f"steps: {steps} ({steps // len(batches)} per batch), repeats: {args.repeats} (medians below)")
    print(f"[1] fresh process per batch: {med(fresh):.2f} s   one warm process: {med(warm):.2f} s")
    print(
        f"    per-batch process overhead: {per_batch:.2f} s  (ratio fresh/warm = {med(fresh) / med(warm):.2f})"
    )
    overhead = (med(bare_sps) - med(ours_sps)) / med(bare_sps) * 100
    print(
        f"[2] steps/s ours: {med(ours_sps):.2f}   bare Trainer: {med(bare_sps):.2f}   overhead: {overhead:+.1f} % (goal <= 5 %)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
