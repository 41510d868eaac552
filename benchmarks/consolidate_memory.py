"""Consolidation peak memory: the whole job's peak RSS (merge + check) vs the model's fp32 size, and each phase's.

A random-init Llama (the tiny model scaled up: ``--hidden``, ``--layers``) is saved in shards of
``--shard-mb`` MB (>= 8 shards), with a LoRA adapter (q/k/v/o, random non-zero B so that the merge changes
every target) exported as a run's ``adapters/latest``. Three measurements, each in a fresh subprocess that
reports its own peak RSS (``VmHWM`` in ``/proc/self/status``, the kernel's high-water mark):

1. **the merge alone** (:func:`continual_trainer.consolidate.merge.merge`, fp32 output): peak RSS, and the peak
   above the process's RSS once torch/transformers/peft/safetensors are imported (a constant of the
   interpreter, whatever the model). Goal: merge peak above the libraries <= 0.4 x the model's fp32 size.
2. **the check alone** (:func:`continual_trainer.consolidate.check.compare`): base + adapter, then the merged
   model, each forward pass with its weights streamed from the files module by module.
3. **the whole job** (``python -m continual_trainer.consolidate``: merge + check + publish): the number the goal
   is about. Goal: the job's peak above the libraries <= 0.4 x the model's fp32 size; the absolute peak
   (libraries included) is printed beside it.

Usage: python benchmarks/consolidate_memory.py [--hidden 1024 --layers 16 --shard-mb 75]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL = 0.4
MIB = 1 << 20

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would report
# the parent's peak (the parent built the model); VmHWM belongs to the process's own address space.
_PEAK = """
import json, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
import torch, transformers, peft, safetensors, accelerate  # noqa
import continual_trainer.consolidate.merge, continual_trainer.consolidate.check  # noqa
libs = peak()
"""

_MERGE = (
    _PEAK
    + """
from pathlib import Path
from continual_trainer.consolidate import merge, source
run, base, out = (Path(p) for p in sys.argv[1:4])
adapter = source.latest_adapter(run)
out.mkdir()
stats = merge.merge(merge.MergeRequest(adapter, source.base_weights(base), "float32", out))
print(json.dumps({"libs": libs, "peak": peak(), "shards": stats.shards, "bytes": stats.total_bytes}))
"""
)

_CHECK = (
    _PEAK
    + """
from pathlib import Path
from continual_trainer.consolidate import check
base, adapter, merged = (Path(p) for p in sys.argv[1:4])
result = check.compare(base, adapter, merged, "float32")
print(json.dumps({"libs": libs, "peak": peak(), "maxAbsDiff": result.max_abs_diff}))
"""
)


def build(root: Path, hidden: int, layers: int, shard_mb: int) -> tuple[Path, Path]:
    """The sharded base model and a run folder whose adapters/latest is a random LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from continual_trainer.tinymodel import build_tiny_model

    single = build_tiny_model(root / "single", hidden=hidden, layers=layers)
    model = AutoModelForCausalLM.from_pretrained(str(single), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(single))
    base = root / "base"
    model.save_pretrained(str(base), max_shard_size=f"{shard_mb}MB")
    tokenizer.save_pretrained(str(base))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    run = root / "run"
    folder = run / "adapters" / "step-100"
    peft_model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (run / "adapters" / "latest").symlink_to("step-100")
    return base, run


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


_JOB = (
    _PEAK
    + """
import atexit, os, runpy
atexit.register(lambda: open(os.environ["PEAK_FILE"], "w").write(json.dumps({"libs": libs, "peak": peak()})))
sys.argv = ["consolidate", *sys.argv[1:]]
runpy.run_module("continual_trainer.consolidate", run_name="__main__")
"""
)


def whole_job(root: Path, base: Path, run: Path) -> tuple[float, dict[str, Any]]:

    import yaml

    config = {
        "runName": "bench",
        "runDir": str(run),
        "dataRoot": str(root),
        "baseModel": {"path": str(base)},
        "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "batch": {"id": "unused", "data": {"path": "unused.jsonl"}},
        "terminationMessagePath": str(root / "term.json"),
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    argv = ["--config", str(root / "cfg.yaml"), "--output", "published", "--log-level", "WARNING"]
    env = dict(os.environ, PEAK_FILE=str(root / "peak.json"))
    subprocess.run([sys.executable, "-c", _JOB, *argv], check=True, env=env)
    elapsed = time.monotonic() - started
    return elapsed, dict(json.loads((root / "peak.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--shard-mb", type=int, default=75)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="consolidate-bench-") as tmp:
        root = Path(tmp)
        base, run = build(root, args.hidden, args.layers, args.shard_mb)
        shards = sorted(base.glob("model-*.safetensors"))
        fp32 = sum(p.stat().st_size for p in shards)
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {fp32 / MIB:.0f} MiB fp32 in {len(shards)} shards"
        )
        assert len(shards) >= 8, (
            "use a larger model or a smaller --shard-mb: the goal is stated for >= 8 shards"
        )

        started = time.monotonic()
        merged = child(_MERGE, str(run), str(base), str(root / "merged-only"))
        merge_s = time.monotonic() - started
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (base / name).exists():
                (root / "merged-only" / name).write_bytes((base / name).read_bytes())
        started = time.monotonic()
        checked = child(_CHECK, str(base), str(run / "adapters" / "latest"), str(root / "merged-only"))
        check_s = time.monotonic() - started
        job_s, job_peak = whole_job(root, base, run)

        above = merged["peak"] - merged["libs"]
        ratio = above / fp32
        print(
            f"libraries alone (torch, transformers, peft, safetensors, accelerate): {merged['libs'] / MIB:.0f} MiB RSS"
        )
        print(
            f"merge: peak RSS {merged['peak'] / MIB:.0f} MiB = {merged['peak'] / fp32:.2f}x fp32 size; above the "
            f"libraries {above / MIB:.0f} MiB = {ratio:.2f}x (goal <= {GOAL}x: {'met' if ratio <= GOAL else 'MISSED'}); "
            f"{merged['shards']} shards in {merge_s:.1f} s"
        )
        check_above = checked["peak"] - checked["libs"]
        print(
            f"check: peak RSS {checked['peak'] / MIB:.0f} MiB, above the libraries {check_above / MIB:.0f} MiB = "
            f"{check_above / fp32:.2f}x fp32 size (base + adapter, then the merged model, streamed); max abs "
            f"diff {checked['maxAbsDiff']:.3g}; {check_s:.1f} s"
        )
        job_above = job_peak["peak"] - job_peak["libs"]
        job_ratio = job_above / fp32
        print(
            f"whole job (merge + check + publish): peak RSS {job_peak['peak'] / MIB:.0f} MiB = "
            f"{job_peak['peak'] / fp32:.2f}x fp32 size; above the libraries {job_above / MIB:.0f} MiB = "
            f"{job_ratio:.2f}x (goal <= {GOAL}x: {'met' if job_ratio <= GOAL else 'MISSED'}); {job_s:.1f} s"
        )


if __name__ == "__main__":
    main()
