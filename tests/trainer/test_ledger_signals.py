"""SIGTERM before training is "preempted, nothing trained": exit 85, outcome Preempted, never a traceback.

The trainer runs as the Jobs run it (one process); a failpoint picks the phase of start-up at which it
sends itself SIGTERM, and a timed test sends SIGTERM from outside at several moments after the entry
point's first line (from there on the handler is installed; before it is the interpreter's own start-up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.trainer import helpers
from tests.trainer.helpers import DEMO_BATCHES, make_config, run_trainer

(B1, P1), _, _ = DEMO_BATCHES
PREEMPTED = 85
#: Phases before the model's libraries are imported: each test process is short.
EARLY_PHASES = ["entry", "imports", "config", "lock", "checks", "model"]


def summary(stderr: str) -> dict:
    """The CLI's last line: ``continual-trainer: PREEMPTED {...}``."""
    line = next(x for x in reversed(stderr.splitlines()) if x.startswith("continual-trainer: "))
    return json.loads(line.split(" ", 2)[2])


def assert_preempted(code: int, stderr: str) -> dict:
    assert code == PREEMPTED, stderr[-3000:]
    assert "Traceback" not in stderr
    result = summary(stderr)
    assert result["outcome"] == "Preempted"
    assert result["reason"] == "Preempted"
    assert "retry" in result["message"]
    return result


@pytest.mark.parametrize("phase", EARLY_PHASES)
def test_sigterm_in_each_start_up_phase_is_preempted(tiny_model, tmp_path, phase):
    run_dir = tmp_path / "run"
    config = make_config(run_dir, tiny_model, B1, P1)
    out = run_trainer(config, env={"CONTINUAL_TRAINER_FAILPOINTS": f"phase@{phase}=term"})
    result = assert_preempted(out.code, out.stderr)
    assert "before training: nothing was trained" in result["message"]
    if phase not in ("entry", "imports", "config"):  # the config was read: the result record is there
        assert out.result is not None
        assert (out.result["outcome"], out.result["batchId"]) == ("Preempted", B1)
    assert not (run_dir / "ledger").exists()
    assert not (run_dir / "checkpoints").exists()


def test_sigterm_after_the_model_loaded_but_before_the_first_step_is_preempted(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    config = make_config(run_dir, tiny_model, B1, P1)
    out = run_trainer(config, env={"CONTINUAL_TRAINER_FAILPOINTS": "phase@training=term"})
    result = assert_preempted(out.code, out.stderr)
    assert "while starting to train" in result["message"]
    assert out.result is not None
    assert out.result["outcome"] == "Preempted"
    assert not list((run_dir / "checkpoints").glob("checkpoint-*"))  # nothing trained


def _wait_stopped(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached the entry failpoint")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0, 2.0])
def test_sigterm_at_any_moment_of_start_up_is_preempted(tiny_model, tmp_path, delay):
    config = make_config(tmp_path / "run", tiny_model, B1, P1)
    path = helpers._write(config)
    env = helpers._env({"CONTINUAL_TRAINER_FAILPOINTS": "phase@entry=stop"})
    proc = subprocess.Popen(
        helpers._cmd(path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        _wait_stopped(proc.pid)  # the handler is installed: from here on every moment must give 85
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_preempted(proc.returncode, stderr)


def test_a_sigterm_a_library_wrapped_in_its_own_error_is_still_preempted(tmp_path, monkeypatch):
    """transformers' lazy imports re-raise what an import raised as ModuleNotFoundError (seen in CI at 0.5 s)."""
    from continual_trainer import cli, preemption, train

    def main_hit_during_a_lazy_import(config):
        try:
            preemption._handler(signal.SIGTERM, None)  # what the SIGTERM does inside the import
        except BaseException as exc:
            raise ModuleNotFoundError("Could not import module 'GenerationMixin'") from exc

    monkeypatch.setattr(train, "main", main_hit_during_a_lazy_import)
    monkeypatch.setattr(preemption, "_state", preemption._State(phase="model"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(preemption.Preempted) as caught:
            cli.execute(make_config(tmp_path / "run", tmp_path / "model", B1, P1))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught.value.phase == "model"
    assert "nothing was trained" in caught.value.message
