"""A stand-in for JobSet's controller on the e2e tier, for the fields the operator's JobSets use.

The real controller cannot run here: Kubernetes 1.20 has no Indexed Jobs (the API server drops
``completionMode``, so its child Jobs would run N unrelated pods). The CRD (``testdata/jobset-crd.yaml``)
is installed with the control plane, so the operator discovers JobSet and creates JobSets; this thread
does what JobSet v1alpha2 + the Job controller do with them, polled every ``interval`` seconds:

* **the gang's pods**: for each replicated job, ``replicas`` Jobs of ``parallelism`` pods, made directly
  (no child Job objects: 1.20's Job controller would not index them). Pod ``i`` of Job ``j`` is named
  ``<jobset>-<replicatedJob>-<j>-<i>-<random>`` with the hostname ``<jobset>-<replicatedJob>-<j>-<i>`` and
  the JobSet's ``network.subdomain``; it carries JobSet's labels and annotations (``jobset-name``,
  ``replicatedjob-name``, ``replicatedjob-replicas``, ``job-index``, ``restart-attempt``; the
  ``coordinator`` address as an annotation) and the Job controller's completion index annotation
  (``batch.kubernetes.io/job-completion-index``), and is owned by the JobSet (so deleting it deletes them);
* **success**: every pod of the current restart Succeeded → condition ``Completed`` (``terminalState``);
* **failure** (a child Job with ``backoffLimit: 0`` fails at its first failed pod): while
  ``status.restarts < failurePolicy.maxRestarts``, every pod is deleted, ``restarts`` goes up and, once
  every old pod is gone (``BlockingRecreate``), the new gang is created with the next
  ``restart-attempt``; otherwise the other pods are stopped (deleted, as the Job controller does) and the
  JobSet gets the condition ``Failed``;
* ``suspend: true`` (Kueue's): nothing is created.

Not emulated: child Job objects, the headless Service (the pod runner's pods share the host's network:
the test maps the coordinator's DNS name to 127.0.0.1), failure-policy rules (pod failure reasons such as
``PodFailurePolicy`` do not exist on 1.20), startup policies, TTLs.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
import threading
from typing import Any

from .kubeapi import JSON, ApiError, RawApi

PREFIX = "jobset.sigs.k8s.io/"
JOBSET_NAME = PREFIX + "jobset-name"
REPLICATED_JOB_NAME = PREFIX + "replicatedjob-name"
REPLICATED_JOB_REPLICAS = PREFIX + "replicatedjob-replicas"
JOB_INDEX = PREFIX + "job-index"
RESTART_ATTEMPT = PREFIX + "restart-attempt"
COORDINATOR = PREFIX + "coordinator"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
API_VERSION = "jobset.x-k8s.io/v1alpha2"


class JobSetEmulator:
    """Runs the JobSets of one namespace (see the module docstring); ``errors`` fail the test at stop."""

    def __init__(self, api: RawApi, namespace: str, *, interval: float = 0.1) -> None:
        self.api = api
        self.namespace = namespace
        self.interval = interval
        self.errors: list[str] = []
        #: (JobSet uid, restart) of every gang created, in order: what the tests assert on.
        self.gangs: list[tuple[str, str, int]] = []
        self._created: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="jobset-emulator", daemon=True)
        self.jobsets_path = f"/apis/{API_VERSION}/namespaces/{namespace}/jobsets"
        self.pods_path = f"/api/v1/namespaces/{namespace}/pods"

    def start(self) -> JobSetEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.errors:
            raise AssertionError("JobSet emulator:\n" + "\n".join(self.errors))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                for jobset in self.api.get(self.jobsets_path)["items"]:
                    self.reconcile(jobset)
            except ApiError as error:
                if error.status not in (404, 409):  # gone or changed meanwhile: look again
                    self.errors.append(f"{type(error).__name__}: {error}")
            except Exception as error:
                self.errors.append(f"{type(error).__name__}: {error}")

    # -- one JobSet --------------------------------------------------------------------------------------
    def reconcile(self, jobset: JSON) -> None:
        meta, spec, status = jobset["metadata"], jobset.get("spec") or {}, jobset.get("status") or {}
        if _terminal(status) or spec.get("suspend") or meta.get("deletionTimestamp"):
            return
        restart = int(status.get("restarts") or 0)
        selector = {"labelSelector": f"{JOBSET_NAME}={meta['name']}"}
        pods = [p for p in self.api.get(self.pods_path, selector)["items"] if _owned(p, meta["uid"])]
        current = [p for p in pods if p["metadata"]["labels"].get(RESTART_ATTEMPT) == str(restart)]
        old = [p for p in pods if p not in current]
        if old:  # BlockingRecreate: the new gang waits until every pod of the old one is gone
            self._delete(old)
            return
        if (meta["uid"], restart) not in self._created:
            self._create_gang(jobset, restart)
            return
        phases = [p.get("status", {}).get("phase") for p in current]
        if "Failed" in phases:
            limit = int((spec.get("failurePolicy") or {}).get("maxRestarts") or 0)
            self._delete(
                [p for p in current if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
            )
            if restart < limit:
                self._delete(current)
                self._patch_status(meta["name"], {"restarts": restart + 1})
            else:
                message = f"a pod of restart {restart} failed, restarts used: {restart} of {limit}"
                self._finish(meta["name"], "Failed", "FailedJobs", message)
        elif phases and all(p == "Succeeded" for p in phases) and len(phases) == _expected(spec):
            self._finish(meta["name"], "Completed", "AllJobsCompleted", "every Job completed")

    def _create_gang(self, jobset: JSON, restart: int) -> None:
        meta, spec = jobset["metadata"], jobset["spec"]
        name = meta["name"]
        subdomain = (spec.get("network") or {}).get("subdomain") or name
        coordinator = spec.get("coordinator")
        address = (
            f"{name}-{coordinator['replicatedJob']}-{coordinator.get('jobIndex', 0)}-"
            f"{coordinator.get('podIndex', 0)}.{subdomain}"
            if coordinator
            else None
        )
        for replicated in spec["replicatedJobs"]:
            replicas = int(replicated.get("replicas", 1))
            job_spec = replicated["template"]["spec"]
            for job_index in range(replicas):
                for pod_index in range(int(job_spec.get("parallelism", 1))):
                    keys = {
                        JOBSET_NAME: name,
                        REPLICATED_JOB_NAME: replicated["name"],
                        REPLICATED_JOB_REPLICAS: str(replicas),
                        JOB_INDEX: str(job_index),
                        RESTART_ATTEMPT: str(restart),
                    }
                    self.api.create(
                        self.pods_path,
                        _pod(jobset, replicated, job_index, pod_index, keys, subdomain, address),
                    )
        self._created.add((meta["uid"], restart))
        self.gangs.append((meta["uid"], name, restart))

    def _finish(self, name: str, type_: str, reason: str, message: str) -> None:
        condition = {
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }
        self._patch_status(name, {"conditions": [condition], "terminalState": type_})

    def _patch_status(self, name: str, patch: JSON) -> None:
        self.api.patch(f"{self.jobsets_path}/{name}/status", {"status": patch})

    def _delete(self, pods: list[JSON]) -> None:
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                try:
                    self.api.delete(f"{self.pods_path}/{pod['metadata']['name']}")
                except ApiError as error:
                    if error.status != 404:
                        raise


def _pod(
    jobset: JSON,
    replicated: JSON,
    job_index: int,
    pod_index: int,
    keys: dict[str, str],
    subdomain: str,
    coordinator: str | None,
) -> JSON:
    template: dict[str, Any] = copy.deepcopy(replicated["template"]["spec"]["template"])
    meta = template.setdefault("metadata", {})
    job = f"{jobset['metadata']['name']}-{replicated['name']}-{job_index}"
    labels = dict(meta.get("labels") or {}) | keys
    annotations = dict(meta.get("annotations") or {}) | keys | {COMPLETION_INDEX: str(pod_index)}
    if coordinator:
        annotations[COORDINATOR] = coordinator
    owner = {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "name": jobset["metadata"]["name"],
        "uid": jobset["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    template["spec"] |= {"hostname": f"{job}-{pod_index}", "subdomain": subdomain}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-{pod_index}-{secrets.token_hex(3)[:5]}",
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": template["spec"],
    }


def _expected(spec: JSON) -> int:
    return sum(
        int(r.get("replicas", 1)) * int(r["template"]["spec"].get("parallelism", 1))
        for r in spec["replicatedJobs"]
    )


def _terminal(status: JSON) -> bool:
    return any(
        c.get("type") in ("Completed", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _owned(pod: JSON, uid: str) -> bool:
    return any(o.get("uid") == uid for o in pod["metadata"].get("ownerReferences") or [])


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
