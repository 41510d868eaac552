"""The objects a run needs: compared with expected YAML files, validated against Kubernetes' schemas.

Regenerate the expected files after a deliberate change with ``UPDATE_EXPECTED=1 pytest tests/operator``
and review the diff: they are the reviewable record of what the operator creates.
"""

from __future__ import annotations

import os
from typing import Any

import kubernetes_validate
import pytest
import yaml
from golden import EXPECTED, KUBERNETES_VERSION, BlockDumper, load

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import LABEL_KUEUE_QUEUE
from continual_operator.workloads import resources
from continual_trainer.config import parse_config


def rich_run() -> ContinualTrainingRun:
    return ContinualTrainingRun.model_validate(load("run.yaml"))


def rich_batch() -> TrainingBatch:
    return TrainingBatch.model_validate(load("batch.yaml"))


def minimal_run(**spec: Any) -> ContinualTrainingRun:
    body = {"baseModel": {"path": "models/tiny"}, "storage": {"existingClaim": "shared"}} | spec
    return ContinualTrainingRun.model_validate(
        {"metadata": {"name": "tiny", "namespace": "default", "uid": "u-1"}, "spec": body}
    )


def produced() -> dict[str, Any]:
    run, batch = rich_run(), rich_batch()
    return {
        # The Job as the train kind builds it (its config in the pod template); the ConfigMap of a config
        # too large for an annotation.
        "job.yaml": resources.attempt_objects(run, batch, 3)[-1],
        "configmap.yaml": resources.get_config_map(run, batch, 3),
        "serviceaccount.yaml": resources.get_service_account(run),
        "role.yaml": resources.get_role(run),
        "rolebinding.yaml": resources.get_role_binding(run),
        "persistentvolumeclaim.yaml": resources.get_claim(run),
    }


@pytest.mark.parametrize("name", sorted(produced()))
def test_objects_match_expected_yaml(name: str) -> None:
    obj = produced()[name]
    if os.environ.get("UPDATE_EXPECTED"):
        (EXPECTED / name).write_text(yaml.dump(obj, Dumper=BlockDumper, sort_keys=False, width=110))
    assert obj == load(name)


@pytest.mark.parametrize("name", sorted(produced()))
def test_objects_are_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(produced()[name], KUBERNETES_VERSION, strict=True)


def test_minimal_run_objects_are_valid_kubernetes() -> None:
    run = minimal_run()
    batch = rich_batch()
    for obj in (resources.get_job(run, batch, 1), resources.get_config_map(run, batch, 1)):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert resources.get_claim(run) is None


