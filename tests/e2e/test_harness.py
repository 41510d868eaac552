"""The harness proves itself: real controllers, real RBAC, real volumes, real signals.

Each test runs Python snippets as "containers" through the pod runner and checks outcomes where a
real cluster would show them: Job conditions written by the Job controller, garbage collection by the
garbage collector, a 403 from the API server's RBAC authorizer, file ownership on the claim's host
folder, and exit codes in pod status.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import HARNESS_CRDS
from .controlplane import ControlPlane
from .crds import install_crds
from .kubeapi import JSON, ApiError, RawApi
from .operator_world import pvc_manifest
from .podrunner import PodRunner
from .waiting import wait_until

pytestmark = pytest.mark.e2e


# --- manifests and waits ----------------------------------------------------------------------------


def python_container(script: str, **extra: Any) -> JSON:
    return {
        "name": "main",
        "image": "python:3.11",
        "command": ["python3", "-c", textwrap.dedent(script)],
        **extra,
    }


def job_manifest(name: str, pod_spec: JSON, **metadata: Any) -> JSON:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, **metadata},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", **pod_spec}}},
    }


def create(api: RawApi, namespace: str, manifest: JSON) -> JSON:
    kind = manifest["kind"]
    group = "/apis/batch/v1" if kind == "Job" else "/api/v1"
    plural = {
        "Job": "jobs",
        "Pod": "pods",
        "ConfigMap": "configmaps",
        "PersistentVolumeClaim": "persistentvolumeclaims",
    }
    return api.create(f"{group}/namespaces/{namespace}/{plural[kind]}", manifest)


def wait_job(
    api: RawApi, runner: PodRunner, namespace: str, name: str, condition: str, timeout: float = 60
) -> JSON:
    """Wait for the Job controller to set `condition` (Complete / Failed) on the Job."""

    def has_condition() -> JSON | None:
        job = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        conditions = job.get("status", {}).get("conditions") or []
        return job if any(c["type"] == condition and c["status"] == "True" for c in conditions) else None

    def dump() -> str:
        job = api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        return f"job status: {job.get('status')}\n{runner.describe()}"

    return wait_until(has_condition, timeout=timeout, what=f"job {name} {condition}", dump=dump)


def job_pods(api: RawApi, namespace: str, job: str) -> list[JSON]:
    return api.get(f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": f"job-name={job}"})["items"]


def terminated(pod: JSON) -> JSON:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def wait_pod_phase(
    api: RawApi, runner: PodRunner, namespace: str, name: str, phase: str, timeout: float = 60
) -> JSON:
    def reached() -> JSON | None:
        pod = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        return pod if pod.get("status", {}).get("phase") == phase else None

    return wait_until(reached, timeout=timeout, what=f"pod {name} {phase}", dump=runner.describe)


def wait_gone(api: RawApi, path: str, runner: PodRunner, timeout: float = 90) -> None:
    def gone() -> bool:
        try:
            api.get(path)
        except ApiError as error:
            return error.status == 404
        return False

    wait_until(gone, timeout=timeout, what=f"{path} to be deleted", interval=0.5, dump=runner.describe)


# --- (a) a Job runs to completion on a claim --------------------------------------------------------


def test_job_completes_writing_to_its_claim(
    control_plane: ControlPlane, raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    script = """
        import json, os, pathlib
        pathlib.Path("/data/out.txt").write_text("written by " + os.environ["HOSTNAME"])
        pathlib.Path("/dev/termination-log").write_text(json.dumps({"step": 3}))
    """
    pod_spec = {
        "containers": [python_container(script, volumeMounts=[{"name": "data", "mountPath": "/data"}])],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }
    create(raw_api, namespace, job_manifest("write", pod_spec))

    # Without its claim the pod cannot start, as on a real node.
    def pod_name() -> str | None:
        pods = job_pods(raw_api, namespace, "write")
        return pods[0]["metadata"]["name"] if pods else None

    name = wait_until(
        pod_name, timeout=30, what="the Job controller to create a pod", dump=pod_runner.describe
    )
    reason = wait_until(
        lambda: pod_runner.pending_reason(name), timeout=30, what="pending reason", dump=pod_runner.describe
    )
    assert 'persistentvolumeclaim "data" not found' in reason
    assert raw_api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")["status"]["phase"] == "Pending"

    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(pvc_manifest("data")))
    job = wait_job(raw_api, pod_runner, namespace, "write", "Complete")

    assert job["status"]["succeeded"] == 1
    assert (pod_runner.claim_path("data") / "out.txt").read_text() == f"written by {name}"
    pod = raw_api.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    assert pod["spec"]["nodeName"] == pod_runner.node_name
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0
    assert terminated(pod)["reason"] == "Completed"
    assert json.loads(terminated(pod)["message"]) == {"step": 3}


# --- (b) garbage collection of an owned Job ---------------------------------------------------------


def make_owner(kind: str, raw_api: RawApi, namespace: str) -> tuple[JSON, str]:
    """Create an owner object of `kind`; return it and its API path."""
    if kind == "ConfigMap":
        owner = create(
            raw_api, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}
        )
        return owner, f"/api/v1/namespaces/{namespace}/configmaps/owner"
    # Already installed before the controller manager started (see conftest.py), so that the garbage
    # collector watches it from the start; installing again exercises the replace path.
    installed = install_crds(raw_api, HARNESS_CRDS)
    assert installed.stripped == [
        "owners.e2e.example.com.spec.versions[0].schema.openAPIV3Schema.properties.spec.x-kubernetes-validations"
    ]
    path = f"/apis/e2e.example.com/v1/namespaces/{namespace}/owners"
    owner = raw_api.create(
        path,
        {
            "apiVersion": "e2e.example.com/v1",
            "kind": "Owner",
            "metadata": {"name": "owner"},
            "spec": {"size": 1},
        },
    )
    return owner, f"{path}/owner"


@pytest.mark.parametrize("owner_kind", ["ConfigMap", "Owner"])
def test_owned_job_is_garbage_collected(
    owner_kind: str, raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    owner, owner_path = make_owner(owner_kind, raw_api, namespace)
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pod_spec = {
        "containers": [python_container("import time; print('running', flush=True); time.sleep(600)")]
    }
    create(raw_api, namespace, job_manifest("owned", pod_spec, ownerReferences=[reference]))
    process = pod_runner.wait_for_process("owned-")

    raw_api.delete(owner_path)

    wait_gone(raw_api, f"/apis/batch/v1/namespaces/{namespace}/jobs/owned", pod_runner)
    wait_until(
        lambda: not job_pods(raw_api, namespace, "owned"),
        timeout=60,
        what="the Job's pods to be deleted",
        dump=pod_runner.describe,
    )
    assert process.returncode == -signal.SIGTERM  # the deleted pod's process got SIGTERM, as from a kubelet


# --- (c) RBAC: a pod's ServiceAccount gets exactly what its Role allows -----------------------------


def test_service_account_can_read_only_its_config_map(
    control_plane: ControlPlane, raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    for name in ("allowed", "forbidden"):
        create(
            raw_api,
            namespace,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"who": name}},
        )
    raw_api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "reader"}})
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    raw_api.create(
        f"{rbac}/roles",
        {
            "metadata": {"name": "read-one"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["allowed"],
                    "verbs": ["get"],
                }
            ],
        },
    )
    raw_api.create(
        f"{rbac}/rolebindings",
        {
            "metadata": {"name": "reader-read-one"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-one"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    script = """
        import json, pathlib
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
        config.load_incluster_config()
        namespace = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text()
        core = client.CoreV1Api()
        result = {"allowed": core.read_namespaced_config_map("allowed", namespace).data}
        try:
            core.read_namespaced_config_map("forbidden", namespace)
        except ApiException as error:
            result["forbidden"] = error.status
        pathlib.Path("/dev/termination-log").write_text(json.dumps(result))
    """
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader"},
        "spec": {
            "serviceAccountName": "reader",
            "restartPolicy": "Never",
            "containers": [python_container(script)],
        },
    }
    create(raw_api, namespace, pod)
    done = wait_pod_phase(raw_api, pod_runner, namespace, "reader", "Succeeded")
    assert json.loads(terminated(done)["message"]) == {"allowed": {"who": "allowed"}, "forbidden": 403}

    # The same identity outside a pod (how a test can run the operator with its own RBAC).
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    allowed = control_plane.kubectl(
        "get", "configmap", "allowed", "-n", namespace, "-o", "name", kubeconfig=kubeconfig
    )
    assert allowed.stdout.strip() == "configmap/allowed"
    denied = control_plane.kubectl(
        "get", "configmap", "forbidden", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


# --- (d) runAsUser: files on the claim belong to the pod's user -------------------------------------


def test_run_as_user_owns_what_it_writes(raw_api: RawApi, namespace: str, pod_runner: PodRunner) -> None:
    create(raw_api, namespace, pvc_manifest("data"))
    script = """
        import os, pathlib
        pathlib.Path("/data/owned.txt").write_text("mine")
        pathlib.Path("/dev/termination-log").write_text(f"{os.getuid()}:{os.getgid()}:{sorted(os.getgroups())}")
    """
    pod_spec = {
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": True, "fsGroup": 2000},
        "containers": [
            python_container(
                script,
                volumeMounts=[{"name": "data", "mountPath": "/data"}],
                securityContext={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            )
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    }
    create(raw_api, namespace, job_manifest("as-user", pod_spec))
    wait_job(raw_api, pod_runner, namespace, "as-user", "Complete")

    written = (pod_runner.claim_path("data") / "owned.txt").stat()
    assert (written.st_uid, written.st_gid) == (1000, 2000)  # gid from the setgid folder, as with fsGroup
    pod = job_pods(raw_api, namespace, "as-user")[0]
    assert terminated(pod)["message"] == "1000:0:[2000]"


# --- (e) a process killed mid-run fails its pod and its Job -----------------------------------------

COUNTER = """
    import signal, sys, time
    def on_term(signum, frame):
        print("got SIGTERM, checkpointing", flush=True)
        open("/dev/termination-log", "w").write("preempted at step %d" % step)
        sys.exit(42)
    signal.signal(signal.SIGTERM, on_term)
    for step in range(10000):
        print("step", step, flush=True)
        time.sleep(0.1)
