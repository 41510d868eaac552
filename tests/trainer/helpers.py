"""Helpers to write trainer configs and run the trainer as the Jobs do: one process per invocation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from continual_trainer.config import TrainerConfig

DEMO = Path(__file__).resolve().parents[2] / "trainer_image" / "continual_trainer" / "demo_data"
DEMO_BATCHES = [
    ("b1", DEMO / "batch-001.jsonl"),
    ("b2", DEMO / "batch-002.jsonl"),
    ("b3", DEMO / "batch-003.txt"),
]

BASE_TRAINING: dict[str, Any] = {
    "perDeviceBatchSize": 4,
    "gradientAccumulationSteps": 2,
    "epochsPerBatch": 2,
    "saveSteps": 2,
    "maxSeqLength": 48,
    "learningRate": 0.002,
    "checkpointsKept": 2,
}


def make_config(
    run_dir: Path,
    model: Path,
    batch_id: str,
    data: Path,
    *,
    training: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    trace: bool = True,
    data_root: Path | None = None,
) -> TrainerConfig:
    # The tests read the demo batches from the checkout and their own files from tmp folders: by default
    # the data root is the folder holding the batch's data (a relative path counts from the run folder, as
    # the trainer reads it), so a model elsewhere is off the volume, as the run-record tests expect. The
    # sandbox itself is tested in test_data_sandbox.py.
    root = data_root if data_root is not None else (run_dir / data).parent
    return TrainerConfig.model_validate(
        {
            "runName": "test",
            "runDir": str(run_dir),
            "dataRoot": str(root),
            "baseModel": {"path": str(model)},
            "lora": {
                "r": 4,
                "alpha": 8,
                "dropout": 0.1,
                "targetModules": ["q_proj", "v_proj"],
                **(lora or {}),
            },
            "training": {**BASE_TRAINING, **(training or {})},
            "batch": {"id": batch_id, "data": {"path": str(data)}},
            "terminationMessagePath": str(run_dir.parent / f"term-{run_dir.name}-{batch_id}.json"),
            "traceSamples": trace,
        }
    )


@dataclass
class Outcome:
    code: int
    result: dict[str, Any] | None
    events: list[dict[str, Any]]
    stderr: str


def _write(config: TrainerConfig) -> Path:
    path = config.root.parent / f"cfg-{config.root.name}-{config.batch.id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    term = Path(str(config.termination_message_path))
    if term.exists():
        term.unlink()
    return path


def _cmd(path: Path) -> list[str]:
    return [sys.executable, "-m", "continual_trainer.cli", "--config", str(path)]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    env.update(extra or {})
    return env


def _outcome(config: TrainerConfig, code: int, stdout: str, stderr: str) -> Outcome:
    term = Path(str(config.termination_message_path))
    result = json.loads(term.read_text()) if term.exists() else None
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return Outcome(code, result, events, stderr)


def run_trainer(config: TrainerConfig, env: dict[str, str] | None = None, timeout: float = 300) -> Outcome:
    """Run one trainer process to completion."""
    path = _write(config)
    proc = subprocess.run(
        _cmd(path), capture_output=True, text=True, env=_env(env), timeout=timeout, check=False
    )
    return _outcome(config, proc.returncode, proc.stdout, proc.stderr)


def run_and_signal(config: TrainerConfig, at_step: int, sig: int, timeout: float = 300) -> Outcome:
    """Run the trainer and send ``sig`` once it reports ``globalStep >= at_step`` on stdout."""
    path = _write(config)
    proc = subprocess.Popen(
        _cmd(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(None)
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    sent = False
    for line in proc.stdout:
        lines.append(line)
        if not sent and line.startswith("{") and json.loads(line).get("globalStep", -1) >= at_step:
            os.kill(proc.pid, sig)
            sent = True
        if time.monotonic() > deadline:
            proc.kill()
            break
    stdout = "".join(lines)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert sent, f"never reached step {at_step}: {stderr[-2000:]}"
    return _outcome(config, code, stdout, stderr)


def signal_at_step_end(config: TrainerConfig, step: int, sig: int, timeout: float = 300) -> Outcome:
    """Run the trainer frozen at the end of ``step`` (a SIGSTOP failpoint), send ``sig``, let it go on.

    Deterministic where :func:`run_and_signal` races the process: the signal is handled at a known step.
    """
    path = _write(config)
    env = _env({"CONTINUAL_TRAINER_FAILPOINTS": f"step-end@{step}=stop"})
    proc = subprocess.Popen(_cmd(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[-1].split()[0] != "T":  # the state field: T = stopped
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, stderr = proc.communicate()
            raise AssertionError(f"never stopped at step {step}: {stderr[-2000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=timeout)
    return _outcome(config, proc.returncode, stdout, stderr)


def adapter_weights(folder: Path) -> dict[str, Any]:
    return load_file(str(folder / "adapter_model.safetensors"))


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def sigkill() -> int:
    return int(signal.SIGKILL)
