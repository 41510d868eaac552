"""Snapshots to S3 (moto over HTTP) and restore: bit for bit after a restore, retention and pins, an upload
killed halfway never counted and later swept, and every bad case an exit code and a message naming the URI
or file and the fix, with nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.s3server import S3Server
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff

from continual_trainer.cli import execute as train
from continual_trainer.config import TrainerConfig
from continual_trainer.exitcodes import ExitCode
from continual_trainer.objectstore import RetryPolicy
from continual_trainer.snapshot.__main__ import build_parser
from continual_trainer.snapshot.__main__ import execute as run_job
from continual_trainer.snapshot.manifest import MANIFEST_NAME, parse_manifest

(B1, P1), (B2, P2), (B3, P3) = DEMO_BATCHES
TRAINING = {"epochsPerBatch": 1}
IDENTITY = {"run_name": "demo", "run_namespace": "local", "run_uid": "local:demo"}
FAST = RetryPolicy(attempts=2, base_delay_seconds=0.01, max_delay_seconds=0.02)


def config_for(run_dir: Path, model: Path, batch: str, data: Path, **identity: Any) -> TrainerConfig:
    config = make_config(run_dir, model, batch, data, training=TRAINING, trace=False)
    return config.model_copy(update={**IDENTITY, **identity})


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder that trained batches 1 and 2 (copied by each test)."""
    run = tmp_path_factory.mktemp("template") / "runs" / "demo"
    for batch, data in ((B1, P1), (B2, P2)):
        code, result = train(config_for(run, tiny_model, batch, data))
        assert code == ExitCode.SUCCESS, result
    return run


def copy_run(trained: Path, dest: Path) -> Path:
    shutil.copytree(trained, dest, symlinks=True)
    return dest


def tree(root: Path) -> dict[str, bytes]:
    """Every file and link below ``root`` (the lock file aside), for "nothing changed" checks."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name == ".lock":
            continue
        if path.is_symlink():
            out[path.relative_to(root).as_posix()] = str(path.readlink()).encode()
        elif path.is_file():
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def job_config(run_dir: Path, store: dict[str, Any] | None, **identity: Any) -> Path:
    """The trainer config file an artifact job gets (a train config: the job ignores the batch)."""
    body = {
        "runName": identity.get("run_name", "demo"),
        "runNamespace": identity.get("run_namespace", "local"),
        "runUid": identity.get("run_uid", "local:demo"),
        "runDir": str(run_dir),
        "baseModel": {"path": "models/tiny"},
        "batch": {"id": "b9", "data": {"path": "unused"}},
        "objectStore": store,
        "terminationMessagePath": str(run_dir.parent / f"term-{run_dir.name}.json"),
    }
    path = run_dir.parent / f"job-{run_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


def job(*argv: str) -> tuple[ExitCode, dict[str, Any]]:
    args = build_parser().parse_args(list(argv))
    code, result = run_job(args)
    return code, json.loads(result.model_dump_json(by_alias=True))


@pytest.fixture
def env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3_server.make_bucket("snaps")
    return s3_server


def test_restore_then_the_next_batch_is_bit_for_bit_the_run_that_never_snapshotted(
    trained: Path, tiny_model: Path, tmp_path: Path, env: S3Server
) -> None:
    store = env.object_store()
    original = copy_run(trained, tmp_path / "a" / "runs" / "demo")
    code, snap = job(
        "create",
        "--config",
        str(job_config(original, store)),
        "--destination",
        "s3://snaps/demo/",
        "--inbox-state",
        '{"watermark": "day-002/"}',
    )
    assert code == ExitCode.SUCCESS, snap
    assert snap["uri"] == f"s3://snaps/demo/{snap['snapshotId']}/"
    assert snap["snapshotId"].endswith(f"-step{snap['globalStep']:08d}") and snap["batches"] == 2
    manifest = parse_manifest(
        env.client()
        .get_object(Bucket="snaps", Key=f"demo/{snap['snapshotId']}/{MANIFEST_NAME}")["Body"]
        .read()
    )
    names = {f.path for f in manifest.files}
    step = snap["globalStep"]
    assert f"checkpoints/checkpoint-{step}/optimizer.pt" in names and "ledger/run.json" in names
    assert {f"ledger/batches/{B1}.json", f"ledger/batches/{B2}.json", "history.jsonl"} <= names
    assert manifest.links == {"adapters/latest": f"step-{step}"}
    assert not [n for n in names if n.startswith("checkpoints/") and f"checkpoint-{step}/" not in n]

    # A NEW run (other name, namespace, uid, folder) restores it ...
    other = {"run_name": "moved", "run_namespace": "prod", "run_uid": "uid-2"}
    restored = tmp_path / "b" / "runs" / "moved"
    code, result = job(
        "restore", "--config", str(job_config(restored, store, **other)), "--source", snap["uri"]
    )
    assert code == ExitCode.SUCCESS, result
    assert result["inbox"] == {"watermark": "day-002/"} and result["globalStep"] == step
    record = json.loads((restored / "ledger" / "run.json").read_text())
    assert record["run"] == {"namespace": "prod", "name": "moved", "uid": "uid-2"}
    assert record["restoredFrom"]["run"]["uid"] == "local:demo"
    assert record["restoredFrom"]["snapshotId"] == snap["snapshotId"]
    assert not (restored / ".restore-staging").exists() and not (restored / ".restoring.json").exists()
    # a retried restore Job after the commit is a no-op with the same result
    assert job("restore", "--config", str(job_config(restored, store, **other)), "--source", snap["uri"]) == (
        code,
        result,
    )

    # ... and trains batch 3 there; the original never snapshotted-and-restored trains it in place.
    code, after = train(config_for(restored, tiny_model, B3, P3, **other))
    assert code == ExitCode.SUCCESS, after
    code, reference = train(config_for(original, tiny_model, B3, P3))
    assert code == ExitCode.SUCCESS, reference
    assert after.end_step == reference.end_step and after.start_step == step
    diff = max_abs_diff(
        adapter_weights(restored / "adapters" / "latest"), adapter_weights(original / "adapters" / "latest")
    )
    assert diff == 0.0
