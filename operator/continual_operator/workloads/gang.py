"""Gang workloads: one batch attempt trained by N pods (one per node) x M trainer processes (one per GPU).

Pure builders over the train Job that :func:`continual_operator.workloads.resources.get_job` builds: they take that
manifest and a :class:`Gang` (``spec.resources.nodes`` and ``gpus``) and return the objects to create,
reshaped for PyTorch's own launcher (``torchrun``) and for the engines a cluster already runs:

* ``job`` (N = 1): the same ``batch/v1`` Job. With one process it is returned unchanged; with M > 1 its
  container runs ``torchrun --nproc-per-node M --nnodes 1 --standalone -m continual_trainer.cli ...``.
* ``jobset`` (N > 1, JobSet's CRD installed): a ``jobset.x-k8s.io/v1alpha2`` JobSet with one replicated
  job of one Indexed Job of N pods, stable DNS names (``network.enableDNSHostnames``), the coordinator's
  address, and a failure policy that restarts the whole gang after a disruption without counting it.
* ``indexed-job`` (N > 1, no JobSet): an Indexed Job of N pods plus the headless Service that gives them
  DNS names (``<job>-<index>.<service>``), both owned by the run.

In every shape the node rank is the pod's completion index (``JOB_COMPLETION_INDEX``), so global rank 0,
the coordinator that alone writes the volume and the termination message, is process 0 of the pod with
index 0, whose DNS name is the rendezvous address. The Kueue queue label goes on the top object only, so
Kueue admits the gang as one workload, all or nothing. Every field used is described in docs/scaling.md;
the JobSet fields are pinned by a JSON schema written from JobSet's API reference
(tests/operator/schemas/jobset-v1alpha2.json).

Which engines a cluster offers is an :class:`Engines` (the cluster executor discovers it from the API
server, :mod:`continual_operator.cluster.engines`); :meth:`Engines.engine_for` says which shape a run gets
(None: none can run it) and :func:`build` makes it; :mod:`continual_operator.workloads.gang_views` reads an
attempt back.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from continual_operator.api.run import ResourcesSpec
from continual_operator.naming import (
    DNS_LABEL_MAX,
    LABEL_ATTEMPT,
    LABEL_BATCH,
    LABEL_COMPONENT,
    LABEL_KUEUE_QUEUE,
    LABEL_RUN,
)
from continual_operator.workloads.resources import TRAINER_COMMAND
from continual_operator.workloads.views import TRAINER_CONTAINER

Engine = Literal["job", "jobset", "indexed-job"]

JOBSET_GROUP = "jobset.x-k8s.io"
JOBSET_API_VERSION = f"{JOBSET_GROUP}/v1alpha2"
#: The one replicated job of a gang's JobSet; its Job is ``<jobset>-node-0``, its pods ``<jobset>-node-0-<i>``.
REPLICATED_JOB = "node"
#: torchrun's conventional rendezvous port (its own default for ``--master-port``).
RENDEZVOUS_PORT = 29500
#: The trainer's CLI as a module: torchrun starts ``python -m`` it once per GPU.
TRAINER_MODULE = "continual_trainer.cli"
#: The world size (nodes x processes per node) of the attempt, on the top object and its pods, so that the
#: operator can show it in status without recomputing it from a spec that may have changed since: read
#: with ``gang_views.world_size`` into the batch's ``status.worldSize`` (the field proposed for the
#: integration).
ANNOTATION_WORLD_SIZE = "continual.dev/world-size"
#: Where the Job controller writes a pod's index (Kubernetes 1.21+); the label of the same name is 1.28+.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
NODE_RANK_ENV = "JOB_COMPLETION_INDEX"
#: The suffix JobSet's webhook adds to the longest pod name when it checks that names fit (``-abcde``).
_POD_NAME_RANDOM = 6
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ATTEMPT_SUFFIX = re.compile(r"-a[0-9]+$")
_HASH_LENGTH = 8


@dataclass(frozen=True)
class Gang:
    """The shape of one attempt: ``nodes`` pods with ``gpus`` GPUs each (0: one CPU process per pod).

    ``max_restarts`` bounds the gang restarts JobSet itself makes after a counted failure. It is 0 on
    purpose: under torchrun the container's exit code no longer says whether the trainer failed
    permanently (torchrun exits 1 for any failed worker), so a counted failure goes back to the operator,
    which reads the coordinator's result and applies ``spec.failurePolicy`` (back-off, permanent failures
    not retried). Disruptions are restarted by JobSet whatever this is, and never counted.
    """

    nodes: int = 1
    gpus: int = 1
    port: int = RENDEZVOUS_PORT
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus < 0 or self.max_restarts < 0 or not 0 < self.port < 65536:
            raise ValueError(f"not a gang shape: {self}")

    @classmethod
    def of(cls, resources: ResourcesSpec) -> Gang:
        """The gang of ``spec.resources``."""
        return cls(nodes=resources.nodes, gpus=resources.gpus)

    @property
    def procs_per_node(self) -> int:
        """Trainer processes per pod: one per GPU, one on CPU."""
        return max(self.gpus, 1)

    @property
    def world_size(self) -> int:
        """Trainer processes in the gang (torch.distributed's ``WORLD_SIZE``)."""
        return self.nodes * self.procs_per_node


#: Indexed Jobs: alpha (feature gate ``IndexedJob``, off by default) in 1.21, beta (on) in 1.22, GA in 1.24.
INDEXED_JOB_GA = (1, 24)
INDEXED_JOB_FIRST = (1, 21)
#: What to install, and the Kubernetes version needed, when a cluster offers no multi-node engine.
JOBSET_INSTALL = (
    "kubectl apply --server-side -f "
    "https://github.com/kubernetes-sigs/jobset/releases/download/<version>/manifests.yaml"
)


@dataclass(frozen=True)
class Engines:
    """The multi-node engines a cluster offers, as discovered from its API server.

    ``jobset``: ``jobset.x-k8s.io/v1alpha2`` is served (JobSet's CRD and controller are installed).
    ``indexed_job``: the API server keeps a Job's ``completionMode: Indexed`` (1.24+, or 1.21-1.23 with
    the ``IndexedJob`` feature gate; an older server drops the field and would run N unrelated pods).
    ``server_version``: ``major.minor`` as the server reports it, for the messages.
    """

    jobset: bool = False
    indexed_job: bool = False
    server_version: str = ""

    def engine_for(self, nodes: int) -> Engine | None:
        """The shape of a run's train workload on this cluster (None: nodes > 1 and no engine runs it)."""
        if nodes == 1:
            return "job"
        if not (self.jobset or self.indexed_job):
            return None
        return choose_engine(nodes, self.jobset)

    def missing(self) -> str:
        """What the cluster lacks for nodes > 1: what to install, or the Kubernetes version needed."""
        version = f"Kubernetes {self.server_version}" if self.server_version else "this cluster"
        return (
            f"{version} offers neither JobSet (the API jobset.x-k8s.io/v1alpha2 is not served) nor Indexed "
            f"Jobs (completionMode: Indexed needs Kubernetes {INDEXED_JOB_GA[0]}.{INDEXED_JOB_GA[1]}+, or "
            f"{INDEXED_JOB_FIRST[0]}.{INDEXED_JOB_FIRST[1]}+ with the IndexedJob feature gate). Install JobSet "
            f"v0.7.0+ ({JOBSET_INSTALL}) or upgrade the cluster"
        )


def indexed_jobs_by_version(major: int, minor: int) -> bool | None:
    """Whether a server of this version keeps ``completionMode`` (None: it depends on a feature gate)."""
    if (major, minor) >= INDEXED_JOB_GA:
        return True
    if (major, minor) < INDEXED_JOB_FIRST:
        return False
    return None


def choose_engine(nodes: int, jobset_installed: bool) -> Engine:
    """The shape of a run's train workload: a Job on one node; on several, a JobSet when its CRD is there."""
    if nodes < 1:
        raise ValueError(f"spec.resources.nodes must be at least 1, got {nodes}")
    if nodes == 1:
        return "job"
    return "jobset" if jobset_installed else "indexed-job"


def build(job: Mapping[str, Any], gang: Gang, engine: Engine) -> list[dict[str, Any]]:
    """The objects that run ``job``'s attempt as ``gang`` on ``engine``, the workload first.

    The attempt's ConfigMap is unchanged and keeps the train Job's name, which the pods' config volume
    names; a gang workload has the same name unless it had to be shortened (:func:`gang_name`), so find
    an attempt's objects by their labels (run, batch, attempt), not by the ConfigMap's name.
    """
    if (engine == "job") != (gang.nodes == 1):
        raise ValueError(f"engine {engine!r} does not run {gang.nodes} node(s): use choose_engine()")
    if engine == "job":
        return [get_single_node_job(job, gang)]
    if engine == "jobset":
        return [get_jobset(job, gang)]
    return [get_indexed_job(job, gang), get_headless_service(job, gang)]


# -- N = 1 --------------------------------------------------------------------------------------------
def get_single_node_job(job: Mapping[str, Any], gang: Gang) -> dict[str, Any]:
    """The train Job on one node: unchanged for one process, else torchrun with one process per GPU.

    ``--standalone`` makes torchrun host its own rendezvous on localhost (no address to agree on).
    """
    if gang.nodes != 1:
        raise ValueError(f"a single-node Job cannot run {gang.nodes} nodes")
    out = copy.deepcopy(dict(job))
    if gang.world_size == 1:
        return out
    pod = out["spec"]["template"]["spec"]
    container = _trainer_container(pod)
    launch = ["--nnodes", "1", "--standalone"]
    container["command"] = _torchrun(container["command"], gang, launch, _grace(pod))
    _add_gang_pod_parts(out["spec"]["template"], gang, node_rank=False)
    _annotate(out, gang)
    return out


# -- N > 1: JobSet ------------------------------------------------------------------------------------
def jobset_name(job: Mapping[str, Any], gang: Gang) -> str:
    """The JobSet's name (also its subdomain): the Job's, shortened when JobSet's pod names would not fit."""
    reserved = len(f"-{REPLICATED_JOB}-0-{gang.nodes - 1}") + _POD_NAME_RANDOM
    return gang_name(job["metadata"]["name"], reserved)


def get_jobset(job: Mapping[str, Any], gang: Gang) -> dict[str, Any]:
    """The attempt as a JobSet: one replicated job whose one Indexed Job has a pod per node.

    * ``network.enableDNSHostnames`` with ``subdomain`` = the JobSet's name: JobSet creates the headless
      Service, and pod ``i`` is reachable as ``<jobset>-node-0-<i>.<subdomain>``; ``publishNotReadyAddresses``
      lets the ranks find the coordinator before any pod is Ready (trainer pods have no readiness probe).
    * ``coordinator`` names pod 0: JobSet annotates every pod with its address
      (``jobset.sigs.k8s.io/coordinator``), the same one torchrun gets as ``--master-addr``.
    * Failures: ``backoffLimit: 0``, so one failed pod fails the Job and the gang. The pod failure policy
      turns a disruption (a ``DisruptionTarget`` pod condition: eviction, preemption, node drain) into the
      Job failure reason ``PodFailurePolicy``, which the JobSet rule ``RestartJobSetAndIgnoreMaxRestarts``
      answers by recreating the whole gang without counting it; it resumes from the checkpoint the
      coordinated SIGTERM saved. Any other failure takes the default action (``RestartJobSet``) bounded by
      ``maxRestarts`` (see :class:`Gang`). ``BlockingRecreate``: the new gang starts only once every pod
      of the old one is gone, so two coordinators never share the volume (the single-writer rule).
    * Kueue: the queue label and ``suspend`` on the JobSet only; Kueue admits the gang as one workload.
    """
    name = jobset_name(job, gang)
    meta = copy.deepcopy(dict(job["metadata"])) | {"name": name}
    queue = meta["labels"].get(LABEL_KUEUE_QUEUE)
    template = copy.deepcopy(job["spec"]["template"])
    template["metadata"]["labels"] = _without_queue(template["metadata"].get("labels"))
    pod = template["spec"]
    container = _trainer_container(pod)
    address = f"{name}-{REPLICATED_JOB}-0-0.{name}"
    container["command"] = _torchrun(container["command"], gang, _multi_node(gang, address), _grace(pod))
    _add_gang_pod_parts(template, gang, node_rank=True)
    job_meta = {"labels": _without_queue(meta["labels"]), "annotations": dict(meta.get("annotations") or {})}
    job_template = {"metadata": job_meta, "spec": _indexed_job_spec(job["spec"], gang, template)}
    replicated = {"name": REPLICATED_JOB, "replicas": 1, "template": job_template}
    spec: dict[str, Any] = {"suspend": True} if queue is not None else {}
    spec |= {
        "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
        "coordinator": {"replicatedJob": REPLICATED_JOB, "jobIndex": 0, "podIndex": 0},
        "failurePolicy": _jobset_failure_policy(gang),
        "replicatedJobs": [replicated],
    }
    jobset = {"apiVersion": JOBSET_API_VERSION, "kind": "JobSet", "metadata": meta, "spec": spec}
    _annotate(jobset, gang)
    return jobset


def _indexed_job_spec(job_spec: Mapping[str, Any], gang: Gang, template: dict[str, Any]) -> dict[str, Any]:
    """The replicated job's Job: N indexed pods, failing as one, a disruption marked as such.

    The pod failure policy's only rule makes a ``DisruptionTarget`` pod condition fail the Job with the
    reason ``PodFailurePolicy``, which :func:`_jobset_failure_policy` tells from any other failure.
    """
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": gang.nodes,
        "parallelism": gang.nodes,
        "backoffLimit": 0,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]
        },
    }
    # Whatever else the train Job's spec says, except ``suspend``: JobSet suspends its Jobs itself.
    spec |= {k: v for k, v in job_spec.items() if k not in {*spec, "suspend", "template"}}
    spec["template"] = template
    return spec


