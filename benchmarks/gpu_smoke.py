"""A short GPU check of the trainer, as the Jobs run it (one process per batch).

1. bf16 on the GPU: three batches in separate processes, batch 2 preempted by SIGTERM mid-way and retried:
   exit codes, contiguous steps, the adapter exported.
2. fp32 on the GPU: batch by batch (with a SIGKILL mid-batch and a retry) vs one uninterrupted run; prints
   the max abs difference of the adapter weights (0.0 on CPU by test; on a GPU it depends on whether the
   kernels are deterministic, so it is reported, not asserted).

Usage: python benchmarks/gpu_smoke.py   (runs on the CPU too, where it is just slower)
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.trainer.helpers import (  # noqa: E402
    DEMO_BATCHES,
    adapter_weights,
    make_config,
    max_abs_diff,
    run_and_signal,
    run_trainer,
)


def main() -> None:
    import torch

    from continual_trainer.reference import run_uninterrupted
    from continual_trainer.tinymodel import build_tiny_model

    print(
        f"cuda: {torch.cuda.is_available()} {torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}; torch {torch.__version__}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="ct-gpu-smoke-"))
    model = build_tiny_model(tmp / "model", hidden=256, layers=4)
    bf16 = {"precision": "bf16"} if torch.cuda.is_available() else {}

    run_dir = tmp / "bf16"
    (b1, p1), (b2, p2), (b3, p3) = DEMO_BATCHES
    out = run_trainer(make_config(run_dir, model, b1, p1, training=bf16))
    print(f"[bf16] {b1}: exit {out.code} {out.result}")
    pre = run_and_signal(make_config(run_dir, model, b2, p2, training=bf16), 8, signal.SIGTERM)
    print(
        f"[bf16] {b2} SIGTERM at step >= 8: exit {pre.code} outcome {pre.result and pre.result['outcome']} at step {pre.result and pre.result.get('endStep')}"
    )
    for bid, path in [(b2, p2), (b3, p3)]:
        out = run_trainer(make_config(run_dir, model, bid, path, training=bf16))
        print(
            f"[bf16] {bid}: exit {out.code} steps {out.result['startStep']}..{out.result['endStep']} loss {out.result['meanLoss']:.4f}"
        )
    print(f"[bf16] adapters: {sorted(p.name for p in (run_dir / 'adapters').iterdir())}")

    ref = tmp / "ref"
    run_uninterrupted([make_config(ref, model, b, p) for b, p in DEMO_BATCHES], ref)
    run_dir = tmp / "fp32"
    assert run_trainer(make_config(run_dir, model, b1, p1)).code == 0
    killed = run_and_signal(make_config(run_dir, model, b2, p2), 9, signal.SIGKILL)
    print(f"[fp32] {b2} SIGKILL at step >= 9: exit {killed.code}")
    for bid, path in [(b2, p2), (b3, p3)]:
        assert run_trainer(make_config(run_dir, model, bid, path)).code == 0
    diff = max_abs_diff(
        adapter_weights(run_dir / "checkpoints" / "checkpoint-18"),
        adapter_weights(ref / "checkpoints" / "checkpoint-18"),
    )
    print(f"[fp32] batch-by-batch (killed + retried) vs uninterrupted: max abs diff {diff}")


if __name__ == "__main__":
    main()