"""


def test_killed_pod_fails_its_job(raw_api: RawApi, namespace: str, pod_runner: PodRunner) -> None:
    create(raw_api, namespace, job_manifest("killed", {"containers": [python_container(COUNTER)]}))
    pod_runner.wait_for_log(r"^step 3$", "killed-")
    process = pod_runner.wait_for_process("killed-")

    pod_runner.kill(process.pod, signal.SIGKILL)

    job = wait_job(raw_api, pod_runner, namespace, "killed", "Failed")
    assert job["status"]["failed"] == 1
    state = terminated(raw_api.get(f"/api/v1/namespaces/{namespace}/pods/{process.pod}"))
    assert (state["exitCode"], state["reason"], state.get("signal")) == (137, "Error", 9)


def test_a_held_runner_starts_no_pod_until_released(
    raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    # What benchmarks/operator_scale.py --pods-after-burst does: the node starts nothing for a while.
    pod_runner.hold()
    try:
        create(raw_api, namespace, job_manifest("held", {"containers": [python_container("print('ran')")]}))
        (pod,) = wait_until(lambda: job_pods(raw_api, namespace, "held") or None, timeout=30, what="its pod")
        assert pod_runner.processes(pod["metadata"]["name"]) == []
        assert pod.get("status", {}).get("phase", "Pending") == "Pending"
    finally:
        pod_runner.release()
    wait_job(raw_api, pod_runner, namespace, "held", "Complete")
    assert pod_runner.log_path(pod["metadata"]["name"]).read_text() == "ran\n"


def test_terminated_pod_gets_sigterm_then_its_grace_period(
    raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    create(
        raw_api,
        namespace,
        job_manifest(
            "evicted", {"containers": [python_container(COUNTER)], "terminationGracePeriodSeconds": 5}
        ),
    )
    pod_runner.wait_for_log(r"^step 2$", "evicted-")
    process = pod_runner.wait_for_process("evicted-")

    pod_runner.terminate(process.pod, reason="Evicted", message="The node was low on resource: memory.")

    wait_job(raw_api, pod_runner, namespace, "evicted", "Failed")
    pod = raw_api.get(f"/api/v1/namespaces/{namespace}/pods/{process.pod}")
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "Evicted")
    assert terminated(pod)["exitCode"] == 42
    assert terminated(pod)["message"].startswith("preempted at step ")


def test_deleted_pod_is_stopped_and_removed(
    control_plane: ControlPlane, raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "doomed"},
        "spec": {"containers": [python_container(COUNTER)]},
    }
    create(raw_api, namespace, pod)
    pod_runner.wait_for_log(r"^step 1$", "doomed")
    process = pod_runner.wait_for_process("doomed")

    # Bound to a node, the pod only disappears once its "kubelet" has stopped it.
    control_plane.kubectl("delete", "pod", "doomed", "-n", namespace, "--grace-period=10", "--timeout=30s")

    assert process.returncode == 42
    assert "got SIGTERM, checkpointing" in process.log()


# --- the pod runner's kubelet duties the operator's Jobs rely on ------------------------------------


def test_config_maps_secrets_and_downward_api_reach_the_container(
    raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    create(
        raw_api,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "trainer"},
            "data": {"trainer.yaml": "lr: 0.001\n", "MODE": "fast"},
        },
    )
    raw_api.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "hub"}, "stringData": {"token": "s3cr3t"}},
    )
    script = """
        import json, os, pathlib, sys
        result = {
            "config": pathlib.Path("/etc/continual/trainer.yaml").read_text(),
            "nested": pathlib.Path("/tmp/nested/trainer.yaml").read_text(),
            "tmp": sorted(os.listdir("/tmp")),
            "env": {key: os.environ.get(key) for key in ("HF_TOKEN", "CFG_MODE", "POD_NAME", "GREETING")},
            "argv": sys.argv[1:],
        }
        pathlib.Path("/dev/termination-log").write_text(json.dumps(result))
    """
    container = python_container(
        script,
        args=["$(GREETING)", "$$(GREETING)"],
        env=[
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GREETING", "value": "hello-$(POD_NAME)"},
        ],
        envFrom=[{"configMapRef": {"name": "trainer"}, "prefix": "CFG_"}],
        volumeMounts=[
            {"name": "config", "mountPath": "/etc/continual", "readOnly": True},
            # An emptyDir over /tmp (as with readOnlyRootFilesystem) hides the runner's own folders
            # under /tmp, and a second mount nests inside it.
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "config", "mountPath": "/tmp/nested", "readOnly": True},
        ],
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "configured"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {
                    "name": "config",
                    "configMap": {
                        "name": "trainer",
                        "items": [{"key": "trainer.yaml", "path": "trainer.yaml"}],
                    },
                },
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }
    create(raw_api, namespace, pod)
    done = wait_pod_phase(raw_api, pod_runner, namespace, "configured", "Succeeded")
    # The emptyDir at /tmp holds only what the pod put there, plus the way back to the "image" (the venv
    # and checkout) when those live under /tmp on the host, as in a CI clone there.
    image_dirs = sorted(
        {
            p.relative_to("/tmp").parts[0]
            for p in pod_runner.settings.launch.exposed_paths
            if Path("/tmp") in p.parents
        }
    )
    assert json.loads(terminated(done)["message"]) == {
        "config": "lr: 0.001\n",
        "nested": "lr: 0.001\n",
        "tmp": sorted(["nested", *image_dirs]),
        "env": {
            "HF_TOKEN": "s3cr3t",
            "CFG_MODE": "fast",
            "POD_NAME": "configured",
            "GREETING": "hello-configured",
        },
        "argv": ["hello-configured", "$(GREETING)"],
    }


def test_on_failure_restarts_the_container_in_place(
    raw_api: RawApi, namespace: str, pod_runner: PodRunner
) -> None:
    script = """
        import pathlib, sys
        marker = pathlib.Path("/scratch/failed-once")
        if not marker.exists():
            marker.touch()
            sys.exit(3)
    """
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "flaky"},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                python_container(script, volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }
    create(raw_api, namespace, pod)
    done = wait_pod_phase(raw_api, pod_runner, namespace, "flaky", "Succeeded")
    status = done["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert [process.returncode for process in pod_runner.processes("flaky")] == [3, 0]
