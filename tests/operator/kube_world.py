"""A fake cluster for the handler tests: kmock's Kubernetes emulator, seeded and inspected in the API's terms.

kmock stores what clients send and serves it back (create, merge-patch, delete, list, watch), answers 409
to a second create of a name and 404 for unknown objects. It plays no controller: nobody assigns uids,
runs Jobs or collects garbage, and label selectors are not applied. The tests therefore play the
controllers themselves (:meth:`KubeWorld.finish_job` is the Job controller and the kubelet in one) and
assert on what the operator decided and sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kubernetes
import yaml

from continual_operator.cluster.k8s import KubernetesStorage
from continual_operator.cluster.reconciler import Reconciler
from continual_trainer.records import BatchResult

NS = "ml"
RUN = "demo"
T0 = dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=dt.UTC)

RUNS = kmock.resource("continual.dev", "v1alpha1", "continualtrainingruns")
BATCHES = kmock.resource("continual.dev", "v1alpha1", "trainingbatches")
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
CONFIG_MAPS = kmock.resource("", "v1", "configmaps")
EVENTS = kmock.resource("", "v1", "events")
SERVICE_ACCOUNTS = kmock.resource("", "v1", "serviceaccounts")
CLAIMS = kmock.resource("", "v1", "persistentvolumeclaims")
ROLES = kmock.resource("rbac.authorization.k8s.io", "v1", "roles")
ROLE_BINDINGS = kmock.resource("rbac.authorization.k8s.io", "v1", "rolebindings")

_INFO: dict[kmock.resource, kmock.ResourceInfo] = {
    RUNS: kmock.ResourceInfo(
        kind="ContinualTrainingRun",
        singular="continualtrainingrun",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        subresources={"status"},
    ),
    BATCHES: kmock.ResourceInfo(
        kind="TrainingBatch",
        singular="trainingbatch",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        subresources={"status"},
    ),
    JOBS: kmock.ResourceInfo(
        kind="Job",
        singular="job",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
    ),
    PODS: kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True, verbs={"get", "list", "watch"}),
    CONFIG_MAPS: kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs={"create", "delete"}),
    EVENTS: kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"create"}),
    SERVICE_ACCOUNTS: kmock.ResourceInfo(kind="ServiceAccount", namespaced=True, verbs={"create"}),
    CLAIMS: kmock.ResourceInfo(kind="PersistentVolumeClaim", namespaced=True, verbs={"create"}),
    ROLES: kmock.ResourceInfo(kind="Role", namespaced=True, verbs={"create"}),
    ROLE_BINDINGS: kmock.ResourceInfo(kind="RoleBinding", namespaced=True, verbs={"create"}),
}


def run_body(
    name: str = RUN, *, generation: int = 1, status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A ContinualTrainingRun as the API server would store it (uid, generation, creation time)."""
    body: dict[str, Any] = {
        "baseModel": {"path": "models/tiny"},
        "storage": {"existingClaim": "demo-data"},
        "resources": {"gpus": 0},
    }
    body.update(spec)
    return {
        "apiVersion": "continual.dev/v1alpha1",
        "kind": "ContinualTrainingRun",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-run-{name}",
            "generation": generation,
            "creationTimestamp": T0.isoformat(),
        },
        "spec": body,
        "status": status or {},
    }


