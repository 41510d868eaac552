"""GPU throughput: tokens/s of the continual trainer vs a bare ``Trainer``, bf16, three batches.

Runs wherever CUDA is available; elsewhere it says so and exits 0. Our trainer is measured both ways:
in one warm process (the loop itself) and as the Jobs run it, one fresh process per batch (start-up,
resume, checkpoint and adapter export included).

Usage: python benchmarks/gpu_throughput.py [--hidden 1024 --layers 8 --samples 512 --seq 512]
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=512, help="samples per batch")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: the GPU throughput benchmark did not run.")
        return
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; bf16")
    from continual_trainer.reference import run_uninterrupted

    tmp = Path(tempfile.mkdtemp(prefix="ct-gpu-bench-"))
    model = build_model(tmp / "model", hidden=args.hidden, layers=args.layers)
    batches = write_batches(tmp / "data", batches=3, samples=args.samples, words=args.seq)
    training = {
        "perDeviceBatchSize": args.batch_size,
        "gradientAccumulationSteps": 2,
        "epochsPerBatch": 1,
        "saveSteps": 10_000,
        "maxSeqLength": args.seq,
        "learningRate": 1e-4,
        "precision": "bf16",
    }
    configs = [trainer_config(tmp / "warm", model, bid, path, training) for bid, path in batches]

    bare = run_bare_trainer(configs, tmp / "bare")  # also warms up CUDA kernels for both
    bare = run_bare_trainer(configs, tmp / "bare2")
    result = run_uninterrupted(configs, tmp / "warm", logging_steps=10)
    tokens = bare["tokens"]
    ours_tps = tokens / result.train_runtime
    bare_tps = tokens / bare["train_runtime"]

    start = time.perf_counter()
    for bid, path in batches:
        cfg = trainer_config(tmp / "jobs", model, bid, path, training)
        cfg_path = tmp / f"cfg-{bid}.yaml"
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
    jobs_wall = time.perf_counter() - start

    params = sum(
        p.numel()
        for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(str(model)).parameters()
    )
    print(
        f"model: Llama hidden={args.hidden} layers={args.layers} ({params / 1e6:.0f} M params); 3 batches x {args.samples} samples x <= {args.seq} tokens; steps {result.final_step}"
    )
    print(
        f"tokens/s  ours (warm process): {ours_tps:,.0f}   bare Trainer: {bare_tps:,.0f}   ratio ours/bare = {ours_tps / bare_tps:.3f}"
    )
    print(
        f"one fresh process per batch (as Jobs): {jobs_wall:.1f} s wall for 3 batches = {tokens / jobs_wall:,.0f} tokens/s end to end"
    )


if __name__ == "__main__":
    main()