def _jobset_failure_policy(gang: Gang) -> dict[str, Any]:
    """Disruptions restart the whole gang uncounted; anything else is bounded by ``gang.max_restarts``.

    ``RestartJobSetAndIgnoreMaxRestarts`` and ``BlockingRecreate`` are JobSet's (v0.7.0+); without a
    matching rule JobSet applies ``RestartJobSet``, which fails the JobSet once ``maxRestarts`` is used.
    """
    return {
        "maxRestarts": gang.max_restarts,
        "restartStrategy": "BlockingRecreate",
        "rules": [
            {
                "name": "Disruption",
                "action": "RestartJobSetAndIgnoreMaxRestarts",
                "onJobFailureReasons": ["PodFailurePolicy"],
            }
        ],
    }


# -- N > 1: Indexed Job + headless Service ------------------------------------------------------------
def indexed_job_name(job: Mapping[str, Any], gang: Gang) -> str:
    """The Indexed Job's name (and its Service's): the Job's, shortened when ``<job>-<index>`` would not fit.

    The Job controller names pod ``i``'s host ``<job>-<i>``, a DNS label, and the Service's name must be
    an RFC 1035 label (starting with a letter).
    """
    return gang_name(job["metadata"]["name"], len(f"-{gang.nodes - 1}"))


