"""``benchmarks/gpu_multi.py --cpu``: the multi-GPU benchmark's plumbing, on the CPU with the smallest settings.

The GPU benchmark runs only where a GPU is lent, as-is: this runs the same code on 2 gloo processes (one
batch of 6 steps) so that a change to what it reads (the progress lines, every rank's summary line, the
checkpoint manifest, the bare script's result) breaks here first. Its numbers are not looked at.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_multi.py"
RATE = re.compile(r"^in training\s+tokens/s\s+ours ([\d,]+)\s+bare ([\d,]+)", re.MULTILINE)


def test_cpu_plumbing_measures_both_trainers_and_passes_the_preemption_path(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPT), "--cpu", "--batches", "1", "--timeout", "240"]  # 6 steps
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "CPU PLUMBING RUN (not a GPU result)" in out
    assert "steps 6 (bare: 6)" in out  # both trainers trained the same optimizer steps
    rates = RATE.search(out)
    assert rates is not None, out
    assert all(int(r.replace(",", "")) > 0 for r in rates.groups())
    stop = re.search(
        r"ranks \{0: 'PREEMPTED', 1: 'PREEMPTED'\}; checkpoint at the stop: checkpoint-(\d)", out
    )
    assert stop is not None and 2 <= int(stop.group(1)) < 6, out  # SIGTERM after step 2's progress line
    assert f"retry: resumed from checkpoint-{stop.group(1)}, ended at step 6 of 6, exit 0" in out
    assert "c. preemption on 2 ranks: PASS" in out