def batch_body(
    name: str, *, run: str = RUN, created: int = 0, status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A TrainingBatch created ``created`` minutes after T0."""
    return {
        "apiVersion": "continual.dev/v1alpha1",
        "kind": "TrainingBatch",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-batch-{name}",
            "generation": 1,
            "creationTimestamp": (T0 + dt.timedelta(minutes=created)).isoformat(),
        },
        "spec": {"runName": run, "data": {"path": f"inbox/{name}.jsonl"}, **spec},
        "status": status or {},
    }


def result(batch: str, start: int, end: int, outcome: str = "Succeeded") -> str:
    """The trainer's termination message."""
    return BatchResult(
        batch_id=batch,
        outcome=outcome,
        start_step=start,
        end_step=end,
        target_step=end,
        samples=40,
        tokens=4000,
        mean_loss=2.5,
        checkpoint=f"checkpoints/checkpoint-{end}",
    ).to_termination_message()


class KubeWorld:
    """kmock, seeded with the project's resources, with shortcuts for the tests."""

    def __init__(self, server: kmock.KubernetesEmulator) -> None:
        self.server = server
        for resource, info in _INFO.items():
            server.resources[resource] = info

    @property
    def url(self) -> str:
        return str(self.server.url).rstrip("/")

    def storage(self) -> KubernetesStorage:
        return KubernetesStorage(
            kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url)),
            instance="test-operator",
        )

    # -- objects --------------------------------------------------------------------------------------
    def add(self, resource: kmock.resource, body: dict[str, Any]) -> None:
        self.server.objects[resource, body["metadata"]["namespace"], body["metadata"]["name"]] = body

    def get(self, resource: kmock.resource, name: str) -> dict[str, Any] | None:
        key = (resource, NS, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        return json.loads(json.dumps(self.server.objects[key].raw))

    def names(self, resource: kmock.resource) -> list[str]:
        return sorted(
            name for (res, _, name), obj in self.server.objects.items() if res == resource and not obj.deleted
        )

    def patch(self, resource: kmock.resource, name: str, patch: dict[str, Any]) -> None:
        self.server.objects[resource, NS, name].patch(patch)

    def unstore(self, resource: kmock.resource, name: str) -> None:
        """Undo kmock's storing of an object whose create a reaction refused (a real server keeps nothing)."""
        del self.server.objects[resource, NS, name]

    # -- requests -------------------------------------------------------------------------------------
    def requests(self, method: str, resource: kmock.resource) -> list[Any]:
        return [r for r in self.server if r.method == method and r.resource == resource]

    def events(self) -> list[dict[str, Any]]:
        return [r.data for r in self.requests("POST", EVENTS)]

    def status_patches(self, resource: kmock.resource, name: str) -> list[dict[str, Any]]:
        return [
            r.data["status"]
            for r in self.requests("PATCH", resource)
            if r.name == name and r.subresource == "status"
        ]

    # -- the controllers kmock does not have -----------------------------------------------------------
    def finish_job(self, name: str, *, exit_code: int, message: str = "", failed: bool | None = None) -> None:
        """The Job's pod ran and ended: the kubelet's container state, the Job controller's condition."""
        failed = exit_code != 0 if failed is None else failed
        job = self.get(JOBS, name)
        assert job is not None, f"no Job {name}"
        uid = f"uid-job-{name}"
        self.patch(
            JOBS,
            name,
            {
                "metadata": {"uid": uid, "creationTimestamp": "2025-03-01T11:00:00Z"},
                "status": {"conditions": [{"type": "Failed" if failed else "Complete", "status": "True"}]},
            },
        )
        template = job["spec"]["template"]["metadata"]
        self.add(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-pod",
                    "namespace": NS,
                    "labels": template["labels"],
                    "annotations": template["annotations"],
                    "creationTimestamp": "2025-03-01T11:00:01Z",
                    "ownerReferences": [{"kind": "Job", "name": name, "uid": uid, "controller": True}],
                },
                "status": {
                    "phase": "Failed" if failed else "Succeeded",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "state": {"terminated": {"exitCode": exit_code, "message": message}},
                        }
                    ],
                },
            },
        )


def trainer_config_of(job: dict[str, Any]) -> dict[str, Any]:
    """The trainer config a Job's pod reads at /etc/continual/trainer.yaml: the pod annotation its
    ``downwardAPI`` config volume names (the ConfigMap only holds a config too large for it)."""
    pod = job["spec"]["template"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    (item,) = volume["downwardAPI"]["items"]
    assert item["path"] == "trainer.yaml"
    key = item["fieldRef"]["fieldPath"].removeprefix("metadata.annotations['").removesuffix("']")
    return dict(yaml.safe_load(pod["metadata"]["annotations"][key]))


def status_of(world: KubeWorld, resource: kmock.resource, name: str) -> dict[str, Any]:
    """An object's status as the emulator holds it (the object must exist)."""
    obj = world.get(resource, name)
    assert obj is not None
    return obj.get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of ``type_`` in a status."""
    return next(c for c in status["conditions"] if c["type"] == type_)


@contextlib.asynccontextmanager
async def reconciler_of(world: KubeWorld, now: dt.datetime | None = None) -> AsyncIterator[Reconciler]:
    """A reconciler on the emulator; with ``now``, on a clock the test moves (``reconciler.clock["now"]``)."""
    if now is None:
        reconciler = Reconciler(world.storage())
    else:
        clock = {"now": now}
        reconciler = Reconciler(world.storage(), clock=lambda: clock["now"])
        reconciler.clock = clock  # type: ignore[attr-defined]  # the tests move it
    try:
        yield reconciler
    finally:
        await reconciler.close()
        reconciler.storage.close()