def get_indexed_job(job: Mapping[str, Any], gang: Gang) -> dict[str, Any]:
    """The attempt as an Indexed Job of N pods, for clusters without JobSet (Kubernetes 1.21+).

    ``completionMode: Indexed`` gives pod ``i`` the hostname ``<job>-<i>`` and ``subdomain`` puts it in
    the headless Service's DNS zone; ``backoffLimit: 0`` fails the whole Job (the Job controller stops the
    other pods) as soon as one pod fails, and the operator's retry is a new attempt, i.e. a gang restart.
    The Kueue label and ``suspend`` stay as the train Job has them: Kueue admits the N pods together.
    """
    name = indexed_job_name(job, gang)
    out = copy.deepcopy(dict(job))
    out["metadata"]["name"] = name
    out["spec"] |= {"completionMode": "Indexed", "completions": gang.nodes, "parallelism": gang.nodes}
    pod = out["spec"]["template"]["spec"]
    pod["subdomain"] = name
    container = _trainer_container(pod)
    address = f"{name}-0.{name}"
    container["command"] = _torchrun(container["command"], gang, _multi_node(gang, address), _grace(pod))
    _add_gang_pod_parts(out["spec"]["template"], gang, node_rank=True)
    _annotate(out, gang)
    return out


def get_headless_service(job: Mapping[str, Any], gang: Gang) -> dict[str, Any]:
    """The headless Service that gives the Indexed Job's pods their DNS names.

    ``clusterIP: None`` (no virtual IP, one DNS record per pod); the selector is the attempt's own pod
    labels (run, batch, attempt, component), so it never matches another attempt's pods; no ports (DNS
    records need none, as for the Service JobSet creates). Owned by the run like the Job: both go with it,
    and the operator deletes it together with its attempt.
    """
    name = indexed_job_name(job, gang)
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = {key: pod_labels[key] for key in (LABEL_RUN, LABEL_BATCH, LABEL_ATTEMPT, LABEL_COMPONENT)}
    meta = copy.deepcopy(dict(job["metadata"])) | {"name": name}
    meta["labels"] = _without_queue(meta.get("labels")) | {LABEL_COMPONENT: "trainer-network"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"clusterIP": "None", "selector": selector, "publishNotReadyAddresses": True},
    }


