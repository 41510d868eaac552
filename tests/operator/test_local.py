"""Local mode end to end: the planner + real trainer processes on a folder standing for the volume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from continual_operator.local.mode import LocalModeError, LocalOptions, load_run, run_local

DEMO = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"
DATA = Path(__file__).resolve().parents[2] / "trainer_image" / "continual_trainer" / "demo_data"


def setup_volume(
    tmp_path: Path, tiny_model: Path, *, policy: str = "Halt", bad_second: bool = False
) -> LocalOptions:
    volume = tmp_path / "volume"
    shutil.copytree(tiny_model, volume / "models" / "tiny-llama")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("batch-001.jsonl", "batch-002.jsonl", "batch-003.txt"):
        shutil.copy(DATA / name, inbox / name)
    if bad_second:
        (inbox / "batch-002.jsonl").write_text('{"text": "ok"}\n{"prompt": 1}\n')
    manifest = yaml.safe_load(DEMO.read_text())
    manifest["spec"]["failurePolicy"]["onPermanentFailure"] = policy
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return LocalOptions(
        manifest=path,
        volume=volume,
        state=tmp_path / "state",
        inbox=inbox,
        poll_seconds=0.2,
        settle_seconds=0,
    )


def statuses(options: LocalOptions) -> tuple[dict, dict]:
    run = json.loads((options.state / "status.json").read_text())
    batches = json.loads((options.state / "batches.json").read_text())
    return run, batches


@pytest.mark.slow
def test_three_inbox_batches_train_in_order_with_contiguous_steps(tiny_model, tmp_path):
    options = setup_volume(tmp_path, tiny_model)
    lines: list[str] = []
    assert run_local(options, out=lines.append) == 0
    run, batches = statuses(options)
    assert run["phase"] == "Idle"
    assert run["globalStep"] == 18
    assert run["latestCheckpoint"] == "checkpoint-18"
    assert {k: (v["phase"], v["startStep"], v["endStep"]) for k, v in batches.items()} == {
        "batch-001": ("Succeeded", 0, 6),
        "batch-002": ("Succeeded", 6, 12),
        "batch-003": ("Succeeded", 12, 18),
    }
    assert any(line.startswith("batch batch-002: steps 6..12, 20 samples") for line in lines)
    ready = next(c for c in run["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # a second pass finds nothing to do and changes nothing
    assert run_local(options, out=lines.append) == 0
    assert statuses(options)[1] == batches


@pytest.mark.parametrize(("policy", "third"), [("Halt", "Queued"), ("SkipBatch", "Succeeded")])
def test_a_bad_batch_halts_or_is_skipped_by_policy(tiny_model, tmp_path, policy, third):
    options = setup_volume(tmp_path, tiny_model, policy=policy, bad_second=True)
    lines: list[str] = []
    assert run_local(options, out=lines.append) == 1
    run, batches = statuses(options)
    assert batches["batch-002"]["phase"] == "Failed"
    assert "batch-002.jsonl:2: field 'prompt' is missing or not a string" in batches["batch-002"]["message"]
    assert batches["batch-003"]["phase"] == third
    if policy == "Halt":
        assert run["phase"] == "Halted"
        assert next(c for c in run["conditions"] if c["type"] == "Degraded")["status"] == "True"
    else:
        assert (batches["batch-003"]["startStep"], batches["batch-003"]["endStep"]) == (6, 12)
    assert any("[Warning] TrainingBatch/batch-002" in line for line in lines)


def test_an_unsafe_schedule_is_refused_naming_the_field(tmp_path):
    manifest = yaml.safe_load(DEMO.read_text())
    manifest["spec"]["training"]["lrSchedule"] = {"type": "cosine"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(LocalModeError, match=r"spec\.training\.lrSchedule\.type"):
        load_run(path)
    (tmp_path / "inbox").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "continual_operator.cli",
            "local",
            "--run",
            str(path),
            "--inbox",
            str(tmp_path / "inbox"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert not (tmp_path / "volume").exists()  # refused before anything was written
    assert "spec.training.lrSchedule.type" in proc.stderr
    assert "'cosine' is not allowed" in proc.stderr
