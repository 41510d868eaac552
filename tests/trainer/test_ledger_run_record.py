"""The run record cannot be poisoned: written after the build, rebuilt from checkpoints, identities not paths.

Each test leaves the volume as the issue describes it (a failed first attempt, a lost ``run.json``, a moved
project folder, an old record, another run's config) and checks what the trainer does with it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff, run_trainer
from tests.trainer.test_volume_safety import copy_run, snapshot

from continual_trainer import checkpoints as ckpts
from continual_trainer.cli import execute
from continual_trainer.exitcodes import ExitCode
from continual_trainer.reference import run_uninterrupted
from continual_trainer.runrecord import RUN_RECORD_COPY

(B1, P1), (B2, P2), _ = DEMO_BATCHES


@pytest.fixture(scope="module")
def after_b1(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder in which batch b1 completed (in-process), to copy from."""
    run_dir = tmp_path_factory.mktemp("ledger-after-b1") / "run"
    code, result = execute(make_config(run_dir, tiny_model, B1, P1))
    assert code == ExitCode.SUCCESS, result
    return run_dir


@pytest.fixture(scope="module")
def reference_b2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batches b1 and b2 in one uninterrupted run: the end checkpoint of b2."""
    run_dir = tmp_path_factory.mktemp("ledger-reference") / "run"
    run_uninterrupted([make_config(run_dir, tiny_model, b, p) for b, p in DEMO_BATCHES[:2]], run_dir)
    return run_dir / "checkpoints" / "checkpoint-12"


def _recorded_path(config, folder: Path) -> str:
    """How the run record names a model folder: relative to the data root when inside it."""
    root = Path(config.data_root or config.run_dir).resolve()
    real = folder.resolve()
    return real.relative_to(root).as_posix() if real.is_relative_to(root) else str(real)


def run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "ledger" / "run.json").read_text())


def test_a_failed_build_writes_no_run_record_and_the_fixed_config_trains(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    wrong_modules = make_config(run_dir, tiny_model, B1, P1, lora={"targetModules": ["query", "value"]})
    code, result = execute(wrong_modules)
    assert code == ExitCode.PERMANENT
    assert "lora.targetModules" in (result.message or "")
    assert not (run_dir / "ledger").exists()  # neither run.json nor a batch record

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    code, result = execute(make_config(run_dir, no_weights, B1, P1))
    assert code == ExitCode.PERMANENT
    assert "baseModel.path" in (result.message or "")
    assert not (run_dir / "ledger").exists()

    config = make_config(run_dir, tiny_model, B1, P1)
    fixed = run_trainer(config)  # a separate process, as a Job
    assert fixed.code == 0, fixed.stderr[-3000:]
    assert fixed.result is not None
    assert (fixed.result["startStep"], fixed.result["endStep"]) == (0, 6)
    record = run_record(run_dir)
    assert record["lora"]["targetModules"] == ["q_proj", "v_proj"]
    assert record["model"]["path"] == _recorded_path(config, tiny_model)
    assert record["model"]["configSha256"] and record["model"]["weightsSha256"]
    assert record["run"] == {"namespace": None, "name": "test", "uid": None}


def _as_written_before_copies(run_dir: Path) -> None:
    """Checkpoints as the trainer wrote them before they carried a copy of the run record."""
    for ckpt in ckpts.list_published(run_dir / "checkpoints"):
        (ckpt.path / RUN_RECORD_COPY).unlink()
        manifest = json.loads((ckpt.path / ckpts.MANIFEST).read_text())
        ckpts.write_manifest(ckpt.path, batch_id=manifest["batchId"], step=ckpt.step)


@pytest.mark.parametrize("checkpoints", ["with-record-copy", "adapter-config-only"])
def test_a_lost_run_record_is_rebuilt_from_the_checkpoints(
    after_b1, reference_b2, tiny_model, tmp_path, checkpoints
):
    run_dir = copy_run(after_b1, tmp_path)
    if checkpoints == "adapter-config-only":
        _as_written_before_copies(run_dir)
    (run_dir / "ledger" / "run.json").unlink()
    before = {k: v for k, v in snapshot(run_dir).items() if not k.startswith("ledger/")}

    code, result = execute(make_config(run_dir, tiny_model, B2, P2, lora={"r": 8}))
    assert code == ExitCode.PERMANENT
    assert result.reason == "ConfigDrift"
    message = result.message or ""
    assert "lora.r is 8 but checkpoints/checkpoint-6 (ledger/run.json was rebuilt from it)" in message
    assert "trained with 4" in message
    assert "Set lora.r back to 4" in message
    assert not (run_dir / "quarantine").exists()  # no checkpoint was moved aside
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("ledger/")} == before
    rebuilt = run_record(run_dir)
    assert rebuilt["lora"]["r"] == 4
    assert rebuilt["rebuiltFrom"] == "checkpoints/checkpoint-6"

    if checkpoints == "with-record-copy":
        return  # the exact continuation is shown once, on the harder path
    out = run_trainer(make_config(run_dir, tiny_model, B2, P2))
    assert out.code == 0, out.stderr[-3000:]
    assert (
        max_abs_diff(
            adapter_weights(run_dir / "checkpoints" / "checkpoint-12"), adapter_weights(reference_b2)
        )
        == 0.0
    )
    assert run_record(run_dir)["model"]["configSha256"]  # completed with the identity once built


def test_a_moved_project_folder_is_not_drift_but_another_model_under_its_path_is(tiny_model, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_model, project / "models" / "tiny")
    code, result = execute(make_config(project / "run", project / "models" / "tiny", B1, P1))
    assert code == ExitCode.SUCCESS, result

    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)
    config = make_config(moved / "run", moved / "models" / "tiny", B2, P2)
    code, result = execute(config)
    assert code == ExitCode.SUCCESS, result
    assert (result.start_step, result.end_step) == (6, 12)
    assert run_record(moved / "run")["model"]["path"] == _recorded_path(config, moved / "models" / "tiny")

    model_config = moved / "models" / "tiny" / "config.json"
    changed = json.loads(model_config.read_text())
    changed["rms_norm_eps"] = changed.get("rms_norm_eps", 1e-6) * 10
    model_config.write_text(json.dumps(changed))
    before = snapshot(moved / "run")
    code, result = execute(make_config(moved / "run", moved / "models" / "tiny", "b3", DEMO_BATCHES[2][1]))
    assert code == ExitCode.PERMANENT
    assert result.reason == "ConfigDrift"
    assert "baseModel.path" in (result.message or "")
    assert "config.json" in (result.message or "")
    assert snapshot(moved / "run") == before


def test_an_old_run_record_is_read_and_adopted_and_then_names_its_run(after_b1, tiny_model, tmp_path):
    run_dir = copy_run(after_b1, tmp_path)
    old = run_record(run_dir)
    legacy = {"baseModel": {"path": str(tiny_model)}, "lora": old["lora"], "createdAt": old["createdAt"]}
    (run_dir / "ledger" / "run.json").write_text(json.dumps(legacy))  # as written before identities

    adopter = make_config(run_dir, tiny_model, B2, P2).model_copy(
        update={"run_name": "adopter", "run_namespace": "ml", "run_uid": "u-1"}
    )
    code, result = execute(adopter)
    assert code == ExitCode.SUCCESS, result
    upgraded = run_record(run_dir)
    assert upgraded["run"] == {"namespace": "ml", "name": "adopter", "uid": "u-1"}
    assert upgraded["model"]["configSha256"]

    other = make_config(run_dir, tiny_model, "b3", DEMO_BATCHES[2][1]).model_copy(
        update={"run_name": "other", "run_namespace": "ml", "run_uid": "u-2"}
    )
    before = snapshot(run_dir)
    code, result = execute(other)
    assert code == ExitCode.PERMANENT
    assert result.reason == "VolumeBelongsToAnotherRun"
    message = result.message or ""
    assert "belongs to run ml/adopter (uid u-1), not to run ml/other (uid u-2)" in message
    assert "storage.subPath" in message
    assert snapshot(run_dir) == before
    assert not (run_dir / "ledger" / "batches" / "b3.json").exists()


def test_a_foreign_batch_start_checkpoint_is_quarantined_with_its_reason_and_rebuilt(
    after_b1, tiny_model, tmp_path
):
    run_dir = copy_run(after_b1, tmp_path)
    start = run_dir / "checkpoints" / "checkpoint-6"
    adapter = json.loads((start / "adapter_config.json").read_text())
    adapter["r"] = 16  # a checkpoint of another LoRA copied in, with a consistent manifest
    (start / "adapter_config.json").write_text(json.dumps(adapter))
    ckpts.write_manifest(start, batch_id=B1, step=6)

    code, result = execute(make_config(run_dir, tiny_model, B2, P2))
    # The foreign checkpoint is set aside with its reason and b1's own end is rebuilt from b1's data
    # (test_heal_checkpoints.py); the reason is recorded with the rebuild. Where no rebuild is possible the
    # halt message names it (test_heal_checkpoints.py::test_data_gone_halts_...).
    assert code == ExitCode.SUCCESS, result
    (rebuild,) = json.loads((run_dir / "ledger" / "batches" / f"{B1}.json").read_text())["rebuilds"]
    assert "invalid checkpoint: adapter config differs from the run's" in rebuild["reason"]
    assert "lora.r is 4 in the config but 16 in the checkpoint" in rebuild["reason"]
    (moved,) = (run_dir / "quarantine").glob("checkpoint-6.*")
    assert "lora.r is 4 in the config but 16" in (moved / "QUARANTINE_REASON.txt").read_text()


def _fake_model(folder: Path, eps: float = 1e-6) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"rms_norm_eps": eps, "transformers_version": "5.0"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


def test_model_identity_is_relative_to_the_data_root_and_survives_a_move(tmp_path):
    from continual_trainer.config import BaseModelSpec
    from continual_trainer.identity import ModelIdentity, model_difference, model_identity

    volume = tmp_path / "volume"
    _fake_model(volume / "models" / "m")
    recorded = model_identity(BaseModelSpec(path=str(volume / "models" / "m")), volume)
    assert recorded.path == "models/m"
    assert recorded.config_sha256 and recorded.weights_sha256

    moved = tmp_path / "moved"
    volume.rename(moved)
    relative = model_identity(BaseModelSpec(path="models/m"), moved)  # relative to the data root
    assert model_difference(recorded, relative, moved) is None
    # an absolute path inside the data root, as a record written with another data root holds it
    host_path = recorded.model_copy(update={"path": str(moved / "models" / "m")})
    assert model_difference(host_path, relative, moved) is None

    (moved / "models" / "m" / "config.json").write_text(json.dumps({"rms_norm_eps": 1e-5}))
    other = model_identity(BaseModelSpec(path="models/m"), moved)
    difference = model_difference(recorded, other, moved)
    assert difference is not None
    assert (difference.field, difference.content) == ("baseModel.path", "config.json")
    resaved = json.dumps({"rms_norm_eps": 1e-6, "transformers_version": "6.1"})  # a re-save is not drift
    (moved / "models" / "m" / "config.json").write_text(resaved)
    assert model_difference(recorded, model_identity(BaseModelSpec(path="models/m"), moved), moved) is None
    assert model_difference(ModelIdentity(id="a/b"), ModelIdentity(id="a/c"), moved) is not None


def test_run_owner_rules():
    from continual_trainer.identity import RunIdentity, owner_conflict

    owner = RunIdentity(namespace="ml", name="a", uid="u-1")
    assert not owner_conflict(owner, RunIdentity(namespace="ml", name="a", uid="u-2"))  # re-created
    assert not owner_conflict(owner, RunIdentity(name="a"))  # a hand-written config of the same run
    assert owner_conflict(owner, RunIdentity(namespace="ml", name="b", uid="u-1"))
    assert owner_conflict(owner, RunIdentity(namespace="local", name="a", uid="local:a"))