# -- names ----------------------------------------------------------------------------------------------
def gang_name(name: str, reserved: int) -> str:
    """``name`` when it is an RFC 1035 label leaving ``reserved`` of 63 characters for what controllers
    append (pod indexes); else a shortened, deterministic one: ``<prefix>-<hash of name>-a<attempt>``.

    A hash of the whole name keeps two attempts (or runs) from sharing a shortened name; a prefix ``g`` is
    added when the name starts with a digit (Service names and JobSet's generated names must not).
    """
    if _DNS_1035.match(name) and len(name) + reserved <= DNS_LABEL_MAX:
        return name
    match = _ATTEMPT_SUFFIX.search(name)
    suffix = match.group() if match else ""
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    body = name[: len(name) - len(suffix)]
    lead = "" if body[:1].isalpha() else "g"
    room = DNS_LABEL_MAX - reserved - len(lead) - len(digest) - len(suffix) - 1
    if room < 0:
        raise ValueError(f"no name fits {reserved} reserved characters of {DNS_LABEL_MAX}")
    head = re.sub(r"[^a-z0-9-]+", "-", body)[:room].strip("-")
    return f"{lead}{head}-{digest}{suffix}" if head else f"{lead or 'g'}{digest}{suffix}"


# -- the parts every gang pod shares ------------------------------------------------------------------
def _torchrun(command: Sequence[str], gang: Gang, launch: Sequence[str], grace: int) -> list[str]:
    """``torchrun <launch> ... -m continual_trainer.cli <the trainer's arguments>``.

    ``--max-restarts 0``: a restart is the whole gang's (the operator's or JobSet's), never one pod's
    workers alone. ``--shutdown-timeout``: after SIGTERM torchrun kills its workers after 30 s by default,
    which would cut the coordinated checkpoint short; it gets the pod's whole grace period instead.
    """
    if not command or command[0] != TRAINER_COMMAND[0]:
        raise ValueError(
            f"the train Job's container runs {list(command)!r}, not {TRAINER_COMMAND[0]!r}: gang builders "
            "reshape the Job of continual_operator.workloads.resources.get_job"
        )
    return [
        "torchrun",
        "--nproc-per-node",
        str(gang.procs_per_node),
        *launch,
        "--max-restarts",
        "0",
        "--shutdown-timeout",
        str(grace),
        "-m",
        TRAINER_MODULE,
        *command[1:],
    ]


