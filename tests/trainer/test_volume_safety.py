"""What happens on the volume: fallback past broken checkpoints, retention, idempotency, refusals.

Every refusal must leave the volume as it was: no checkpoint deleted or changed, no batch record written.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff, run_trainer

from continual_trainer.cli import execute
from continual_trainer.exitcodes import ExitCode
from continual_trainer.fsutil import exclusive_lock
from continual_trainer.reference import run_uninterrupted

(B1, P1), (B2, P2), (B3, P3) = DEMO_BATCHES


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file under checkpoints/ and ledger/ with its hash."""
    out = {}
    for sub in ("checkpoints", "ledger", "adapters"):
        for p in sorted((run_dir / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(run_dir))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


@pytest.fixture(scope="module")
def after_b1(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder in which batch b1 completed (in-process), to copy from."""
    run_dir = tmp_path_factory.mktemp("after-b1") / "run"
    code, result = execute(make_config(run_dir, tiny_model, B1, P1))
    assert code == ExitCode.SUCCESS, result
    return run_dir


def copy_run(src: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(src, dest, symlinks=True)
    return dest


def test_corrupt_checkpoint_is_quarantined_and_the_previous_one_is_used(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    killed = run_trainer(
        make_config(run_dir, tiny_model, B2, P2), env={"CONTINUAL_TRAINER_FAILPOINTS": "step-end@9"}
    )
    assert killed.code == -signal.SIGKILL
    assert steps(run_dir) == [6, 8]
    optimizer = run_dir / "checkpoints" / "checkpoint-8" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # torn by a non-atomic copy, say
    torn = run_dir / "checkpoints" / "checkpoint-7"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"partial")
    notes = run_dir / "checkpoints" / "checkpoint-notes"
    notes.mkdir()

    code, result = execute(make_config(run_dir, tiny_model, B2, P2))
    assert code == ExitCode.SUCCESS, result
    reasons = {
        p.name.split(".")[0]: (p / "QUARANTINE_REASON.txt").read_text()
        for p in (run_dir / "quarantine").iterdir()
    }
    assert "optimizer.pt" in reasons["checkpoint-8"]
    assert "missing files" in reasons["checkpoint-7"]
    assert notes.is_dir()  # not named checkpoint-<int>: never touched

    clean = tmp_path / "clean"
    run_uninterrupted([make_config(clean, tiny_model, b, p) for b, p in DEMO_BATCHES[:2]], clean)
    ref = adapter_weights(clean / "checkpoints" / "checkpoint-12")
    assert max_abs_diff(adapter_weights(run_dir / "checkpoints" / "checkpoint-12"), ref) == 0.0


def test_retention_keeps_the_newest_and_the_last_batch_end(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    assert steps(run_dir) == [4, 6]  # checkpointsKept=2
    keep1 = {"checkpointsKept": 1}
    code, _ = execute(make_config(run_dir, tiny_model, B2, P2, training=keep1))
    assert code == ExitCode.SUCCESS
    assert steps(run_dir) == [12]
    foreign = run_dir / "checkpoints" / "my-checkpoint-3"
    foreign.mkdir()
    code, _ = execute(make_config(run_dir, tiny_model, B3, P3, training=keep1))
    assert code == ExitCode.SUCCESS
    assert steps(run_dir) == [18]
    assert foreign.is_dir()
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == [
        "latest",
        "step-12",
        "step-18",
        "step-6",
    ]


def test_a_completed_batch_is_not_trained_again(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    before = snapshot(run_dir)
    code, result = execute(make_config(run_dir, tiny_model, B1, P1))
    assert code == ExitCode.SUCCESS
    assert result.outcome == "AlreadyCompleted"
    assert (result.start_step, result.end_step) == (0, 6)
    assert snapshot(run_dir) == before


def test_the_same_batch_id_with_other_data_is_refused(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    before = snapshot(run_dir)
    code, result = execute(make_config(run_dir, tiny_model, B1, P2))
    assert code == ExitCode.PERMANENT
    assert result.reason == "BatchDataChanged"
    assert "new batch id" in (result.message or "")
    assert snapshot(run_dir) == before


BAD_DATA = [
    ("bad.jsonl", b'{"text": "fine"}\n{"text": "broken"\n', "bad.jsonl:2: malformed JSON"),
    ("missing.jsonl", b'{"text": "fine"}\n\n{"body": "x"}\n', "missing.jsonl:3: missing field"),
    ("half.jsonl", b'{"prompt": "q"}\n', "half.jsonl:1: field 'completion' is missing"),
    ("latin1.txt", "ok\ncaf\u00e9\n".encode("latin-1"), "latin1.txt:2: not valid UTF-8"),
    ("empty.jsonl", b"\n\n", "has no samples"),
    (
        "long.jsonl",
        json.dumps({"prompt": "word " * 200, "completion": "x"}).encode(),
        "long.jsonl:1: no tokens left",
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_a_permanent_error_naming_file_and_line(
    after_b1, tiny_model, tmp_path, name, content, expected
):
    run_dir = copy_run(after_b1, tmp_path)
    data = tmp_path / name
    data.write_bytes(content)
    before = snapshot(run_dir)
    code, result = execute(make_config(run_dir, tiny_model, "bad", data))
    assert code == ExitCode.PERMANENT
    assert result.reason == "InvalidData"
    assert expected in (result.message or "")
    assert snapshot(run_dir) == before  # nothing trained, no record written


def test_missing_data_path_is_named(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    code, result = execute(make_config(run_dir, tiny_model, "b2", tmp_path / "nope.jsonl"))
    assert code == ExitCode.PERMANENT
    assert "does not exist" in (result.message or "")


DRIFT = [
    ({"lora": {"r": 8}}, "lora.r is 8"),
    ({"lora": {"alpha": 4}}, "lora.alpha is 4"),
    ({"lora": {"dropout": 0.2}}, "lora.dropout is 0.2"),
    ({"lora": {"targetModules": ["q_proj", "k_proj", "v_proj"]}}, "lora.targetModules"),
]


@pytest.mark.parametrize(("change", "expected"), DRIFT, ids=[d[1].split()[0] for d in DRIFT])
def test_config_drift_is_refused_before_training(after_b1, tiny_model, tmp_path, change, expected):
    run_dir = copy_run(after_b1, tmp_path)
    before = snapshot(run_dir)
    code, result = execute(make_config(run_dir, tiny_model, B2, P2, **change))
    assert code == ExitCode.PERMANENT
    assert result.reason == "ConfigDrift"
    assert expected in (result.message or "")
    assert "start a new run" in (result.message or "")
    assert snapshot(run_dir) == before


def test_a_changed_base_model_is_drift(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    code, result = execute(make_config(run_dir, tmp_path / "other-model", B2, P2))
    assert code == ExitCode.PERMANENT
    assert "baseModel.path" in (result.message or "")


def test_a_second_batch_waits_for_the_unfinished_one(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    killed = run_trainer(
        make_config(run_dir, tiny_model, B2, P2), env={"CONTINUAL_TRAINER_FAILPOINTS": "step-end@7"}
    )
    assert killed.code == -signal.SIGKILL
    code, result = execute(make_config(run_dir, tiny_model, B3, P3))
    assert code == ExitCode.PERMANENT
    assert result.reason == "BatchInProgress"
    assert "'b2' is still in progress" in (result.message or "")
    # both ways on are named, and the next test shows the second one working
    assert "run 'b2' again" in (result.message or "")
    assert "abandonBatches" in (result.message or "")


def test_an_abandoned_batch_is_closed_and_its_checkpoints_set_aside(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    killed = run_trainer(
        make_config(run_dir, tiny_model, B2, P2), env={"CONTINUAL_TRAINER_FAILPOINTS": "step-end@9"}
    )
    assert killed.code == -signal.SIGKILL
    assert steps(run_dir) == [6, 8]
    config = make_config(run_dir, tiny_model, B3, P3).model_copy(update={"abandon_batches": [B2]})
    code, result = execute(config)
    assert code == ExitCode.SUCCESS, result
    assert (result.start_step, result.end_step) == (6, 12)
    record = json.loads((run_dir / "ledger" / "batches" / "b2.json").read_text())
    assert record["state"] == "failed"
    assert record["result"]["reason"] == "Abandoned"
    moved = [p for p in (run_dir / "quarantine").iterdir() if p.name.startswith("checkpoint-8.")]
    assert "failed batch" in (moved[0] / "QUARANTINE_REASON.txt").read_text()


def test_a_second_writer_is_refused_by_the_volume_lock(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    with exclusive_lock(run_dir / ".lock"):
        code, result = execute(make_config(run_dir, tiny_model, B2, P2))
    assert code == ExitCode.TRANSIENT
    assert "another trainer holds the lock" in (result.message or "")


def test_unsafe_schedule_via_the_cli_exits_permanent_naming_the_field(tiny_model, tmp_path):
    import subprocess
    import sys

    cfg = make_config(tmp_path / "run", tiny_model, B1, P1).model_dump(mode="json", by_alias=True)
    cfg["training"]["lrSchedule"] = {"type": "cosine"}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "continual_trainer.cli", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 64
    assert "training.lrSchedule.type: lrSchedule.type='cosine' is not allowed" in proc.stderr
    assert not (tmp_path / "run" / "ledger").exists()
