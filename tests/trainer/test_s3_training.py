"""Training from S3 (moto over HTTP): bit-for-bit equal to the same data from the volume, through a kill and
retries; re-uploaded bytes are BatchDataChanged; the cache is reused, then deleted unless keepCache;
store failures are exit codes 64/75 that name the URI and never a credential."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from tests.s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, free_port
from tests.trainer.helpers import DEMO_BATCHES, adapter_weights, make_config, max_abs_diff, run_trainer

from continual_trainer.cli import execute
from continual_trainer.config import BatchSpec, DataSpec, ObjectStoreClientSpec, TrainerConfig
from continual_trainer.exitcodes import ExitCode

(B1, P1), (B2, P2), (B3, P3) = DEMO_BATCHES
#: One pass per batch keeps this file's CI time low; the resume logic under test is the same.
TRAINING = {"epochsPerBatch": 1}


def s3_config(
    run_dir: Path, model: Path, batch_id: str, uri: str, store: dict[str, Any], **data: Any
) -> TrainerConfig:
    # The data is in the store: the placeholder path only fixes the data root (the run folder).
    base = make_config(run_dir, model, batch_id, run_dir, training=TRAINING, trace=False)
    return base.model_copy(
        update={
            "batch": BatchSpec(id=batch_id, data=DataSpec(uri=uri, **data)),
            "object_store": ObjectStoreClientSpec.model_validate(store),
        }
    )


def digest_of(run_dir: Path, batch_id: str) -> str:
    return str(json.loads((run_dir / "ledger" / "batches" / f"{batch_id}.json").read_text())["dataDigest"])


def canonical_sha256(files: list[Path]) -> str:
    """docs/data.md: sorted lines <name>\\t<size>\\t<sha256>, hashed."""
    lines = sorted(
        f"{p.name}\t{p.stat().st_size}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.mark.slow
def test_s3_batches_train_bit_for_bit_like_the_same_data_from_the_volume(
    tiny_model: Path, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = s3_server.object_store()
    s3_server.make_bucket("train")
    s3_server.put("train", f"day1/{P1.name}", P1.read_bytes())
    s3_server.put("train", f"day2/{P2.name}", P2.read_bytes())
    s3_server.put("train", f"day2/{P3.name}", P3.read_bytes())

    # The reference: one object's worth, then a folder of two files, from the volume.
    local = tmp_path / "local"
    folder = tmp_path / "day2"
    folder.mkdir()
    for p in (P2, P3):
        shutil.copy(p, folder / p.name)
    assert (
        execute(make_config(local, tiny_model, B1, P1, training=TRAINING, trace=False))[0] == ExitCode.SUCCESS
    )
    code, local_result = execute(make_config(local, tiny_model, B2, folder, training=TRAINING, trace=False))
    assert code == ExitCode.SUCCESS, local_result

    # From S3: batch 1 is killed mid-batch (a separate process, as a Job would be) ...
    run = tmp_path / "s3"
    b1 = s3_config(run, tiny_model, B1, f"s3://train/day1/{P1.name}", store)
    killed = run_trainer(b1, env=s3_server.env() | {"CONTINUAL_TRAINER_FAILPOINTS": "step-end@2"})
    assert killed.code == -signal.SIGKILL, killed.stderr[-2000:]
    cached = run / "cache" / B1 / P1.name
    assert cached.read_bytes() == P1.read_bytes()

    # ... its object is re-uploaded with other bytes: refused, nothing trained ...
    s3_server.put("train", f"day1/{P1.name}", P2.read_bytes())
    code, result = execute(b1)
    assert (code, result.reason) == (ExitCode.PERMANENT, "BatchDataChanged"), result
    assert "give the new data a new batch id" in str(result.message)

    # ... the right bytes come back: the retry resumes and completes; the cache is then deleted.
    s3_server.put("train", f"day1/{P1.name}", P1.read_bytes())
    code, result = execute(b1)
    assert code == ExitCode.SUCCESS, result
    assert not (run / "cache" / B1).exists()

    # Batch 2 is a prefix of two objects, pinned by the sha256 of its canonical listing, cache kept.
    pinned = canonical_sha256([P2, P3])
    b2 = s3_config(run, tiny_model, B2, "s3://train/day2/", store, sha256=pinned, keep_cache=True)
    code, s3_result = execute(b2)
    assert code == ExitCode.SUCCESS, s3_result
    assert sorted(p.name for p in (run / "cache" / B2).iterdir() if p.is_file()) == sorted([P2.name, P3.name])

    assert (s3_result.end_step, s3_result.mean_loss) == (local_result.end_step, local_result.mean_loss)
    assert digest_of(run, B1) == digest_of(local, B1)  # the ledger digest is the content digest
    assert digest_of(run, B2) == digest_of(local, B2)
    diff = max_abs_diff(
        adapter_weights(run / str(s3_result.adapter)), adapter_weights(local / str(local_result.adapter))
    )
    assert diff == 0.0


def test_pinned_sha256_mismatch_is_exit_64_and_trains_nothing(
    tiny_model: Path, tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.make_bucket("train")
    s3_server.put("train", "b1.jsonl", P1.read_bytes())
    run = tmp_path / "run"
    config = s3_config(run, tiny_model, B1, "s3://train/b1.jsonl", s3_server.object_store(), sha256="0" * 64)
    code, result = execute(config)
    assert (code, result.reason) == (ExitCode.PERMANENT, "ChecksumMismatch")
    assert hashlib.sha256(P1.read_bytes()).hexdigest() in str(result.message)
    assert not (run / "ledger" / "batches").exists()
    assert not (run / "checkpoints").exists()


def test_wrong_credentials_are_exit_64_and_never_printed(tiny_model: Path, tmp_path: Path) -> None:
    from tests.s3server import error_server

    with error_server(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist") as url:
        config = s3_config(tmp_path / "run", tiny_model, B1, "s3://train/b1.jsonl", {"endpointURL": url})
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
        outcome = run_trainer(config, env=env | {"AWS_MAX_ATTEMPTS": "1"})
    assert outcome.code == ExitCode.PERMANENT, outcome.stderr[-2000:]
    assert outcome.result is not None
    assert outcome.result["reason"] == "AccessDenied"
    assert "s3://train/b1.jsonl" in outcome.result["message"]
    assert "credentialsSecretRef" in outcome.result["message"]
    everything = outcome.stderr + json.dumps(outcome.events) + json.dumps(outcome.result)
    assert SECRET_ACCESS_KEY not in everything
    assert ACCESS_KEY_ID not in everything


def test_endpoint_down_is_retried_then_exit_75_naming_the_uri(tiny_model: Path, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens
    config = s3_config(tmp_path / "run", tiny_model, B1, "s3://train/b1.jsonl", {"endpointURL": endpoint})
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_MAX_ATTEMPTS": "2",
    }
    outcome = run_trainer(config, env=env)
    assert outcome.code == ExitCode.TRANSIENT, outcome.stderr[-2000:]
    assert outcome.result is not None
    assert outcome.result["reason"] == "ObjectStoreUnavailable"
    assert "s3://train/b1.jsonl: the endpoint cannot be reached" in outcome.result["message"]
    assert "endpointURL" in outcome.result["message"]
