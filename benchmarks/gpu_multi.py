"""1 x M GPUs: the continual trainer under torchrun vs a bare Trainer DDP script, bf16, and the preemption path.

M = ``torch.cuda.device_count()``. The same synthetic model and batches as ``gpu_throughput.py``:

a. our trainer, ``torchrun --standalone --nproc-per-node M -m continual_trainer.cli``, one launch per batch
   (as the Jobs run it): tokens/s end to end (launch to exit, start-up included) and in training (from the
   ``samplesPerSecond`` of the trainer's progress lines, the first interval of each launch left out);
b. ``benchmarks/bare_ddp.py`` (a stock ``Trainer`` + PEFT) under the same torchrun flags on the same
   samples, per-device batch size, per-rank accumulation and precision, in one launch: both rates, and
   the ratio ours/bare (goal: >= 0.90x in training);
c. the preemption path: SIGTERM to the torchrun process mid-batch -> every rank exits 85 (``PREEMPTED``)
   with one checkpoint published at that step (every rank's RNG file in it), the retry resumes from it and
   reaches the batch's target step: PASS/FAIL, with times.

Without CUDA it says so and exits 0. ``--cpu`` runs the same plumbing on the CPU (gloo, 2 processes, a tiny
model, fp32): a check of the script, not a GPU result. Exit status 1 when a launch fails or c. FAILs.

Usage: python benchmarks/gpu_multi.py [--batches 3 --steps-per-batch 32 --hidden 1024 --layers 8 --seq 512]
       python benchmarks/gpu_multi.py --cpu
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from common import build_model, trainer_config, write_batches  # noqa: E402

#: Goal for ours/bare, in-training tokens/s (what the trainer adds per step: its sampler, loss, stop flag).
GOAL_RATIO = 0.90
#: The summary line every rank prints on stderr just before it exits with that code (``continual_trainer.cli``):
#: ``continual-trainer (rank 1 of 2): PREEMPTED {result}``; one process (world size 1) names no rank.
SUMMARY = re.compile(r"^continual-trainer(?: \(rank (\d+) of \d+\))?: (\w+) (\{.*\})$", re.MULTILINE)


@dataclass
class Setup:
    """What the three parts share: the launch shape and the training settings."""

    tmp: Path
    model: Path
    batches: list[tuple[str, Path]]
    nproc: int
    training: dict[str, Any]
    every_steps: int
    timeout: float
    env: dict[str, str]


@dataclass
class Launch:
    """One torchrun launch: exit status, wall time, the progress events of rank 0, every rank's summary."""

    code: int
    wall: float
    events: list[dict[str, Any]]
    stderr: str
    summaries: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    signalled_at: float | None = None
    signalled_step: int | None = None
    ended_at: float = 0.0


