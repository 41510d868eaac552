"""Local mode as a user runs it, in its own process: one per volume, and Ctrl-C never orphans a trainer."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from continual_operator.local.mode import Interrupts, LocalJob, LocalOptions, LocalRun
from continual_operator.workloads.views import JobView

DEMO = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_second_process_is_refused_and_ctrl_c_twice_waits_for_the_trainer(
    tiny_model: Path, tmp_path: Path
) -> None:
    volume, inbox = tmp_path / "volume", tmp_path / "inbox"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    inbox.mkdir()
    lines = (json.dumps({"text": f"sample number {i} of a long batch"}) for i in range(2000))
    (inbox / "batch-001.jsonl").write_text("\n".join(lines) + "\n")  # 500 steps: still training when stopped
    (tmp_path / "run.yaml").write_text(DEMO.read_text())
    command = [sys.executable, "-m", "continual_operator.cli", "local", "--run", str(tmp_path / "run.yaml")]
    command += ["--inbox", str(inbox), "--volume", str(volume), "--settle-seconds", "0"]
    log = (tmp_path / "local.log").open("w+")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, text=True)
    try:
        jobs = volume / ".local-state" / "jobs"
        _wait_for(lambda: any(jobs.glob("*.pid")), 120, "the trainer to start")
        trainer = int(next(jobs.glob("*.pid")).read_text())
        _wait_for((volume / "runs" / "demo" / "status.json").exists, 180, "the first step")

        second = subprocess.run(
            command, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False
        )
        assert second.returncode == 2
        assert "is locked by pid" in second.stderr and "another `continual-training local`" in second.stderr
        assert "Traceback" not in second.stderr + second.stdout

        first.send_signal(signal.SIGINT)
        # The second Ctrl-C as soon as the first was handled, while the trainer still saves its checkpoint
        # (a fixed pause could land after it stopped; local mode then ignores it, tested below).
        _wait_for(lambda: "stopping:" in Path(log.name).read_text(), 30, "the first Ctrl-C to be handled")
        first.send_signal(signal.SIGINT)  # used to raise KeyboardInterrupt and leave the trainer running
        assert first.wait(timeout=120) == 128 + signal.SIGINT
    finally:
        if first.poll() is None:
            first.kill()
    log.seek(0)
    output = log.read()
    assert "Traceback" not in output
    assert "still waiting for the trainer to save its checkpoint" in output
    assert "interrupted: the trainer saved a checkpoint and stopped (exit 85)" in output
    assert not _alive(trainer)
    checkpoints = sorted((volume / "runs" / "demo" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "the trainer saved no checkpoint on SIGTERM"


def _stubborn(tmp_path: Path) -> subprocess.Popen[bytes]:
    """A process that ignores SIGTERM, standing in for a trainer stuck in a step."""
    ready = tmp_path / "ready"
    code = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(ready)])
    _wait_for(ready.exists, 30, "the stand-in trainer")
    return process


@pytest.mark.parametrize("how", ["third Ctrl-C", "grace period over"])
def test_a_trainer_that_does_not_stop_is_killed_and_still_waited_for(tmp_path: Path, how: str) -> None:
    process = _stubborn(tmp_path)
    state = LocalRun(LocalOptions(manifest=tmp_path / "run.yaml", volume=tmp_path, state=tmp_path / "s"))
    view = JobView(name="demo-b1-a1", batch="b1", attempt=1, created=dt.datetime.now(dt.UTC))
    state.jobs["demo-b1-a1"] = LocalJob(view, process, tmp_path / "t.json", tmp_path / "log")
    interrupts = Interrupts()
    interrupts.count = 3 if how == "third Ctrl-C" else 1
    started = time.monotonic()
    what = state.stop(interrupts, grace=60 if how == "third Ctrl-C" else 0.5)
    assert time.monotonic() - started < 30
    assert "the trainer was killed" in what and "retrained next time" in what
    assert process.returncode == -signal.SIGKILL and not _alive(process.pid)
    assert state.jobs["demo-b1-a1"].view.exit_code == 128 + signal.SIGKILL


def test_once_interrupted_a_ctrl_c_during_the_exit_is_ignored_and_otherwise_the_handlers_come_back() -> None:
    """A Ctrl-C that lands after the trainer stopped, while local mode exits, must not turn into a
    KeyboardInterrupt in the middle of its shutdown (exit -2 instead of 130)."""
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {n: signal.getsignal(n) for n in numbers}
    try:
        calm = Interrupts()
        with calm.installed():
            pass
        assert {n: signal.getsignal(n) for n in numbers} == saved  # not interrupted: the handlers come back

        interrupted = Interrupts()
        with interrupted.installed():
            os.kill(os.getpid(), signal.SIGINT)
            interrupted.sleep(5)
        assert interrupted.count == 1
        assert all(signal.getsignal(n) is signal.SIG_IGN for n in numbers)
        os.kill(os.getpid(), signal.SIGINT)  # raised KeyboardInterrupt before
        time.sleep(0.05)
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
