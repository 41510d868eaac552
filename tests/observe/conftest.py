"""Volumes the observe tests read: a real quickstart (the demo CLI) and a run with a preemption and a kill.

Both are built once per session, by real trainer processes, and shared by the history, report and page
tests (they only read them).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.trainer.helpers import DEMO_BATCHES, make_config, run_and_signal, run_trainer


def report_cli(volume: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "continual_operator.cli",
            "report",
            "--volume",
            str(volume),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="session")
def demo_volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, exactly as a user runs it: ``continual-training demo --volume DIR``."""
    volume = tmp_path_factory.mktemp("demo") / "volume"
    proc = subprocess.run(
        [sys.executable, "-m", "continual_operator.cli", "demo", "--volume", str(volume)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return volume


@pytest.fixture(scope="session")
def demo_report(demo_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``continual-training report`` on the quickstart volume: the folder with demo-curve.png and demo-report.html."""
    out = tmp_path_factory.mktemp("report")
    proc = report_cli(demo_volume, out)
    assert proc.returncode == 0, proc.stderr
    assert f"run demo: {out / 'demo-curve.png'}" in proc.stdout
    return out


@dataclass(frozen=True)
class InterruptedRun:
    """b1 preempted (SIGTERM) then resumed; b2 SIGKILLed after step 9 then retried from checkpoint 8."""

    run_dir: Path
    preempted_at: int
    killed_after: int = 9


@pytest.fixture(scope="session")
def interrupted_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> InterruptedRun:
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    (b1, p1), (b2, p2), _ = DEMO_BATCHES
    preempted = run_and_signal(make_config(run_dir, tiny_model, b1, p1, trace=False), 3, signal.SIGTERM)
    assert preempted.code == 85, preempted.stderr[-3000:]
    assert run_trainer(make_config(run_dir, tiny_model, b1, p1, trace=False)).code == 0
    killed = run_trainer(
        make_config(run_dir, tiny_model, b2, p2, trace=False),
        env={"CONTINUAL_TRAINER_FAILPOINTS": "step-end@10"},
    )
    assert killed.code == -signal.SIGKILL
    retry = run_trainer(make_config(run_dir, tiny_model, b2, p2, trace=False))
    assert retry.code == 0, retry.stderr[-3000:]
    return InterruptedRun(run_dir, preempted_at=int(preempted.result["endStep"]), killed_after=9)