def torchrun_cmd(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def launch(
    setup: Setup,
    args: list[str],
    on_event: Callable[[dict[str, Any], subprocess.Popen[str]], bool] | None = None,
) -> Launch:
    """Run torchrun to its end, reading progress lines as they come; ``on_event`` True = it signalled."""
    start = time.monotonic()
    proc = subprocess.Popen(
        torchrun_cmd(setup.nproc, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=setup.env,
        start_new_session=True,  # a timeout kills the whole gang; a SIGTERM goes to torchrun alone
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else ""))
    reader.start()
    timer = threading.Timer(setup.timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    events: list[dict[str, Any]] = []
    signalled_at, signalled_step = None, None
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        events.append(event)
        if on_event is not None and signalled_at is None and on_event(event, proc):
            signalled_at, signalled_step = time.monotonic(), event.get("globalStep")
    code = proc.wait()
    ended = time.monotonic()
    timer.cancel()
    reader.join()
    stderr = "".join(err)
    summaries = {int(r or 0): (name, json.loads(body)) for r, name, body in SUMMARY.findall(stderr)}
    return Launch(code, ended - start, events, stderr, summaries, signalled_at, signalled_step, ended)


def write_config(setup: Setup, run_dir: Path, index: int) -> Path:
    bid, data = setup.batches[index]
    progress = {"stdout": True, "statusFile": True, "everySteps": setup.every_steps}
    config = trainer_config(run_dir, setup.model, bid, data, setup.training, progress)
    path = setup.tmp / f"cfg-{run_dir.name}-{bid}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return path


def ours_cmd(config: Path) -> list[str]:
    return ["-m", "continual_trainer.cli", "--config", str(config), "--log-level", "WARNING"]


def in_training_samples_per_second(
    events: list[dict[str, Any]], samples_per_step: int
) -> tuple[float, float]:
    """(samples, seconds) of a launch's progress intervals after its first (start-up and resume in it)."""
    progress = [e for e in events if e.get("kind") == "progress" and e.get("samplesPerSecond")]
    samples = seconds = 0.0
    for before, event in itertools.pairwise(progress):
        done = (event["globalStep"] - before["globalStep"]) * samples_per_step
        samples += done
        seconds += done / event["samplesPerSecond"]
    return samples, seconds


def failed(what: str, out: Launch) -> None:
    print(f"FAIL: {what}: torchrun exited {out.code}\n{out.stderr[-4000:]}")
    sys.exit(1)


def measure(setup: Setup, accumulation: int) -> None:
    """Parts a. and b.: our trainer batch by batch, then the bare script on the same samples."""
    run_dir = setup.tmp / "ours"
    configs = [write_config(setup, run_dir, i) for i in range(len(setup.batches))]
    ours: list[Launch] = []
    for config in configs:
        out = launch(setup, ours_cmd(config))
        if out.code != 0 or {name for name, _ in out.summaries.values()} != {"SUCCESS"}:
            failed(f"our trainer on {config.name}", out)
        ours.append(out)
    result_path = setup.tmp / "bare.json"
    bare_args = [
        str(BENCH / "bare_ddp.py"),
        "--out",
        str(result_path),
        "--output-dir",
        str(setup.tmp / "bare"),
    ]
    bare_out = launch(setup, [*bare_args, "--accumulation", str(accumulation), *map(str, configs)])
    if bare_out.code != 0:
        failed("the bare Trainer", bare_out)
    bare = json.loads(result_path.read_text())
    tokens, per_sample = bare["tokens"], bare["tokens"] / bare["samples"]
    spp = setup.training["perDeviceBatchSize"] * setup.training["gradientAccumulationSteps"]
    assert bare["samples_per_step"] == spp, (bare["samples_per_step"], spp)  # the same optimizer steps
    windows = [in_training_samples_per_second(o.events, spp) for o in ours]
    times = [(s, t) for s, t in bare["step_times"] if s >= setup.every_steps]
    if not sum(t for _, t in windows) or len(times) < 2:
        print(
            "FAIL: too few progress intervals to time training: raise --steps-per-batch or lower --every-steps"
        )
        sys.exit(1)
    ours_train = sum(s for s, _ in windows) / sum(t for _, t in windows) * per_sample
    bare_train = (times[-1][0] - times[0][0]) * spp / (times[-1][1] - times[0][1]) * per_sample
    steps = ours[-1].summaries[0][1]["endStep"]
    ours_e2e, bare_e2e = tokens / sum(o.wall for o in ours), tokens / bare_out.wall
    print(
        f"steps {steps} (bare: {bare['steps']}), {bare['samples']} samples, {tokens:,} label tokens "
        f"({per_sample:.0f} per sample); {spp} samples per optimizer step"
    )
    print(
        f"a. ours, {len(ours)} launches (one per batch): walls {', '.join(f'{o.wall:.1f}' for o in ours)} s"
    )
    print(f"b. bare Trainer, one launch over all batches: wall {bare_out.wall:.1f} s")
    ratio = ours_train / bare_train
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(
        f"in training   tokens/s  ours {ours_train:,.0f}   bare {bare_train:,.0f}   ratio ours/bare "
        f"{ratio:.3f}  (goal >= {GOAL_RATIO:.2f}x: {verdict})"
    )
    print(
        f"end to end    tokens/s  ours {ours_e2e:,.0f}   bare {bare_e2e:,.0f}   ratio ours/bare "
        f"{ours_e2e / bare_e2e:.3f}  (ours pays {len(ours)} start-ups and resumes, as Jobs do)"
    )


def stop_mid_batch(event: dict[str, Any], proc: subprocess.Popen[str]) -> bool:
    """SIGTERM to torchrun (as the kubelet sends it to the container) once a third of the batch is trained.

    Two thirds of the steps are left for the signal to reach every rank (it is handled at a step's end).
    """
    start, target = event.get("batchStartStep", 0), event.get("batchTargetStep", 0)
    if event.get("kind") != "progress" or event["globalStep"] < start + max((target - start) // 3, 1):
        return False
    os.kill(proc.pid, signal.SIGTERM)
    return True


def check_preempted(setup: Setup, run_dir: Path, out: Launch) -> tuple[list[str], int | None]:
    """What is wrong with the preempted launch (nothing: PASS), and the step it stopped at."""
    from continual_trainer import checkpoints as ckpts
    from continual_trainer.exitcodes import ExitCode

    problems = []
    if out.signalled_at is None:
        return ["the batch ended before half of it was trained: no SIGTERM sent"], None
    codes = {rank: name for rank, (name, _) in out.summaries.items()}
    if codes != dict.fromkeys(range(setup.nproc), "PREEMPTED"):
        problems.append(
            f"ranks' outcomes {codes}, expected every rank PREEMPTED (exit {ExitCode.PREEMPTED.value})"
        )
    result = out.summaries.get(0, ("", {}))[1]
    if result.get("outcome") == "Succeeded":
        problems.append(
            "the SIGTERM came after the batch's last step (steps too fast): raise --steps-per-batch"
        )
        return problems, None
    if (result.get("outcome"), result.get("exitCode")) != ("Preempted", int(ExitCode.PREEMPTED)):
        problems.append(f"coordinator's result {result}")
    stop = result.get("endStep")
    published = sorted(
        s for s in (ckpts.step_of(p) for p in (run_dir / "checkpoints").iterdir()) if s is not None
    )
    at_stop = run_dir / "checkpoints" / f"checkpoint-{stop}"
    if stop is None or published != [stop] or not at_stop.is_dir():  # a fresh run, saveSteps 10,000
        problems.append(f"published checkpoints {published}: expected one, checkpoint-{stop}")
        return problems, stop
    manifest = json.loads((at_stop / ckpts.MANIFEST).read_text())
    rng = {f"rng_state_{r}.pth" for r in range(setup.nproc)} if setup.nproc > 1 else {"rng_state.pth"}
    if manifest.get("worldSize", 1) != setup.nproc or not rng <= set(manifest["files"]):
        problems.append(
            f"checkpoint-{stop}: worldSize {manifest.get('worldSize')}, files {manifest['files']}"
        )
    return problems, stop


def preemption(setup: Setup) -> bool:
    """Part c.: preempt a batch mid-way through torchrun, retry it; PASS when both ends are right."""
    run_dir = setup.tmp / "preempt"
    config = write_config(setup, run_dir, 0)
    out = launch(setup, ours_cmd(config), on_event=stop_mid_batch)
    problems, stop = check_preempted(setup, run_dir, out)
    stopped_in = out.ended_at - out.signalled_at if out.signalled_at is not None else float("nan")
    print(
        f"c. SIGTERM to torchrun after step {out.signalled_step}'s progress line: torchrun exited {out.code} "
        f"{stopped_in:.1f} s later; ranks {dict(sorted((r, n) for r, (n, _) in out.summaries.items()))}; "
        f"checkpoint at the stop: {f'checkpoint-{stop}' if stop is not None else None}"
    )
    retry = launch(setup, ours_cmd(config))
    result = retry.summaries.get(0, ("", {}))[1]
    started = next((e for e in retry.events if e.get("kind") == "batch-started"), {})
    if retry.code != 0 or {n for n, _ in retry.summaries.values()} != {"SUCCESS"}:
        problems.append(
            f"retry: torchrun exited {retry.code}, ranks {retry.summaries}\n{retry.stderr[-3000:]}"
        )
    elif started.get("latestCheckpoint") != f"checkpoint-{stop}":
        problems.append(f"retry resumed from {started.get('latestCheckpoint')}, not checkpoint-{stop}")
    elif result.get("endStep") != result.get("targetStep"):
        problems.append(f"retry ended at step {result.get('endStep')}, target {result.get('targetStep')}")
    print(
        f"   retry: resumed from {started.get('latestCheckpoint')}, ended at step {result.get('endStep')} of "
        f"{result.get('targetStep')}, exit {retry.code}, wall {retry.wall:.1f} s"
    )
    for problem in problems:
        print(f"   problem: {problem}")
    print(f"c. preemption on {setup.nproc} ranks: {'PASS' if not problems else 'FAIL'}")
    return not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the plumbing on the CPU: gloo, 2 processes, fp32")
    parser.add_argument("--nproc", type=int, help="processes (the GPUs: torch.cuda.device_count(); --cpu 2)")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--steps-per-batch", type=int, help="optimizer steps per batch (32; --cpu 6)")
    parser.add_argument("--hidden", type=int, help="model width (1024; --cpu 64)")
    parser.add_argument("--layers", type=int, help="decoder layers (8; --cpu 2)")
    parser.add_argument("--seq", type=int, help="max tokens per sample (512; --cpu 32)")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (8; --cpu 2)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per rank per step")
    parser.add_argument("--every-steps", type=int, help="progress every this many steps (4; --cpu 1)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per torchrun launch")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # every line out before a kill
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    cpu = args.cpu
    if not cpu and not torch.cuda.is_available():
        print(
            "CUDA is not available on this machine: the multi-GPU benchmark did not run (--cpu runs its plumbing)."
        )
        return
    nproc = args.nproc or (2 if cpu else torch.cuda.device_count())
    defaults = (6, 64, 2, 32, 2, 1) if cpu else (32, 1024, 8, 512, 8, 4)
    given = (args.steps_per_batch, args.hidden, args.layers, args.seq, args.batch_size, args.every_steps)
    steps, hidden, layers, seq, batch_size, every = (
        g if g is not None else d for g, d in zip(given, defaults, strict=True)
    )
    if cpu:
        print(
            f"CPU PLUMBING RUN (not a GPU result): gloo, {nproc} processes, fp32; torch {torch.__version__}"
        )
    else:
        print(f"device: {nproc} x {torch.cuda.get_device_name(0)}; torch {torch.__version__}; bf16, NCCL")
    tmp = Path(tempfile.mkdtemp(prefix="ct-gpu-multi-"))
    samples = steps * batch_size * args.accumulation * nproc  # whole steps: both trainers see every sample
    training = {
        "perDeviceBatchSize": batch_size,
        # Ours: the micro-batches of a step, shared out over the ranks (docs/scaling.md); the bare script
        # runs args.accumulation per rank: a step is the same samples for both.
        "gradientAccumulationSteps": args.accumulation * nproc,
        "epochsPerBatch": 1,
        "saveSteps": 10_000,  # checkpoints at batch ends only (and at a SIGTERM)
        "maxSeqLength": seq,
        "learningRate": 1e-4,
        **({} if cpu else {"precision": "bf16"}),
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    setup = Setup(
        tmp=tmp,
        model=build_model(tmp / "model", hidden=hidden, layers=layers),
        batches=write_batches(tmp / "data", batches=args.batches, samples=samples, words=seq),
        nproc=nproc,
        training=training,
        every_steps=every,
        timeout=args.timeout,
        env=env,
    )
    print(
        f"model: Llama hidden={hidden} layers={layers}; {args.batches} batches x {samples} samples x <= {seq} "
        f"tokens; per-device batch {batch_size}, {args.accumulation} micro-batches per rank per step; {tmp}"
    )
    measure(setup, args.accumulation)
    if not preemption(setup):
        sys.exit(1)


if __name__ == "__main__":
    main()
