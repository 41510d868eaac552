"""Coalesced batches in local mode: the planner's one-Job-for-several decision, trained by real processes.

Three inbox batches queued at once are trained by one trainer process and end bit for bit where one process
per batch ends (max abs diff 0.0, CPU fp32); a SIGTERM in the middle of the coalesced process leaves the
batches before it completed, and the next process resumes the one in progress with the one after it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from test_local import setup_volume, statuses

from continual_operator.local.mode import LocalOptions, run_local

pytestmark = pytest.mark.slow
ENDS = {"batch-001": 6, "batch-002": 12, "batch-003": 18}  # 3 batches x 2 epochs x 3 steps


def coalescing(tmp_path: Path, tiny_model: Path, per_job: int) -> LocalOptions:
    options = setup_volume(tmp_path, tiny_model)
    manifest = yaml.safe_load(options.manifest.read_text())
    manifest["spec"]["training"]["maxBatchesPerJob"] = per_job
    options.manifest.write_text(yaml.safe_dump(manifest))
    return options


def run_dir(options: LocalOptions) -> Path:
    return options.volume / "runs" / "demo"


def jobs(options: LocalOptions) -> list[str]:
    """The trainer processes local mode started (one config file each)."""
    return sorted(p.stem for p in (options.state / "jobs").glob("*.yaml"))


def adapters(options: LocalOptions) -> dict[str, dict]:
    """Each batch's exported adapter and the final checkpoint's."""
    found = {f"step-{end}": run_dir(options) / "adapters" / f"step-{end}" for end in ENDS.values()}
    found["final"] = run_dir(options) / "checkpoints" / "checkpoint-18"
    return {k: load_file(str(v / "adapter_model.safetensors")) for k, v in found.items()}


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_same_adapters(options: LocalOptions, reference: dict[str, dict]) -> None:
    for name, weights in adapters(options).items():
        assert max_abs_diff(weights, reference[name]) == 0.0, name


@pytest.fixture(scope="module")
def one_process_per_batch(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    options = coalescing(tmp_path_factory.mktemp("per-batch"), tiny_model, per_job=1)
    assert run_local(options, out=lambda _: None) == 0
    assert jobs(options) == ["demo-batch-001-a1", "demo-batch-002-a1", "demo-batch-003-a1"]
    return adapters(options)


def test_three_queued_batches_are_trained_by_one_process_exactly(one_process_per_batch, tiny_model, tmp_path):
    options = coalescing(tmp_path, tiny_model, per_job=4)
    assert run_local(options, out=lambda _: None) == 0
    assert jobs(options) == ["demo-batch-001-a1"]  # one process for the three batches
    run, batches = statuses(options)
    assert {k: (v["phase"], v["startStep"], v["endStep"], v["job"]) for k, v in batches.items()} == {
        b: ("Succeeded", end - 6, end, "demo-batch-001-a1") for b, end in ENDS.items()
    }
    assert all(v["attempts"] == 1 and v["samples"] for v in batches.values())
    assert (run["phase"], run["completedStep"], run["batchesCompleted"]) == ("Idle", 18, 3)
    assert_same_adapters(options, one_process_per_batch)


def _sigterm_when_frozen(options: LocalOptions, errors: list[str]) -> None:
    """Wait for the trainer to freeze at its failpoint, then SIGTERM it and let it go on."""
    deadline = time.monotonic() + 300
    pid_file = options.state / "jobs" / "demo-batch-001-a1.pid"
    while time.monotonic() < deadline:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "T":  # stopped
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
                return
        time.sleep(0.05)
    errors.append("the trainer never stopped at its failpoint")


def test_a_sigterm_mid_way_keeps_completed_batches_and_the_next_process_resumes(
    one_process_per_batch, tiny_model, tmp_path, monkeypatch
):
    options = coalescing(tmp_path, tiny_model, per_job=4)
    # The coalesced process freezes at the end of step 9, inside batch-002 (steps 6..12), and gets SIGTERM.
    monkeypatch.setenv("CONTINUAL_TRAINER_FAILPOINTS", "step-end@9=stop")
    errors: list[str] = []
    signaller = threading.Thread(target=_sigterm_when_frozen, args=(options, errors), daemon=True)
    signaller.start()
    lines: list[str] = []
    assert run_local(options, out=lines.append) == 0, "\n".join(lines[-20:])
    signaller.join(timeout=5)
    assert not errors
    # batch-001 completed in the first process; batch-002 was preempted there and resumed, with
    # batch-003 after it, in the second (its second attempt); batch-003 had one attempt, in the second.
    assert jobs(options) == ["demo-batch-001-a1", "demo-batch-002-a2"]
    _, batches = statuses(options)
    summary = {
        k: (v["startStep"], v["endStep"], v["attempts"], v.get("preemptions", 0)) for k, v in batches.items()
    }
    assert summary == {"batch-001": (0, 6, 1, 0), "batch-002": (6, 12, 2, 1), "batch-003": (12, 18, 1, 0)}
    assert all(v["phase"] == "Succeeded" for v in batches.values())
    assert_same_adapters(options, one_process_per_batch)
