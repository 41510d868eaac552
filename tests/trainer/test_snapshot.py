"""Snapshots to S3 (moto over HTTP) and restore: bit for bit after a restore, retention and pins, an upload
killed halfway never counted and later swept, and every bad case an exit code and a message naming the URI
or file and the fix, with nothing lost."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.s3server import S3Server, error_server, free_port
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff

from continual_trainer.cli import execute as train
from continual_trainer.config import TrainerConfig
from continual_trainer.exitcodes import ExitCode
from continual_trainer.objectstore import RetryPolicy, S3Location
from continual_trainer.snapshot.__main__ import build_parser, main
from continual_trainer.snapshot.__main__ import execute as run_job
from continual_trainer.snapshot.create import CreateOptions, create
from continual_trainer.snapshot.job import parse_job_config
from continual_trainer.snapshot.manifest import MANIFEST_NAME, parse_manifest
from continual_trainer.snapshot.store import CommitConflictError, SnapshotStore

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


def job_config(
    run_dir: Path, store: dict[str, Any] | None, model: str = "models/tiny", **identity: Any
) -> Path:
    """The trainer config file an artifact job gets (a train config: the job ignores the batch)."""
    body = {
        "runName": identity.get("run_name", "demo"),
        "runNamespace": identity.get("run_namespace", "local"),
        "runUid": identity.get("run_uid", "local:demo"),
        "runDir": str(run_dir),
        "baseModel": {"path": model},
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

    # A NEW run (other name, namespace, uid, folder, and the same base model at another place) restores it ...
    other = {"run_name": "moved", "run_namespace": "prod", "run_uid": "uid-2"}
    restored = tmp_path / "b" / "runs" / "moved"
    model = shutil.copytree(tiny_model, tmp_path / "b" / "models" / "tiny")
    config = job_config(restored, store, str(model), **other)
    code, result = job("restore", "--config", str(config), "--source", snap["uri"])
    assert code == ExitCode.SUCCESS, result
    assert result["inbox"] == {"watermark": "day-002/"} and result["globalStep"] == step
    record = json.loads((restored / "ledger" / "run.json").read_text())
    assert record["run"] == {"namespace": "prod", "name": "moved", "uid": "uid-2"}
    assert record["restoredFrom"]["run"]["uid"] == "local:demo" and record["model"]["path"] == str(model)
    assert record["restoredFrom"]["snapshotId"] == snap["snapshotId"]
    assert not (restored / ".restore-staging").exists() and not (restored / ".restoring.json").exists()
    # a retried restore Job after the commit is a no-op with the same result
    assert job("restore", "--config", str(config), "--source", snap["uri"]) == (code, result)

    # ... and trains batch 3 there; the original never snapshotted-and-restored trains it in place.
    code, after = train(config_for(restored, model, B3, P3, **other))
    assert code == ExitCode.SUCCESS, after
    code, reference = train(config_for(original, tiny_model, B3, P3))
    assert code == ExitCode.SUCCESS, reference
    assert after.end_step == reference.end_step and after.start_step == step
    diff = max_abs_diff(
        adapter_weights(restored / "adapters" / "latest"), adapter_weights(original / "adapters" / "latest")
    )
    assert diff == 0.0


def options(when: dt.datetime, **kw: Any) -> CreateOptions:
    return CreateOptions(destination="s3://snaps/demo/", retry=FAST, clock=lambda: when, **kw)


def at(day: int) -> dt.datetime:
    return dt.datetime(2026, 1, day, 3, 0, tzinfo=dt.UTC)


def keys(server: S3Server, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket="snaps", Prefix=prefix)
    return sorted(str(o["Key"]) for o in listed.get("Contents", []))


def test_an_upload_killed_halfway_never_counts_and_retention_keeps_the_newest_and_the_pinned(
    trained: Path, tmp_path: Path, env: S3Server
) -> None:
    run = copy_run(trained, tmp_path / "runs" / "demo")
    config = job_config(run, env.object_store())
    # SIGKILL after 3 files: the folder has no manifest ...
    killed = subprocess.run(
        [sys.executable, "-m", "continual_trainer.snapshot", "create", "--config", str(config),
         "--destination", "s3://snaps/demo/"],
        env=dict(os.environ, CONTINUAL_TRAINER_FAILPOINTS="snapshot-upload@3"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    [dead] = {k.split("/")[1] for k in keys(env, "demo/")}
    assert f"demo/{dead}/{MANIFEST_NAME}" not in keys(env, "demo/")
    # ... so it cannot be restored (exit 64, naming the manifest and the fix), and the volume stays empty
    target = tmp_path / "elsewhere" / "runs" / "demo"
    code, refused = job("restore", "--config", str(job_config(target, env.object_store())),
                        "--source", f"s3://snaps/demo/{dead}/")  # fmt: skip
    assert code == ExitCode.PERMANENT and refused["reason"] == "SnapshotManifestMissing", refused
    assert f"s3://snaps/demo/{dead}/manifest.json does not exist" in refused["message"]
    assert "aws s3 ls" in refused["message"] and tree(target) == {}

    # A batch in progress is not in a snapshot: it is the run at the end of its last completed batch.
    done = json.loads((run / "ledger" / "batches" / f"{B2}.json").read_text())
    started = {**done, "batchId": B3, "sequence": 3, "state": "started", "result": None, "completedAt": None}
    (run / "ledger" / "batches" / f"{B3}.json").write_text(json.dumps(started))
    # Another run's committed snapshot in the same prefix (a restored copy elsewhere): never ours to retire.
    jc = parse_job_config(config.read_text())
    first = create(jc, options(at(1)))
    assert first.swept == [dead] and first.retired == []  # our own dead upload: swept at once
    assert first.batches == 2 and not keys(env, f"demo/{first.snapshot_id}/ledger/batches/{B3}.json")
    theirs = parse_manifest(
        env.client()
        .get_object(Bucket="snaps", Key=f"demo/{first.snapshot_id}/{MANIFEST_NAME}")["Body"]
        .read()
    )
    foreign = theirs.model_copy(
        update={
            "snapshot_id": "20250101T000000Z-step00000001",
            "run": jc.run.model_copy(update={"uid": "u-other"}),
        }
    )
    env.put("snaps", f"demo/{foreign.snapshot_id}/{MANIFEST_NAME}", foreign.to_json())

    made = [first.snapshot_id]
    results = []
    for day in (2, 3, 4):
        results.append(create(jc, options(at(day), keep=2, pins=frozenset({first.snapshot_id}))))
        made.append(results[-1].snapshot_id)
    assert [r.retired for r in results] == [[], [], [made[1]]]
    committed = sorted({k.split("/")[1] for k in keys(env, "demo/") if k.endswith("/" + MANIFEST_NAME)})
    assert committed == sorted([foreign.snapshot_id, made[0], made[2], made[3]])
    assert not [k for k in keys(env, "demo/") if made[1] in k or dead in k]  # every object of them is gone
    assert not [k for k in keys(env, "demo/") if k.endswith(".in-progress.json")]

    # The commit is create-only (moto enforces If-None-Match), and deleting twice is fine (missing = success).
    store = SnapshotStore(env.client(), S3Location("snaps", "demo/"))
    with pytest.raises(CommitConflictError):
        store.commit(made[3], b"{}", MANIFEST_NAME)
    folder = store.folders(MANIFEST_NAME, ".in-progress.json")[made[3]]
    store.delete(folder, MANIFEST_NAME)
    store.delete(folder, MANIFEST_NAME)
    assert not keys(env, f"demo/{made[3]}/")


@pytest.mark.parametrize("case", ["bucket-missing", "wrong-credentials", "endpoint-down"])
def test_a_store_that_cannot_take_the_snapshot_is_a_clear_error_and_changes_nothing(
    case: str, trained: Path, tmp_path: Path, env: S3Server
) -> None:
    run = copy_run(trained, tmp_path / "runs" / "demo")
    before = tree(run)
    expected = {
        "bucket-missing": (ExitCode.PERMANENT, "SnapshotBucketNotFound", "the bucket does not exist"),
        "wrong-credentials": (
            ExitCode.PERMANENT,
            "SnapshotAccessDenied",
            "access denied (403): check the credentials",
        ),
        "endpoint-down": (ExitCode.TRANSIENT, "SnapshotStoreUnavailable", "the endpoint cannot be reached"),
    }[case]
    bucket = "nosuchbucket" if case == "bucket-missing" else "snaps"
    with error_server(403, "InvalidAccessKeyId") as refusing:
        url = {"wrong-credentials": refusing, "endpoint-down": f"http://127.0.0.1:{free_port()}"}.get(
            case, env.endpoint_url
        )
        config = job_config(run, {**env.object_store(), "endpointURL": url})
        code, result = job("create", "--config", str(config), "--destination", f"s3://{bucket}/demo/")
        handler = signal.getsignal(signal.SIGTERM)
        try:  # the entry point, for its exit code and termination message (it handles SIGTERM: put back)
            assert main(["create", "--config", str(config), "--destination", f"s3://{bucket}/demo/"]) == code
        finally:
            signal.signal(signal.SIGTERM, handler)
    assert (code, result["reason"]) == expected[:2], result
    assert expected[2] in result["message"] and f"s3://{bucket}/demo/" in result["message"]
    assert "spec.snapshots.destination" in result["message"] or case != "bucket-missing"
    assert "endpointURL" in result["message"] or case != "endpoint-down"
    assert "s3:PutObject" in result["message"] or case != "wrong-credentials"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(result)
    assert tree(run) == before
    written = json.loads((run.parent / "term-demo.json").read_text())
    assert (written["kind"], written["exitCode"], written["reason"]) == (
        "snapshot",
        int(code),
        result["reason"],
    )


def test_restore_refuses_a_damaged_snapshot_or_a_folder_with_state_and_leaves_the_volume_untouched(
    trained: Path, tmp_path: Path, env: S3Server
) -> None:
    run = copy_run(trained, tmp_path / "runs" / "demo")
    jc = parse_job_config(job_config(run, env.object_store()).read_text())
    snaps = {
        case: create(jc, options(at(day))) for day, case in enumerate(("corrupt", "altered", "missing"), 1)
    }
    client = env.client()
    client.put_object(
        Bucket="snaps",
        Key=f"demo/{snaps['corrupt'].snapshot_id}/{MANIFEST_NAME}",
        Body=b'{"format": 1, "files": [',
    )
    step = snaps["altered"].global_step
    altered = f"checkpoints/checkpoint-{step}/adapter_model.safetensors"
    body = client.get_object(Bucket="snaps", Key=f"demo/{snaps['altered'].snapshot_id}/{altered}")[
        "Body"
    ].read()
    client.put_object(
        Bucket="snaps",
        Key=f"demo/{snaps['altered'].snapshot_id}/{altered}",
        Body=body[:-1] + bytes([body[-1] ^ 1]),
    )
    client.delete_object(Bucket="snaps", Key=f"demo/{snaps['missing'].snapshot_id}/ledger/batches/{B1}.json")
    expected = {
        "corrupt": ("SnapshotManifestCorrupt", f"{snaps['corrupt'].uri}manifest.json is corrupt"),
        "altered": ("SnapshotFileCorrupt", f"{snaps['altered'].uri}{altered} does not match its sha256"),
        "missing": ("SnapshotFileMissing", f"{snaps['missing'].uri}ledger/batches/{B1}.json: listed in the manifest but missing"),
    }  # fmt: skip
    for case, (reason, text) in expected.items():
        target = tmp_path / case / "runs" / "demo"
        code, result = job(
            "restore", "--config", str(job_config(target, env.object_store())), "--source", snaps[case].uri
        )
        assert (code, result["reason"]) == (ExitCode.PERMANENT, reason), result
        assert text in result["message"] and "nothing was written to the volume" in result["message"]
        assert tree(target) == {}, case  # no staging left, nothing moved in

    # A folder that already trained is never overwritten, even by a good snapshot.
    good = create(jc, options(at(9)))
    before = tree(run)
    code, result = job("restore", "--config", str(job_config(run, env.object_store())), "--source", good.uri)
    assert (code, result["reason"]) == (ExitCode.PERMANENT, "RunFolderNotEmpty"), result
    assert "never overwrites" in result["message"] and "storage.subPath" in result["message"]
    assert tree(run) == before


def test_local_commands_snapshot_a_local_volume_and_restore_it_into_a_new_one(
    trained: Path, tmp_path: Path, env: S3Server
) -> None:
    volume, new = tmp_path / "volume", tmp_path / "new"
    copy_run(trained, volume / "runs" / "demo")  # a run as `continual-training demo` lays it out
    manifest = Path(__file__).resolve().parents[2] / "operator" / "continual_operator" / "demo" / "run.yaml"
    shutil.copy(manifest, volume / "demo-run.yaml")
    cli = [sys.executable, "-m", "continual_operator.cli"]
    endpoint = ["--endpoint-url", env.endpoint_url]
    snap = subprocess.run(
        [*cli, "snapshot", "--volume", str(volume), "--destination", "s3://snaps/laptop", *endpoint],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert snap.returncode == 0, snap.stderr[-2000:]
    uri = snap.stdout.split("--source ")[1].strip()
    assert uri.startswith("s3://snaps/laptop/") and "global step 6, 2 batches" in snap.stdout

    restored = subprocess.run(
        [*cli, "restore", "--volume", str(new), "--run", str(manifest), "--source", uri, *endpoint],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert f"into {new / 'runs' / 'demo'}" in restored.stdout
    before, after = tree(volume / "runs" / "demo"), tree(new / "runs" / "demo")
    record = json.loads(after.pop("ledger/run.json"))
    assert record.pop("restoredFrom")["uri"] == uri
    original = json.loads(before.pop("ledger/run.json"))
    # the same run (same identity); its base model is recorded at the new volume's models/tiny-llama
    assert (
        record["model"].pop("path") == record["baseModel"].pop("path") == str(new / "models" / "tiny-llama")
    )
    del original["model"]["path"], original["baseModel"]["path"]
    assert original.pop("restoredFrom") is None and record == original
    assert {k: v for k, v in before.items() if k in after} == after
    assert "checkpoints/checkpoint-6/optimizer.pt" in after and after["adapters/latest"] == b"step-6"

    # A retried restore is a no-op; a snapshot that does not exist is exit 64 naming the manifest.
    for source, code in ((uri, 0), (uri.replace("6/", "7/"), int(ExitCode.PERMANENT))):
        again = subprocess.run(
            [*cli, "restore", "--volume", str(new), "--run", str(manifest), "--source", source, *endpoint],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert again.returncode == code, again.stderr[-2000:]
    assert "continual-training restore: s3://snaps/laptop/" in again.stderr
    assert "manifest.json does not exist" in again.stderr and "(SnapshotManifestMissing)" in again.stderr
    assert tree(new / "runs" / "demo") == {
        **after,
        "ledger/run.json": (new / "runs/demo/ledger/run.json").read_bytes(),
    }


def test_sigterm_during_the_upload_is_preempted_85_and_commits_nothing(
    trained: Path, tmp_path: Path, env: S3Server
) -> None:
    run = copy_run(trained, tmp_path / "runs" / "demo")
    config = job_config(run, env.object_store())
    stopped = subprocess.run(
        [sys.executable, "-m", "continual_trainer.snapshot", "create", "--config", str(config),
         "--destination", "s3://snaps/demo/"],
        env=dict(os.environ, CONTINUAL_TRAINER_FAILPOINTS="snapshot-upload@2=term"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert stopped.returncode == int(ExitCode.PREEMPTED), stopped.stderr[-2000:]
    result = json.loads((run.parent / "term-demo.json").read_text())
    assert (result["kind"], result["outcome"], result["reason"]) == ("snapshot", "Preempted", "Preempted")
    assert keys(env, "demo/") and not [k for k in keys(env, "demo/") if k.endswith("/" + MANIFEST_NAME)]


def test_a_restore_killed_before_its_commit_is_taken_back_and_redone_by_the_retry(
    trained: Path, tmp_path: Path, env: S3Server
) -> None:
    jc = parse_job_config(
        job_config(copy_run(trained, tmp_path / "runs" / "demo"), env.object_store()).read_text()
    )
    snap = create(jc, options(at(1)))
    target = tmp_path / "new" / "runs" / "demo"
    config = job_config(target, env.object_store())
    assert job("restore", "--config", str(config), "--source", snap.uri)[0] == ExitCode.SUCCESS
    good = tree(target)
    # As if killed right before the commit: every file moved in but ledger/run.json, the marker still there.
    manifest = parse_manifest(
        env.client().get_object(Bucket="snaps", Key=f"demo/{snap.snapshot_id}/{MANIFEST_NAME}")["Body"].read()
    )
    names = [f.path for f in manifest.files] + list(manifest.links)
    (target / "ledger" / "run.json").unlink()
    (target / ".restoring.json").write_text(json.dumps({"snapshotId": snap.snapshot_id, "files": names}))
    code, result = job("restore", "--config", str(config), "--source", snap.uri)
    assert code == ExitCode.SUCCESS, result
    again = tree(target)
    assert json.loads(again.pop("ledger/run.json"))["restoredFrom"]["snapshotId"] == snap.snapshot_id
    good.pop("ledger/run.json")
    assert again == good
