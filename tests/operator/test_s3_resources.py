"""What a run with ``spec.objectStore`` gives its trainer pod: the store's address in the config, the access
keys as Secret references in the environment, the CA bundle as a read-only Secret mount; never a value.

Regenerate the expected files after a deliberate change with ``UPDATE_EXPECTED=1 pytest tests/operator``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from golden import EXPECTED, KUBERNETES_VERSION, BlockDumper, load
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.workloads import resources
from continual_trainer.config import parse_config


def s3_run(**store: Any) -> ContinualTrainingRun:
    body = load("run-s3.yaml")
    if store:
        body["spec"]["objectStore"] = store
    return ContinualTrainingRun.model_validate(body)


def s3_batch() -> TrainingBatch:
    return TrainingBatch.model_validate(load("batch-s3.yaml"))


def produced() -> dict[str, Any]:
    run, batch = s3_run(), s3_batch()
    return {
        "job-s3.yaml": resources.get_job(run, batch, 1),
        "configmap-s3.yaml": resources.get_config_map(run, batch, 1),
    }


@pytest.mark.parametrize("name", sorted(produced()))
def test_s3_objects_match_expected_yaml_and_are_valid_kubernetes(name: str) -> None:
    obj = produced()[name]
    path = EXPECTED / name
    if os.environ.get("UPDATE_EXPECTED"):
        path.write_text(yaml.dump(obj, Dumper=BlockDumper, sort_keys=False, width=110))
    assert obj == yaml.safe_load(path.read_text())
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_credentials_are_secret_references_and_the_ca_bundle_a_read_only_mount() -> None:
    job = resources.get_job(s3_run(), s3_batch(), 1)
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "minio-creds", "key": "AWS_ACCESS_KEY_ID"}},
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SESSION_TOKEN"
    assert all("value" not in e for name, e in env.items() if name.startswith("AWS_"))
    mounts = {m["name"]: m for m in _container(job)["volumeMounts"]}
    assert mounts["object-store-ca"] == {
        "name": "object-store-ca",
        "mountPath": resources.CA_BUNDLE_MOUNT,
        "readOnly": True,
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["object-store-ca"]["secret"]["secretName"] == "minio-ca"

    config = parse_config(resources.get_config_map(s3_run(), s3_batch(), 1)["data"][resources.CONFIG_KEY])
    assert config.object_store is not None
    assert config.object_store.ca_bundle_path == f"{resources.CA_BUNDLE_MOUNT}/ca.crt"
    assert config.object_store.endpoint_url == "https://minio.storage.svc:9000"
    assert config.batch.data.uri == "s3://training-data/assistant/2026-12-01/"
    assert config.batch.data.path is None


def test_custom_secret_keys_and_no_session_token() -> None:
    run = s3_run(credentialsSecretRef={"name": "c", "accessKeyIDKey": "id", "secretAccessKeyKey": "secret"})
    env = {e["name"]: e for e in _container(resources.get_job(run, s3_batch(), 1))["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "c", "key": "id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "c", "key": "secret"}
    assert "AWS_SESSION_TOKEN" not in env


def test_no_credentials_secret_renders_nothing_so_the_boto3_chain_works() -> None:
    run = s3_run(region="eu-west-1")
    job = resources.get_job(run, s3_batch(), 1)
    container = _container(job)
    assert not [e for e in container["env"] if e["name"].startswith("AWS_")]
    assert "object-store-ca" not in {m["name"] for m in container["volumeMounts"]}
    config = parse_config(resources.get_config_map(run, s3_batch(), 1)["data"][resources.CONFIG_KEY])
    assert config.object_store is not None
    assert config.object_store.region == "eu-west-1"
    assert config.object_store.ca_bundle_path is None
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"uri": "https://bucket/key"}, "uri"),
        ({"uri": "s3://Bad_Bucket/x"}, "uri"),
        ({"path": "a.jsonl", "uri": "s3://bkt/a.jsonl"}, "exactly one of 'path'"),
        ({"uri": "s3://bkt/a.jsonl", "sha256": "xyz"}, "sha256"),
    ],
)
def test_malformed_batch_data_is_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    body = load("batch-s3.yaml")
    body["spec"]["data"] = data
    with pytest.raises(ValidationError, match=field):
        TrainingBatch.model_validate(body)


def test_malformed_endpoint_is_refused() -> None:
    with pytest.raises(ValidationError, match="endpointURL"):
        s3_run(endpointURL="minio:9000")


def test_local_mode_keeps_the_uri_and_leaves_the_ca_bundle_to_aws_ca_bundle(tmp_path: Path) -> None:
    from continual_operator.local.mode import local_trainer_config

    pod = resources.get_trainer_config(s3_run(), s3_batch())
    local = local_trainer_config(pod, tmp_path / "volume", tmp_path / "term.json")
    assert local.batch.data.uri == "s3://training-data/assistant/2026-12-01/"
    assert local.object_store is not None
    assert local.object_store.endpoint_url == "https://minio.storage.svc:9000"
    assert local.object_store.ca_bundle_path is None  # no Secret mount on one machine
    assert local.run_dir == str(tmp_path / "volume")


def test_a_malformed_uri_fails_the_batch_naming_spec_data_uri() -> None:
    from continual_operator.api import TrainingBatchSpec
    from continual_operator.planning.status import describe_validation_error

    spec = {"runName": "s3-assistant", "data": {"uri": "s3:/bucket-without-slashes/x"}}
    with pytest.raises(ValidationError) as info:
        TrainingBatchSpec.model_validate(spec)  # as the reconciler validates a batch's spec
    message = describe_validation_error(info.value)
    assert message.startswith("spec.data.uri: ")
    assert "expected s3://bucket/key" in message