def _multi_node(gang: Gang, address: str) -> list[str]:
    """torchrun's static rendezvous: every node knows the gang size, its rank and the coordinator."""
    return [
        "--nnodes",
        str(gang.nodes),
        "--node-rank",
        f"$({NODE_RANK_ENV})",  # expanded by the kubelet from the container's environment
        "--master-addr",
        address,
        "--master-port",
        str(gang.port),
    ]


def _add_gang_pod_parts(template: dict[str, Any], gang: Gang, *, node_rank: bool) -> None:
    """Shared memory for the processes of a pod and, on several nodes, the node rank.

    ``/dev/shm``: NCCL's intra-node transport and PyTorch's shared tensors need more than the container
    runtime's 64 MiB; a memory-backed emptyDir (counted against the pod's memory limit) gives it.
    ``JOB_COMPLETION_INDEX`` is set from the pod's completion-index annotation explicitly: the Job
    controller injects the variable itself only from Kubernetes 1.22, and skips it when it is present.
    """
    pod = template["spec"]
    container = _trainer_container(pod)
    pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})  # noqa: S108 - the pod's own
    if node_rank:
        field = f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
        container["env"].append({"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {"fieldPath": field}}})
    template["metadata"].setdefault("annotations", {})[ANNOTATION_WORLD_SIZE] = str(gang.world_size)


def _annotate(obj: dict[str, Any], gang: Gang) -> None:
    obj["metadata"].setdefault("annotations", {})[ANNOTATION_WORLD_SIZE] = str(gang.world_size)


def _trainer_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    for container in pod["containers"]:
        if container["name"] == TRAINER_CONTAINER:
            return container  # type: ignore[no-any-return]
    raise ValueError(f"the pod has no {TRAINER_CONTAINER!r} container")


def _grace(pod: Mapping[str, Any]) -> int:
    """The pod's termination grace period (Kubernetes' default of 30 s when unset)."""
    return int(pod.get("terminationGracePeriodSeconds", 30))


def _without_queue(labels: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (labels or {}).items() if k != LABEL_KUEUE_QUEUE}
