"""Trainer benchmarks on the CPU.

1. Per-batch process overhead: the three batches trained as the Jobs do (a fresh ``continual-trainer``
   process per batch: start, load, resume, train, checkpoint, export) vs the same steps in one warm process
   (the uninterrupted reference run).
2. Steps/s of our trainer (step plan, own accumulation, LR policy, per-step reseeding, atomic checkpoints)
   vs a bare ``Trainer`` on the same model, data and number of steps. Goal: overhead <= 5 %.
3. Start-up: where a fresh trainer process resuming a run spends its time before its first step (the
   trainer's own ``start-up timeline`` log line, see continual_trainer/timeline.py, plus the interpreter's
   start measured from outside, plus the library imports one by one in another fresh process).
4. Coalesced batches: 10 queued small batches, one process per batch vs one coalesced process (``batch`` +
   ``nextBatches``). Goal: >= 3x less wall time; the final adapters must be bit for bit equal.

Usage: python benchmarks/trainer_overhead.py [--hidden 128 --layers 4 --samples 96 --repeats 3]
       [--only overhead|startup|coalesced ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--coalesced-batches", type=int, default=10)
    # Small batches (one optimizer step of short samples each): what a busy inbox delivers, where the
    # per-process start-up is most of a batch's cost.
    parser.add_argument("--coalesced-samples", type=int, default=8, help="samples per coalesced batch")
    parser.add_argument("--coalesced-words", type=int, default=16, help="words per coalesced sample")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["overhead", "startup", "coalesced"],
        default=["overhead", "startup", "coalesced"],
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="ct-bench-"))
    model = build_model(tmp / "model", hidden=args.hidden, layers=args.layers)
    print(
        f"model: Llama hidden={args.hidden} layers={args.layers}; torch threads={os.cpu_count()}; repeats: "
        f"{args.repeats} (medians below)"
    )
    if "overhead" in args.only:
        overhead(args, tmp, model)
    if "startup" in args.only:
        startup(args, tmp, model)
    if "coalesced" in args.only:
        coalesced(args, tmp, model)
    shutil.rmtree(tmp, ignore_errors=True)


def run_cli(config_path: Path, log_level: str = "WARNING") -> subprocess.CompletedProcess[str]:
    """One fresh ``continual-trainer`` process, as a Job runs it."""
    command = [
        sys.executable,
        "-m",
        "continual_trainer.cli",
        "--config",
        str(config_path),
        "--log-level",
        log_level,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True)


def write_config(config: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return path


def overhead(args: argparse.Namespace, tmp: Path, model: Path) -> None:
    """Sections 1 and 2: per-batch process overhead, and steps/s vs a bare Trainer."""
    from continual_trainer.reference import run_uninterrupted

    batches = write_batches(tmp / "data", batches=3, samples=args.samples, words=args.words)
    training = {
        "perDeviceBatchSize": 8,
        "gradientAccumulationSteps": 2,
        "epochsPerBatch": 1,
        "saveSteps": 10_000,
        "maxSeqLength": 128,
        "learningRate": 1e-3,
    }
    print(f"[1, 2] 3 batches x {args.samples} samples")

    fresh, warm, ours_sps, bare_sps = [], [], [], []
    for r in range(args.repeats):
        run_dir = tmp / f"fresh-{r}"
        start = time.perf_counter()
        for bid, path in batches:
            cfg = trainer_config(run_dir, model, bid, path, training)
            cfg_path = tmp / f"cfg-{r}-{bid}.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
            run_cli(cfg_path)
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


IMPORTS = """
import json, time
marks = [("python -c start", time.time())]
import torch
marks.append(("import torch", time.time()))
import transformers
marks.append(("import transformers", time.time()))
import peft
marks.append(("import peft (its LoRA and transformers' models)", time.time()))
from transformers import Trainer
marks.append(("from transformers import Trainer", time.time()))
print(json.dumps([[a, round(t - s, 3)] for (_, s), (a, t) in zip(marks, marks[1:])]))
"""


def startup(args: argparse.Namespace, tmp: Path, model: Path) -> None:
    """Section 3: the start-up breakdown of a fresh process that resumes a run (its second batch)."""
    from continual_trainer.timeline import PREFIX

    batches = write_batches(tmp / "startup-data", batches=2, samples=args.samples, words=args.words)
    training = {"perDeviceBatchSize": 8, "saveSteps": 10_000, "maxSeqLength": 128, "learningRate": 1e-3}
    run_dir = tmp / "startup-run"
    totals: list[float] = []
    interpreters: list[float] = []
    spans: dict[str, list[float]] = {}
    for r in range(args.repeats + 1):
        if r == 0 or not (run_dir / "ledger").exists():  # the first batch: the run exists, batch 2 resumes
            shutil.rmtree(run_dir, ignore_errors=True)
            bid, path = batches[0]
            run_cli(
                write_config(trainer_config(run_dir, model, bid, path, training), tmp / "startup-b0.yaml")
            )
        bid, path = batches[1]
        cfg = write_config(trainer_config(run_dir, model, bid, path, training), tmp / "startup-b1.yaml")
        started = time.time()
        done = run_cli(cfg, log_level="INFO")
        shutil.rmtree(run_dir)
        line = next(x for x in done.stderr.splitlines() if PREFIX in x)
        document = json.loads(line.split(PREFIX, 1)[1])
        interpreter = document["entry"] - started
        interpreters.append(interpreter)
        totals.append(interpreter + document["total"])
        for name, seconds in document["spans"].items():
            spans.setdefault(name, []).append(seconds)
    med = statistics.median
    print(
        f"[3] a fresh process resuming a run (batch 2, {args.samples} samples): until its first step is done"
    )
    print(f"    {'interpreter start, until the entry point runs':58s} {med(interpreters):6.2f} s")
    for name, values in spans.items():
        print(f"    {name:58s} {med(values):6.2f} s")
    print(f"    {'total':58s} {med(totals):6.2f} s")
    imports = [
        json.loads(
            subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True).stdout
        )
        for _ in range(args.repeats)
    ]
    print("    the library imports alone, one after the other, in a fresh interpreter:")
    for i, (name, _) in enumerate(imports[0]):
        print(f"      {name:56s} {med(run[i][1] for run in imports):6.2f} s")


def coalesced(args: argparse.Namespace, tmp: Path, model: Path) -> None:
    """Section 4: N queued small batches, one process each vs one coalesced process."""
    from safetensors.torch import load_file

    from continual_trainer.config import BatchSpec

    n = args.coalesced_batches
    batches = write_batches(
        tmp / "coalesced-data", batches=n, samples=args.coalesced_samples, words=args.coalesced_words
    )
    training = {
        "perDeviceBatchSize": 8,
        "saveSteps": 10_000,
        "maxSeqLength": 128,
        "learningRate": 1e-3,
        "maxBatchesPerJob": n,
    }
    each, one, diffs = [], [], []
    for r in range(args.repeats):
        separate, together = tmp / f"separate-{r}", tmp / f"together-{r}"
        start = time.perf_counter()
        for bid, path in batches:
            run_cli(
                write_config(trainer_config(separate, model, bid, path, training), tmp / f"sep-{bid}.yaml")
            )
        each.append(time.perf_counter() - start)
        first = trainer_config(together, model, batches[0][0], batches[0][1], training)
        more = [BatchSpec.model_validate({"id": bid, "data": {"path": str(p)}}) for bid, p in batches[1:]]
        cfg = write_config(first.model_copy(update={"next_batches": more}), tmp / "together.yaml")
        start = time.perf_counter()
        run_cli(cfg)
        one.append(time.perf_counter() - start)
        a = load_file(str(separate / "adapters" / "latest" / "adapter_model.safetensors"))
        b = load_file(str(together / "adapters" / "latest" / "adapter_model.safetensors"))
        diffs.append(max(float((a[k] - b[k]).abs().max()) for k in a))
        shutil.rmtree(separate)
        shutil.rmtree(together)
    med = statistics.median
    ratio = med(each) / med(one)
    print(
        f"[4] {n} queued batches x {args.coalesced_samples} samples of <= {args.coalesced_words} words "
        f"({-(-args.coalesced_samples // 8)} step(s) each)"
    )
    print(f"    one process per batch: {med(each):.2f} s   one coalesced process: {med(one):.2f} s")
    print(f"    ratio {ratio:.2f}x less wall time (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(f"    final adapter, coalesced vs one process per batch: max abs diff {max(diffs)} (must be 0.0)")


if __name__ == "__main__":
    main()