def test_job_is_hardened_and_owned_by_the_operator() -> None:
    job = produced()["job.yaml"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["spec"]["backoffLimit"] == 0  # retries belong to the operator
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]  # writable scratch for a read-only root
    assert pod["terminationGracePeriodSeconds"] == 600
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["command"] == ["continual-trainer", "--config", "/etc/continual/trainer.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner["kind"] == "ContinualTrainingRun"
    assert owner["controller"] is True
    labels = job["metadata"]["labels"]
    assert labels["continual.dev/run"] == "support-assistant"
    assert labels["continual.dev/batch"] == "support-assistant-0042"
    assert labels["continual.dev/attempt"] == "3"
    assert labels[LABEL_KUEUE_QUEUE] == "ml-team"
    assert job["spec"]["suspend"] is True  # Kueue admits it
    assert pod["serviceAccountName"] == "support-assistant-trainer"


def test_user_env_comes_after_the_operators_so_it_can_override() -> None:
    run = minimal_run(env=[{"name": "HF_HOME", "value": "/data/hf"}])
    env = resources.get_job(run, rich_batch(), 1)["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.index("HF_HOME") < len(names) - 1
    assert env[-1] == {"name": "HF_HOME", "value": "/data/hf"}
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env  # the base model is on the volume


def test_no_gpu_no_kueue_no_token() -> None:
    run = minimal_run(resources={"gpus": 0}, progress={"enabled": False})
    job = resources.get_job(run, rich_batch(), 1)
    pod = job["spec"]["template"]["spec"]
    assert "suspend" not in job["spec"]
    assert LABEL_KUEUE_QUEUE not in job["metadata"]["labels"]
    assert pod["containers"][0]["resources"] == {}
    assert pod["automountServiceAccountToken"] is False  # no progress reporting: no credentials at all


@pytest.mark.parametrize(
    ("progress", "kinds"),
    [
        pytest.param(True, ["ServiceAccount", "Role", "RoleBinding"], id="progress-on"),
        # No pod holds the ServiceAccount's token: a Role would grant nothing to anyone.
        pytest.param(False, ["ServiceAccount"], id="progress-off-no-rbac"),
    ],
)
def test_a_run_gets_a_role_only_when_its_trainer_holds_a_token(progress: bool, kinds: list[str]) -> None:
    run = minimal_run(progress={"enabled": progress})
    assert [m["kind"] for m in resources.run_objects(run)] == kinds
    pod = resources.get_job(run, rich_batch(), 1)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is progress
    assert pod["serviceAccountName"] == resources.get_service_account(run)["metadata"]["name"]


@pytest.mark.parametrize(
    ("retain", "owned"),
    [pytest.param(True, False, id="retained-by-default"), pytest.param(False, True, id="deleted-with-run")],
)
def test_claim_owner_reference_follows_retain_on_delete(retain: bool, owned: bool) -> None:
    run = minimal_run(storage={"claimTemplate": {"size": "1Gi"}, "retainOnDelete": retain})
    claim = resources.get_claim(run)
    assert claim is not None
    assert ("ownerReferences" in claim["metadata"]) is owned
    assert claim["metadata"]["name"] == "tiny-data"
    job = resources.get_job(run, rich_batch(), 1)
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "tiny-data"


def test_role_can_only_patch_this_runs_status() -> None:
    (rule,) = produced()["role.yaml"]["rules"]
    assert rule == {
        "apiGroups": ["continual.dev"],
        "resources": ["continualtrainingruns/status"],
        "resourceNames": ["support-assistant"],
        "verbs": ["get", "patch"],
    }


@pytest.mark.parametrize(
    ("sub_path", "data", "run_dir", "data_path"),
    [
        (None, "inbox/b.jsonl", "/data", "/data/inbox/b.jsonl"),
        ("runs/x", "inbox/b.jsonl", "/data/runs/x", "/data/runs/x/inbox/b.jsonl"),
        ("runs/x", "/data/shared/b.jsonl", "/data/runs/x", "/data/shared/b.jsonl"),
        ("runs/x", "../shared/b.txt", "/data/runs/x", "/data/runs/shared/b.txt"),
    ],
)
def test_trainer_config_paths(sub_path, data, run_dir, data_path) -> None:
    storage: dict[str, Any] = {"existingClaim": "c"}
    if sub_path is not None:
        storage["subPath"] = sub_path
    run = minimal_run(storage=storage)
    batch = TrainingBatch.model_validate(
        {"metadata": {"name": "b"}, "spec": {"runName": "tiny", "data": {"path": data}}}
    )
    config = resources.get_trainer_config(run, batch)
    assert config.run_dir == run_dir
    assert config.batch.data.path == data_path
    assert config.base_model.path == "/data/models/tiny"  # from the volume's root: shared by runs


def test_the_config_travels_in_the_pod_template_and_reaches_the_trainer_at_the_same_path() -> None:
    run, batch = rich_run(), rich_batch()
    (job,) = resources.attempt_objects(run, batch, 3)
    pod = job["spec"]["template"]
    text = pod["metadata"]["annotations"]["continual.dev/trainer-config"]
    assert text == resources.get_config_map(run, batch, 3)["data"]["trainer.yaml"]
    assert parse_config(text) == resources.get_trainer_config(run, batch)
    assert {
        "name": "config",
        "downwardAPI": {
            "items": [
                {
                    "path": "trainer.yaml",
                    "fieldRef": {"fieldPath": "metadata.annotations['continual.dev/trainer-config']"},
                }
            ]
        },
    } in pod["spec"]["volumes"]
    assert {"name": "config", "mountPath": "/etc/continual", "readOnly": True} in (
        pod["spec"]["containers"][0]["volumeMounts"]
    )
    # Not on the Job's own metadata (the operator's view keeps that): a short marker only.
    assert "continual.dev/trainer-config" not in job["metadata"]["annotations"]
    assert job["metadata"]["annotations"]["continual.dev/trainer-config-source"] == "pod-annotation"
    assert resources.config_in_pod_annotation(job) == text


def test_rendered_config_round_trips_through_the_trainers_parser() -> None:
    run, batch = rich_run(), rich_batch()
    config = resources.get_trainer_config(run, batch)
    text = resources.get_config_map(run, batch, 1)["data"]["trainer.yaml"]
    assert parse_config(text) == config
    assert config.batch.id == "support-assistant-0042"
    assert config.progress.kubernetes is not None
    assert (config.progress.kubernetes.namespace, config.progress.kubernetes.name) == (
        "ml",
        "support-assistant",
    )
    assert config.termination_message_path == "/dev/termination-log"
    assert config.lora == run.spec.lora
    assert config.training == run.spec.training


def test_long_batch_name_gets_a_valid_shortened_batch_id() -> None:
    name = "b" * 100
    batch = TrainingBatch.model_validate(
        {"metadata": {"name": name}, "spec": {"runName": "tiny", "data": {"path": "x.txt"}}}
    )
    config = resources.get_trainer_config(minimal_run(), batch)
    assert len(config.batch.id) <= 63
    job = resources.get_job(minimal_run(), batch, 1)
    assert job["metadata"]["annotations"]["continual.dev/batch"] == name
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
