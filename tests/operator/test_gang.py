"""Gang workloads (N nodes x M GPUs): golden YAML, Kubernetes and JobSet schemas, names, addresses, Kueue.

Regenerate the expected files after a deliberate change with ``UPDATE_EXPECTED=1 pytest tests/operator``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from golden import EXPECTED, KUBERNETES_VERSION, BlockDumper, load
from pydantic import ValidationError

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.naming import LABEL_KUEUE_QUEUE
from continual_operator.workloads import gang, gang_views, resources
from continual_operator.workloads.gang import Gang

JOBSET_SCHEMA = Path(__file__).parent / "schemas" / "jobset-v1alpha2.json"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def rich() -> tuple[ContinualTrainingRun, TrainingBatch]:
    """The rich run of test_resources (2 GPUs on one node)."""
    return ContinualTrainingRun.model_validate(load("run.yaml")), TrainingBatch.model_validate(
        load("batch.yaml")
    )


def gang_run(
    *, name: str | None = None, queue: str | None = "ml-team"
) -> tuple[ContinualTrainingRun, TrainingBatch]:
    """2 nodes x 8 GPUs on a ReadWriteMany volume, queued in Kueue (or another name, or no queue)."""
    body = load("run-gang.yaml")
    body["metadata"]["name"] = name or body["metadata"]["name"]
    body["spec"]["scheduling"]["kueueQueueName"] = queue
    return ContinualTrainingRun.model_validate(body), TrainingBatch.model_validate(load("batch-gang.yaml"))


def gang_job() -> tuple[dict[str, Any], Gang]:
    run, batch = gang_run()
    return resources.get_job(run, batch, 1), Gang.of(run.spec.resources)


def produced() -> dict[str, dict[str, Any]]:
    run, batch = rich()
    single = gang.build(resources.get_job(run, batch, 3), Gang.of(run.spec.resources), "job")
    job, shape = gang_job()
    (jobset,) = gang.build(job, shape, "jobset")
    indexed, service = gang.build(job, shape, "indexed-job")
    return {
        "gang-job.yaml": single[0],
        "gang-jobset.yaml": jobset,
        "gang-indexed-job.yaml": indexed,
        "gang-service.yaml": service,
    }


def jobset_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(JOBSET_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "JobSet":
        spec = spec["replicatedJobs"][0]["template"]["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def command(obj: dict[str, Any]) -> list[str]:
    (container,) = pod_spec(obj)["containers"]
    return container["command"]  # type: ignore[no-any-return]


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# -- golden files and schemas -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(produced()))
def test_objects_match_expected_yaml(name: str) -> None:
    obj = produced()[name]
    if os.environ.get("UPDATE_EXPECTED"):
        (EXPECTED / name).write_text(yaml.dump(obj, Dumper=BlockDumper, sort_keys=False, width=110))
    assert obj == load(name)


#: The oldest version kubernetes-validate knows (Indexed Jobs need 1.21, which it no longer ships).
OLDEST_KNOWN = "1.25"


@pytest.mark.parametrize("version", [OLDEST_KNOWN, KUBERNETES_VERSION])
@pytest.mark.parametrize("name", ["gang-job.yaml", "gang-indexed-job.yaml", "gang-service.yaml"])
def test_job_and_service_are_valid_kubernetes(name: str, version: str) -> None:
    kubernetes_validate.validate(produced()[name], version, strict=True)


def test_jobset_matches_the_schema_and_its_job_is_valid_kubernetes() -> None:
    jobset = produced()["gang-jobset.yaml"]
    jobset_validator().validate(jobset)
    (replicated,) = jobset["spec"]["replicatedJobs"]
    # The embedded JobTemplateSpec is a batch/v1 Job's metadata and spec: Kubernetes' own schema checks it.
    as_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": replicated["template"]["metadata"] | {"name": "x", "namespace": "ml"},
        "spec": replicated["template"]["spec"],
    }
    kubernetes_validate.validate(as_job, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "misspelt"),
    [
        (("spec", "network"), "enableDnsHostnames"),
        (("spec", "failurePolicy"), "maxRestart"),
        (("spec", "failurePolicy", "rules", 0), "onJobFailureReason"),
        (("spec", "replicatedJobs", 0), "replica"),
        (("spec",), "replicatedJob"),
    ],
)
def test_jobset_schema_refuses_a_misspelt_field(path: tuple[str | int, ...], misspelt: str) -> None:
    jobset = copy.deepcopy(produced()["gang-jobset.yaml"])
    node: Any = jobset
    for key in path:
        node = node[key]
    node[misspelt] = 1
    errors = [e.message for e in jobset_validator().iter_errors(jobset)]
    assert any(misspelt in message for message in errors), errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "failurePolicy", "rules", 0, "action"), "RestartGang"),
        (("spec", "failurePolicy", "rules", 0, "name"), "disruption-rule"),  # no '-' in rule names
        (
            ("spec", "failurePolicy", "rules", 0, "onJobFailureReasons"),
            ["Evicted"],
        ),  # a pod, not a Job reason
        (("spec", "network", "subdomain"), "7b-run"),  # the headless Service's name: RFC 1035
    ],
)
def test_jobset_schema_refuses_invalid_values(path: tuple[str | int, ...], value: Any) -> None:
    jobset = copy.deepcopy(produced()["gang-jobset.yaml"])
    node: Any = jobset
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(jobset_validator().iter_errors(jobset))


# -- the shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodes", "installed", "engine"),
    [
        (1, False, "job"),
        (1, True, "job"),
        (2, True, "jobset"),
        (2, False, "indexed-job"),
        (64, False, "indexed-job"),
    ],
)
def test_choose_engine(nodes: int, installed: bool, engine: str) -> None:
    assert gang.choose_engine(nodes, installed) == engine


def test_choose_engine_and_build_refuse_shapes_that_do_not_fit() -> None:
    job, shape = gang_job()
    with pytest.raises(ValueError, match="nodes must be at least 1"):
        gang.choose_engine(0, jobset_installed=True)
    with pytest.raises(ValueError, match="choose_engine"):
        gang.build(job, shape, "job")
    with pytest.raises(ValueError, match="choose_engine"):
        gang.build(job, Gang(nodes=1, gpus=8), "jobset")
    with pytest.raises(ValueError, match="not a gang shape"):
        Gang(nodes=2, gpus=-1)


@pytest.mark.parametrize("gpus", [0, 1])
def test_one_process_keeps_todays_job_exactly(gpus: int) -> None:
    run, batch = rich()
    job = resources.get_job(run, batch, 3)
    assert gang.build(job, Gang(nodes=1, gpus=gpus), "job") == [job]


def test_single_node_runs_torchrun_with_one_process_per_gpu() -> None:
    job = produced()["gang-job.yaml"]
    cmd = command(job)
    assert cmd[:6] == ["torchrun", "--nproc-per-node", "2", "--nnodes", "1", "--standalone"]
    assert cmd[-4:] == ["-m", "continual_trainer.cli", "--config", "/etc/continual/trainer.yaml"]
    assert flag(cmd, "--shutdown-timeout") == "600"  # the pod's whole grace period, not torchrun's 30 s
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod_spec(job)["volumes"]
    assert gang_views.world_size(job) == 2


@pytest.mark.parametrize("name", ["gang-jobset.yaml", "gang-indexed-job.yaml"])
def test_multi_node_torchrun_flags(name: str) -> None:
    obj = produced()[name]
    cmd = command(obj)
    assert flag(cmd, "--nproc-per-node") == "8"
    assert flag(cmd, "--nnodes") == "2"
    assert flag(cmd, "--node-rank") == "$(JOB_COMPLETION_INDEX)"
    assert flag(cmd, "--master-port") == "29500"
    assert flag(cmd, "--max-restarts") == "0"
    assert flag(cmd, "--shutdown-timeout") == "900"
    assert "--standalone" not in cmd
    (container,) = pod_spec(obj)["containers"]
    # The kubelet expands $(JOB_COMPLETION_INDEX) only from the container's own environment.
    index_env = [e for e in container["env"] if e["name"] == "JOB_COMPLETION_INDEX"]
    assert index_env == [
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        }
    ]
    assert gang_views.world_size(obj) == 16


def test_indexed_job_is_one_gang_that_fails_as_one() -> None:
    job = produced()["gang-indexed-job.yaml"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["backoffLimit"] == 0


def test_jobset_restarts_the_whole_gang_after_a_disruption_without_counting_it() -> None:
    jobset = produced()["gang-jobset.yaml"]
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 0  # counted failures go back to the operator's failurePolicy
    assert policy["restartStrategy"] == "BlockingRecreate"  # the old gang is gone before the new one starts
    (rule,) = policy["rules"]
    assert rule["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert rule["onJobFailureReasons"] == ["PodFailurePolicy"]
    (replicated,) = jobset["spec"]["replicatedJobs"]
    job_spec = replicated["template"]["spec"]
    # The only pod failure policy rule: a disruption is what makes the Job fail with reason PodFailurePolicy.
    assert job_spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    assert replicated["replicas"] == 1
    assert job_spec["completionMode"] == "Indexed"
    assert job_spec["completions"] == job_spec["parallelism"] == 2
    assert job_spec["backoffLimit"] == 0


# -- addresses: the coordinator's DNS name is the pod with completion index 0 --------------------------
def indexed_job_pods(job: dict[str, Any]) -> list[tuple[int, str]]:
    """(index, FQDN-in-namespace) of each pod, as the Job controller names Indexed Job pods:
    ``hostname = <job name>-<index>``, ``subdomain`` from the pod template (kubernetes pkg/controller/job)."""
    pod = job["spec"]["template"]["spec"]
    return [
        (i, f"{job['metadata']['name']}-{i}.{pod['subdomain']}") for i in range(job["spec"]["completions"])
    ]


def test_indexed_job_coordinator_address_is_pod_zero_behind_the_service() -> None:
    job, service = produced()["gang-indexed-job.yaml"], produced()["gang-service.yaml"]
    pods = indexed_job_pods(job)
    assert flag(command(job), "--master-addr") == dict(pods)[0]
    assert len(pods) == 2
    for _, fqdn in pods:
        host, subdomain = fqdn.split(".")
        assert DNS_LABEL.match(host) and len(host) <= 63
        assert subdomain == service["metadata"]["name"]  # the pods' DNS zone is the headless Service
    # The Service's DNS records are those of the pods it selects: exactly this attempt's pods.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert "continual.dev/attempt" in service["spec"]["selector"]
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert service["metadata"]["ownerReferences"][0]["kind"] == "ContinualTrainingRun"


def test_jobset_coordinator_address_is_pod_zero_of_job_zero() -> None:
    jobset = produced()["gang-jobset.yaml"]
    name, spec = jobset["metadata"]["name"], jobset["spec"]
    (replicated,) = spec["replicatedJobs"]
    # JobSet names child Jobs <jobset>-<replicatedJob>-<jobIndex> (pkg/util/placement.GenJobName) and puts
    # their pods in network.subdomain; the Job controller names the hosts <job>-<completion index>.
    pods = {
        (j, i): f"{name}-{replicated['name']}-{j}-{i}.{spec['network']['subdomain']}"
        for j in range(replicated["replicas"])
        for i in range(replicated["template"]["spec"]["completions"])
    }
    coordinator = spec["coordinator"]
    assert flag(command(jobset), "--master-addr") == pods[coordinator["jobIndex"], coordinator["podIndex"]]
    assert (coordinator["jobIndex"], coordinator["podIndex"]) == (0, 0)
    assert coordinator["replicatedJob"] == replicated["name"]
    assert spec["network"] == {
        "enableDNSHostnames": True,
        "subdomain": name,
        "publishNotReadyAddresses": True,
    }
    for fqdn in pods.values():
        host = fqdn.split(".")[0]
        assert DNS_LABEL.match(host) and len(host) + len("-abcde") <= 63  # JobSet's webhook check


# -- Kueue --------------------------------------------------------------------------------------------
def test_kueue_label_is_on_the_jobset_only() -> None:
    jobset = produced()["gang-jobset.yaml"]
    assert jobset["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "ml-team"
    assert jobset["spec"]["suspend"] is True
    (replicated,) = jobset["spec"]["replicatedJobs"]
    template = replicated["template"]
    assert LABEL_KUEUE_QUEUE not in template["metadata"]["labels"]
    assert LABEL_KUEUE_QUEUE not in template["spec"]["template"]["metadata"]["labels"]
    assert "suspend" not in template["spec"]  # JobSet suspends its Jobs itself


def test_kueue_label_is_on_the_indexed_job_and_not_on_the_service() -> None:
    job, service = produced()["gang-indexed-job.yaml"], produced()["gang-service.yaml"]
    assert job["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "ml-team"
    assert job["spec"]["suspend"] is True
    assert LABEL_KUEUE_QUEUE not in service["metadata"]["labels"]


def test_no_queue_no_suspend() -> None:
    run, batch = gang_run(queue=None)
    job = resources.get_job(run, batch, 1)
    (jobset,) = gang.build(job, Gang.of(run.spec.resources), "jobset")
    assert "suspend" not in jobset["spec"]
    assert LABEL_KUEUE_QUEUE not in jobset["metadata"]["labels"]
    jobset_validator().validate(jobset)


# -- names ----------------------------------------------------------------------------------------------
def test_long_names_are_shortened_to_fit_every_generated_pod_name() -> None:
    run, batch = gang_run(name="7b-" + "r" * 50)  # starts with a digit, leaves no room for pod indexes
    job = resources.get_job(run, batch, 12)
    shape = Gang(nodes=128, gpus=8)
    (jobset,) = gang.build(job, shape, "jobset")
    indexed, service = gang.build(job, shape, "indexed-job")
    jobset_validator().validate(jobset)
    kubernetes_validate.validate(indexed, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    for name in (jobset["metadata"]["name"], service["metadata"]["name"]):
        assert re.match(r"^[a-z]", name) and name.endswith("-a12")
    assert len(f"{jobset['metadata']['name']}-node-0-127-abcde") <= 63
    assert len(f"{indexed['metadata']['name']}-127") <= 63
    # Deterministic, and distinct per attempt.
    assert gang.build(job, shape, "jobset") == [jobset]
    other = gang.build(resources.get_job(run, batch, 13), shape, "jobset")[0]
    assert other["metadata"]["name"] != jobset["metadata"]["name"]


def test_a_name_that_fits_is_kept() -> None:
    assert gang.gang_name("run-batch-a1", 4) == "run-batch-a1"
    short = gang.gang_name("a-long-run-name-batch-a1", 45)
    assert short.startswith("a-long-") and short.endswith("-a1") and len(short) + 45 <= 63
    with pytest.raises(ValueError, match="no name fits"):
        gang.gang_name("run-batch-a1", 60)


def test_builders_refuse_a_job_they_did_not_make() -> None:
    job, shape = gang_job()
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "train.py"]
    with pytest.raises(ValueError, match="continual-trainer"):
        gang.build(job, shape, "jobset")


# -- spec.resources ---------------------------------------------------------------------------------------
def spec_with(resources_: dict[str, Any], storage: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ml"},
        "spec": {"baseModel": {"path": "m"}, "storage": storage, "resources": resources_},
    }


def test_resources_nodes_defaults_and_bounds() -> None:
    run = ContinualTrainingRun.model_validate(spec_with({}, {"existingClaim": "c"}))
    assert (run.spec.resources.nodes, run.spec.resources.gpus) == (1, 1)
    assert Gang.of(run.spec.resources) == Gang(nodes=1, gpus=1)
    for nodes in (0, 257):
        with pytest.raises(ValidationError, match="nodes"):
            ContinualTrainingRun.model_validate(spec_with({"nodes": nodes}, {"existingClaim": "c"}))
    cpu_gang = ContinualTrainingRun.model_validate(spec_with({"nodes": 2, "gpus": 0}, {"existingClaim": "c"}))
    assert Gang.of(cpu_gang.spec.resources).world_size == 2  # one gloo process per pod


def test_a_gang_needs_a_volume_every_node_can_mount() -> None:
    rwo = {"claimTemplate": {"size": "1Ti"}}
    with pytest.raises(ValidationError, match=r"storage\.claimTemplate\.accessModes to \[ReadWriteMany\]"):
        ContinualTrainingRun.model_validate(spec_with({"nodes": 2}, rwo))
    ContinualTrainingRun.model_validate(spec_with({"nodes": 1, "gpus": 8}, rwo))  # one node: RWO is enough
    rwx = {"claimTemplate": {"size": "1Ti", "accessModes": ["ReadWriteMany"]}}
    ContinualTrainingRun.model_validate(spec_with({"nodes": 2}, rwx))


@pytest.mark.parametrize("engine", ["jobset", "indexed-job"])
def test_the_multinode_example_builds_valid_objects(engine: gang.Engine) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "gpu-multinode.yaml"
    body = yaml.safe_load(example.read_text())
    body["metadata"]["uid"] = "u-1"  # as stored by the API server
    run = ContinualTrainingRun.model_validate(body)
    batch = TrainingBatch.model_validate(load("batch-gang.yaml"))
    shape = Gang.of(run.spec.resources)
    assert gang.choose_engine(run.spec.resources.nodes, jobset_installed=engine == "jobset") == engine
    objects = gang.build(resources.get_job(run, batch, 1), shape, engine)
    for obj in objects:
        if obj["kind"] == "JobSet":
            jobset_validator().validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert gang_views.world_size(objects[0]) == 16


def test_a_cpu_gang_runs_one_gloo_process_per_pod() -> None:
    body = {
        "metadata": {"name": "cpu", "namespace": "ml", "uid": "u-2"},
        "spec": {
            "baseModel": {"path": "m"},
            "storage": {"existingClaim": "shared"},
            "resources": {"gpus": 0, "nodes": 2},
        },
    }
    run = ContinualTrainingRun.model_validate(body)
    batch = TrainingBatch.model_validate(load("batch-gang.yaml"))
    shape = Gang.of(run.spec.resources)
    indexed, service = gang.build(resources.get_job(run, batch, 1), shape, "indexed-job")
    assert flag(command(indexed), "--nproc-per-node") == "1"
    (container,) = pod_spec(indexed)["containers"]
    assert "limits" not in container["resources"]  # no GPU asked for
    assert gang_views.world_size(indexed) == 2
    for obj in (indexed, service):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
