"""A bare HF ``Trainer`` + PEFT DDP script: the yardstick ``benchmarks/gpu_multi.py`` launches under torchrun.

The same model, LoRA, samples, per-device batch size and precision as the continual trainer's configs
given (``common.run_bare_trainer``), trained by a stock ``Trainer`` in one ``train()``: its own sampler
(``DistributedSampler``), its own accumulation, DDP set up by accelerate on the process group this script
joins as our trainer does (NCCL on CUDA, gloo on CPU). Rank 0 writes the result, with the time at the end
of every optimizer step (for the in-training rate), as JSON.

Usage: torchrun --standalone --nproc-per-node M benchmarks/bare_ddp.py --out R.json --output-dir D
       --accumulation A cfg-1.yaml [cfg-2.yaml ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_bare_trainer


def join_process_group() -> int:
    """Join torchrun's group the way ``continual_trainer.ranks.init`` does; return the world size."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return world


def step_clock() -> Any:
    """A callback recording ``(global_step, monotonic seconds)`` at the end of each optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[tuple[int, float]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append((int(state.global_step), time.monotonic()))

    return StepClock()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="result JSON (written by rank 0)")
    parser.add_argument("--output-dir", required=True, type=Path, help="Trainer's output_dir")
    parser.add_argument("--accumulation", required=True, type=int, help="per-rank accumulation steps")
    parser.add_argument("configs", nargs="+", type=Path, help="the continual trainer's configs, in order")
    args = parser.parse_args()
    from continual_trainer.config import TrainerConfig

    configs = [TrainerConfig.model_validate(yaml.safe_load(p.read_text())) for p in args.configs]
    world = join_process_group()
    clock = step_clock()
    result = run_bare_trainer(configs, args.output_dir, accumulation=args.accumulation, callbacks=[clock])
    if int(os.environ.get("RANK", "0")) == 0:
        training = configs[0].training
        result.update(
            world_size=world,
            samples_per_step=training.per_device_batch_size * args.accumulation * world,
            step_times=clock.times,
        )
        args.out.write_text(json.dumps(result))
    leave_process_group()


def leave_process_group() -> None:
    """Leave torchrun's group once every rank is done, as ``continual_trainer.ranks.shutdown`` does: a
    gloo group left to the interpreter's exit can abort its rank ("terminate called without an active
    exception", seen once in CI)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
