"""Pure builders of the Kubernetes objects a run needs, as plain manifests (dicts) ready for the API.

Every ``get_*`` function takes the parsed run (and batch), calls nothing and returns a complete object:
the I/O module creates them (create-or-leave-alone, by their deterministic names). Their docstrings say
*why* an object looks the way it does; the shape of each is pinned by expected-YAML tests.

Per run (:func:`run_objects`): a ServiceAccount, a Role and a RoleBinding that let the trainer patch only
this run's status (the last two only when it reports progress), and the volume claim when the run asks
for one. Per batch attempt (the ``train`` kind,
:mod:`continual_operator.workloads.train`, :func:`attempt_objects`): the Job running the trainer image,
with the trainer's config (its :class:`~continual_trainer.config.TrainerConfig`, rendered) in its pod
template's annotation ``continual.dev/trainer-config``, which a ``downwardAPI`` volume gives the container
as the file ``/etc/continual/trainer.yaml``: one object per attempt instead of two (no ConfigMap to
create, nor to delete with the Job). A config too large for an annotation
(:data:`INLINE_CONFIG_MAX_BYTES`) goes in a ConfigMap of the Job's name, mounted at the same path.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import yaml

from continual_operator.api import (
    API_VERSION,
    GROUP,
    RUN_INFO,
    ContinualTrainingRun,
    ContinualTrainingRunSpec,
    TrainingBatch,
)
from continual_operator.naming import (
    ANNOTATION_BATCH,
    ANNOTATION_CONFIG_SOURCE,
    ANNOTATION_NEXT_BATCHES,
    ANNOTATION_RUN,
    ANNOTATION_TRAINER_CONFIG,
    CONFIG_IN_POD_ANNOTATION,
    LABEL_ATTEMPT,
    LABEL_BATCH,
    LABEL_COMPONENT,
    LABEL_KIND,
    LABEL_KUEUE_QUEUE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_RUN,
    MANAGED_BY,
    batch_id,
    claim_name,
    job_name,
    label_value,
    trainer_account_name,
)
from continual_operator.workloads.views import TRAINER_CONTAINER
from continual_trainer.config import (
    BatchSpec,
    DataSpec,
    KubernetesProgressSpec,
    ObjectStoreClientSpec,
    ProgressSpec,
    TrainerConfig,
)

#: Where the run's volume is mounted in the trainer pod.
DATA_MOUNT = "/data"
#: Where the trainer's config file is mounted; the trainer is started with ``--config`` pointing into it.
CONFIG_MOUNT = "/etc/continual"
CONFIG_KEY = "trainer.yaml"
#: The API server refuses an object whose annotations total more than 256 KiB: a rendered config larger
#: than this (leaving room for the other annotations) goes in a ConfigMap instead of the pod template.
INLINE_CONFIG_MAX_BYTES = 192 * 1024
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: The non-root user of the trainer image.
TRAINER_UID = 1000
TRAINER_COMMAND = ("continual-trainer", "--config", f"{CONFIG_MOUNT}/{CONFIG_KEY}")
#: The workload kind of the objects built here (:mod:`continual_operator.workloads.train`).
TRAIN_KIND = "train"
#: Where the object store's CA bundle Secret is mounted (read-only); the file keeps the Secret key's name.
CA_BUNDLE_MOUNT = "/etc/continual/object-store-ca"


# -- paths --------------------------------------------------------------------------------------------
def run_dir(spec: ContinualTrainingRunSpec) -> str:
    """The run folder in the pod: the volume's mount point, plus ``storage.subPath`` when set."""
    sub_path = spec.storage.sub_path
    return posixpath.join(DATA_MOUNT, sub_path) if sub_path else DATA_MOUNT


def data_path(spec: ContinualTrainingRunSpec, path: str) -> str:
    """A batch's data path in the pod: relative paths are inside the run folder, absolute ones stay."""
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(run_dir(spec), path))


def base_model_path(spec: ContinualTrainingRunSpec) -> str | None:
    """The base model folder in the pod: relative paths are from the volume's root (models are shared)."""
    path = spec.base_model.path
    if path is None:
        return None
    return posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(DATA_MOUNT, path))


def volume_claim_name(run: ContinualTrainingRun) -> str:
    """The claim the trainer mounts: ``storage.existingClaim``, or the one made from the template."""
    return run.spec.storage.existing_claim or claim_name(run.metadata.name)


# -- metadata -----------------------------------------------------------------------------------------
def owner_reference(run: ContinualTrainingRun) -> dict[str, Any]:
    """Makes an object part of the run: the garbage collector deletes it when the run is deleted.

    ``controller: true`` marks the run as the one object that manages it; ``blockOwnerDeletion`` lets a
    foreground deletion of the run wait for its Jobs (and their checkpointing pods) to go first.
    """
    if run.metadata.uid is None:
        raise ValueError(f"run {run.metadata.name} has no uid: owner references need the object as stored")
    return {
        "apiVersion": API_VERSION,
        "kind": RUN_INFO.kind,
        "name": run.metadata.name,
        "uid": run.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def run_labels(run: ContinualTrainingRun, component: str) -> dict[str, str]:
    """Labels on everything made for a run: select a run's objects with ``continual.dev/run=<run>``."""
    return {
        LABEL_NAME: "continual-training",
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: label_value(run.metadata.name),
    }


def _metadata(run: ContinualTrainingRun, name: str, component: str, *, owned: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": run.metadata.namespace,
        "labels": run_labels(run, component),
        "annotations": {ANNOTATION_RUN: run.metadata.name},
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(run)]
    return meta


def attempt_labels(
    run: ContinualTrainingRun, batch: TrainingBatch, attempt: int, component: str
) -> dict[str, str]:
    """Run labels plus the workload kind, the batch and the attempt number."""
    return run_labels(run, component) | {
        LABEL_KIND: TRAIN_KIND,
        LABEL_BATCH: label_value(batch.metadata.name),
        LABEL_ATTEMPT: str(attempt),
    }


def job_labels(run: ContinualTrainingRun, batch: TrainingBatch, attempt: int) -> dict[str, str]:
    """Attempt labels, plus Kueue's queue label when the run names a queue."""
    labels = attempt_labels(run, batch, attempt, "trainer")
    if run.spec.scheduling.kueue_queue_name:
        labels[LABEL_KUEUE_QUEUE] = run.spec.scheduling.kueue_queue_name
    return labels


# -- per attempt: the trainer's config and its Job ----------------------------------------------------
def get_trainer_config(
    run: ContinualTrainingRun,
    batch: TrainingBatch,
    abandon_batches: Sequence[str] = (),
    next_batches: Sequence[TrainingBatch] = (),
) -> TrainerConfig:
    """The trainer contract for one batch of the run (coalesced: and ``next_batches`` after it, in the same
    process), with every path as the pod sees it.

    The batch id is the TrainingBatch's name (shortened with a hash beyond 63 characters), so the trainer's
    ledger has one record per TrainingBatch and a re-run of a finished batch is a no-op. Progress goes to
    stdout, ``status.json`` on the volume and, when enabled, this run's status.
    """
    spec = run.spec
    progress = spec.progress
    kubernetes = None
    if progress.enabled:
        kubernetes = KubernetesProgressSpec(
            namespace=run.metadata.namespace or "default",
            name=run.metadata.name,
            min_interval_seconds=progress.min_interval_seconds,
        )
    return TrainerConfig(
        run_name=run.metadata.name,
        run_namespace=run.metadata.namespace,
        run_uid=run.metadata.uid,
        run_dir=run_dir(spec),
        data_root=DATA_MOUNT,  # the trainer refuses data (and an on-volume model) outside the volume
        base_model=spec.base_model.to_trainer(path=base_model_path(spec)),
        lora=spec.lora,
        training=spec.training,
        batch=_batch_spec(spec, batch),
        next_batches=[_batch_spec(spec, b) for b in next_batches],
        progress=ProgressSpec(every_steps=progress.every_steps, kubernetes=kubernetes),
        object_store=object_store_client(spec),
        termination_message_path=TERMINATION_MESSAGE_PATH,
        abandon_batches=list(abandon_batches),
    )


def object_store_client(spec: ContinualTrainingRunSpec) -> ObjectStoreClientSpec | None:
    """The trainer's view of ``spec.objectStore``: where the store is, never the credentials.

    The credentials reach the pod as environment variables from the Secret (:func:`_object_store_env`),
    and the CA bundle as a mounted Secret file, whose path is what the trainer is told.
    """
    store = spec.object_store
    if store is None:
        return None
    ca = store.ca_bundle_secret_ref
    return ObjectStoreClientSpec(
        endpoint_url=store.endpoint_url,
        region=store.region,
        addressing_style=store.addressing_style,
        ca_bundle_path=posixpath.join(CA_BUNDLE_MOUNT, ca.key) if ca is not None else None,
    )


def _batch_spec(spec: ContinualTrainingRunSpec, batch: TrainingBatch) -> BatchSpec:
    return BatchSpec(id=batch_id(batch.metadata.name), data=_trainer_data(spec, batch))


def _trainer_data(spec: ContinualTrainingRunSpec, batch: TrainingBatch) -> DataSpec:
    """The batch's data as the pod sees it: a volume path made absolute, or the URI unchanged."""
    data = batch.spec.data
    path = data_path(spec, data.path) if data.path is not None else None
    return DataSpec(
        path=path, uri=data.uri, sha256=data.sha256, keep_cache=data.keep_cache, format=data.format
    )


_SAFE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def render_trainer_config(config: TrainerConfig) -> str:
    """The config as the trainer reads it: camelCase YAML (every field explicit, nulls left out)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    # libyaml's emitter where PyYAML has it (the same text, 4x faster: one per Job the operator makes).
    return yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False, width=110)


def attempt_objects(
    run: ContinualTrainingRun,
    batch: TrainingBatch,
    attempt: int,
    abandon_batches: Sequence[str] = (),
    next_batches: Sequence[TrainingBatch] = (),
) -> tuple[dict[str, Any], ...]:
    """An attempt's own objects, in the order they are created: its Job with the config in its pod
    template, or (a config too large for an annotation) its ConfigMap, then its Job mounting it."""
    config = render_trainer_config(get_trainer_config(run, batch, abandon_batches, next_batches))
    if fits_inline(config):
        return (get_job(run, batch, attempt, next_batches, config=config),)
    return (
        get_config_map(run, batch, attempt, abandon_batches, next_batches),
        get_job(run, batch, attempt, next_batches),
    )


def fits_inline(config: str) -> bool:
    """Whether a rendered config may travel in a pod annotation (:data:`INLINE_CONFIG_MAX_BYTES`)."""
    return len(config.encode()) <= INLINE_CONFIG_MAX_BYTES


def config_in_pod_annotation(job: Mapping[str, Any]) -> str | None:
    """The trainer config a Job manifest carries in its pod template (None: it mounts a ConfigMap)."""
    annotations = ((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations")
    return (annotations or {}).get(ANNOTATION_TRAINER_CONFIG)


def get_config_map(
    run: ContinualTrainingRun,
    batch: TrainingBatch,
    attempt: int,
    abandon_batches: Sequence[str] = (),
    next_batches: Sequence[TrainingBatch] = (),
) -> dict[str, Any]:
    """The trainer config of one attempt, named like its Job.

    Only for a config too large for the Job's pod annotation (:func:`attempt_objects`). One per attempt,
    and immutable: a Job's config never changes under it (a retry gets the spec as it is then; the trainer
    itself keeps a retried batch on the settings it started with), and the kubelet need not watch it.
    Owned by the run, so that a failed Job create leaves nothing behind once the run goes; the I/O module
    deletes it together with its Job.
    """
    name = job_name(run.metadata.name, batch.metadata.name, attempt)
    meta = _metadata(run, name, "trainer-config")
    meta["labels"] = attempt_labels(run, batch, attempt, "trainer-config")
    meta["annotations"][ANNOTATION_BATCH] = batch.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {
            CONFIG_KEY: render_trainer_config(get_trainer_config(run, batch, abandon_batches, next_batches))
        },
    }


def _env(run: ContinualTrainingRun) -> list[dict[str, Any]]:
    """The trainer's environment: writable caches under /tmp, offline hub for local models, the token.

    The user's ``spec.env`` comes last: with duplicate names the last one wins, so users can override.
    """
    spec = run.spec
    env: list[dict[str, Any]] = [
        # /tmp is the pod's own emptyDir, its only writable scratch (the root filesystem is read-only).
        {"name": "HOME", "value": "/tmp"},  # noqa: S108
        {"name": "HF_HOME", "value": "/tmp/hf"},  # noqa: S108
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if spec.base_model.path is not None:
        # The model is on the volume: never try the network (pods in GPU clusters often have none).
        env += [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "TRANSFORMERS_OFFLINE", "value": "1"}]
    if (ref := spec.base_model.token_secret_ref) is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env += _object_store_env(spec)
    env += [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env]
    return env


def _object_store_env(spec: ContinualTrainingRunSpec) -> list[dict[str, Any]]:
    """The object store's access keys from their Secret, as the standard AWS variables boto3 reads.

    Only references: the values never pass through the operator, the ConfigMap or the status. Without a
    credentialsSecretRef nothing is set, so IRSA or an instance role (the boto3 chain) works unchanged.
    """
    store = spec.object_store
    creds = store.credentials_secret_ref if store is not None else None
    if creds is None:
        return []
    keys = [
        ("AWS_ACCESS_KEY_ID", creds.access_key_id_key),
        ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key_key),
    ]
    if creds.session_token_key is not None:
        keys.append(("AWS_SESSION_TOKEN", creds.session_token_key))
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": creds.name, "key": key}}} for var, key in keys
    ]


def _ca_bundle_volume(spec: ContinualTrainingRunSpec) -> dict[str, Any] | None:
    store = spec.object_store
    ca = store.ca_bundle_secret_ref if store is not None else None
    if ca is None:
        return None
    # Only the one key, read-only for the trainer's user: a Secret with other keys exposes nothing else.
    items = [{"key": ca.key, "path": ca.key, "mode": 0o444}]
    return {"name": "object-store-ca", "secret": {"secretName": ca.name, "items": items}}


def _resources(spec: ContinualTrainingRunSpec) -> dict[str, Any]:
    """GPUs as a limit (extended resources need no request); memory request = limit; CPU request only."""
    res = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu is not None:
        requests["cpu"] = res.cpu
    if res.memory is not None:
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus > 0:
        limits[res.gpu_resource_name] = str(res.gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _container(run: ContinualTrainingRun, command: Sequence[str] = TRAINER_COMMAND) -> dict[str, Any]:
    spec = run.spec
    container: dict[str, Any] = {"name": TRAINER_CONTAINER, "image": spec.image}
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.image_pull_policy
    container |= {
        "command": list(command),
        "env": _env(run),
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_MOUNT},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own scratch (read-only root fs)
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The trainer writes its result record (BatchResult JSON) here; the operator reads it from the pod
        # status. Without one (a crash before the trainer could write it), the log tail is used instead.
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if _ca_bundle_volume(spec) is not None:
        container["volumeMounts"].append(
            {"name": "object-store-ca", "mountPath": CA_BUNDLE_MOUNT, "readOnly": True}
        )
    if spec.env_from:
        container["envFrom"] = [
            e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in spec.env_from
        ]
    return container


def _config_volume(config_map: str, inline: bool) -> dict[str, Any]:
    """The config file at ``CONFIG_MOUNT/CONFIG_KEY``: the pod's own annotation (``downwardAPI``), or the
    ConfigMap's key. The same path either way: the trainer reads one file."""
    if inline:
        field = f"metadata.annotations['{ANNOTATION_TRAINER_CONFIG}']"
        return {
            "name": "config",
            "downwardAPI": {"items": [{"path": CONFIG_KEY, "fieldRef": {"fieldPath": field}}]},
        }
    return {"name": "config", "configMap": {"name": config_map}}


def _pod_spec(
    run: ContinualTrainingRun,
    config_map: str,
    command: Sequence[str] = TRAINER_COMMAND,
    *,
    inline: bool = False,
) -> dict[str, Any]:
    spec = run.spec
    scheduling = spec.scheduling
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": trainer_account_name(run.metadata.name),
        # Credentials only when the trainer reports progress; then they can patch this run's status only.
        "automountServiceAccountToken": spec.progress.enabled,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            # A volume full of checkpoints is not chowned file by file at every pod start.
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(run, command)],
        "volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": volume_claim_name(run)}},
            _config_volume(config_map, inline),
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if (ca_volume := _ca_bundle_volume(spec)) is not None:
        pod["volumes"].append(ca_volume)
    if scheduling.node_selector:
        pod["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    if scheduling.affinity is not None:
        pod["affinity"] = scheduling.affinity
    if scheduling.priority_class_name is not None:
        pod["priorityClassName"] = scheduling.priority_class_name
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return pod


def get_job(
    run: ContinualTrainingRun,
    batch: TrainingBatch,
    attempt: int,
    next_batches: Sequence[TrainingBatch] = (),
    *,
    config: str | None = None,
) -> dict[str, Any]:
    """The Job that trains one attempt of one batch.

    ``backoffLimit: 0``: retries belong to the operator, which knows a preemption from a failure and backs
    off between attempts; a new attempt is a new Job (a new deterministic name). Owned by the run, so that
    deleting the run deletes its Jobs; labelled with run, batch and attempt so that the operator finds
    them, and annotated with the full names in case the labels had to be shortened. With a Kueue queue the
    Job is created suspended and Kueue admits it. A coalesced Job (``next_batches``) is named and labelled
    after its first batch and attempt, and lists the batches after it in an annotation. ``config``: the
    rendered trainer config, carried in the pod template (None: a ConfigMap of the Job's name holds it).
    """
    name = job_name(run.metadata.name, batch.metadata.name, attempt)
    labels = job_labels(run, batch, attempt)
    annotations = {ANNOTATION_RUN: run.metadata.name, ANNOTATION_BATCH: batch.metadata.name}
    if next_batches:
        annotations[ANNOTATION_NEXT_BATCHES] = ",".join(b.metadata.name for b in next_batches)
    return workload_job(run, JobParts(name, labels, annotations, TRAINER_COMMAND, config))


class JobParts(NamedTuple):
    """What differs between the Jobs of workload kinds: the name, labels, annotations and command line,
    and the rendered trainer config when the pod template carries it (None: a ConfigMap of its name)."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    command: Sequence[str]
    config: str | None = None


def workload_job(run: ContinualTrainingRun, parts: JobParts) -> dict[str, Any]:
    """A Job running the trainer image for the run: the pod of :func:`get_job`, with the kind's command
    (every kind mounts the volume and its config -- from its pod annotation, or its ConfigMap of the same
    name -- and gets the same environment)."""
    inline = parts.config is not None
    # Copies: the I/O layer may add to either without the other changing (and YAML has no anchors).
    pod_annotations = dict(parts.annotations)
    job_annotations = dict(parts.annotations)
    if parts.config is not None:
        # The config on the pod template only (the pods read it), a short marker on the Job (the operator's
        # view keeps Job metadata, never the template: it knows there is no ConfigMap to delete).
        pod_annotations[ANNOTATION_TRAINER_CONFIG] = parts.config
        job_annotations[ANNOTATION_CONFIG_SOURCE] = CONFIG_IN_POD_ANNOTATION
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": {"labels": dict(parts.labels), "annotations": pod_annotations},
            "spec": _pod_spec(run, parts.name, parts.command, inline=inline),
        },
    }
    if run.spec.scheduling.kueue_queue_name:
        job_spec["suspend"] = True
    meta = _metadata(run, parts.name, "trainer")
    meta["labels"] = dict(parts.labels)
    meta["annotations"] = job_annotations
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def workload_config_map(
    run: ContinualTrainingRun, name: str, labels: dict[str, str], config: TrainerConfig
) -> dict[str, Any]:
    """The ConfigMap holding a workload's trainer config (immutable, named like its Job)."""
    meta = _metadata(run, name, "trainer-config")
    meta["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {CONFIG_KEY: render_trainer_config(config)},
    }


# -- per run: identity and storage --------------------------------------------------------------------
def run_objects(run: ContinualTrainingRun) -> list[dict[str, Any]]:
    """The per-run objects every workload's pod needs: the ServiceAccount, its Role and RoleBinding when
    the trainer reports progress, and (from the template) the volume claim. Created with the first
    workload, create-or-leave-alone.

    With ``spec.progress.enabled`` false no pod is given the ServiceAccount's token, so a Role would
    grant nothing to anyone: none is made (two writes fewer before a run's first Job). Enabling progress
    later is a spec change; the next workload brings them.
    """
    manifests = [get_service_account(run)]
    if run.spec.progress.enabled:
        manifests += [get_role(run), get_role_binding(run)]
    if (claim := get_claim(run)) is not None:
        manifests.append(claim)
    return manifests


def get_service_account(run: ContinualTrainingRun) -> dict[str, Any]:
    """The trainer pods' identity, one per run so that its Role can name exactly one object.

    No token is mounted by default: only the trainer pod asks for one, and only when it reports progress.
    """
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(run, trainer_account_name(run.metadata.name), "trainer"),
        "automountServiceAccountToken": False,
    }


def get_role(run: ContinualTrainingRun) -> dict[str, Any]:
    """Allows ``get`` and ``patch`` on this run's status subresource, and nothing else.

    ``resourceNames`` pins it to this one object: a trainer (or anything that steals its token) cannot
    touch other runs, the spec, or any other resource.
    """
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(run, trainer_account_name(run.metadata.name), "trainer"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{RUN_INFO.plural}/status"],
                "resourceNames": [run.metadata.name],
                "verbs": ["get", "patch"],
            }
        ],
    }


def get_role_binding(run: ContinualTrainingRun) -> dict[str, Any]:
    """Grants the run's Role to the run's ServiceAccount."""
    name = trainer_account_name(run.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(run, name, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": run.metadata.namespace}],
    }


def get_claim(run: ContinualTrainingRun) -> dict[str, Any] | None:
    """The PersistentVolumeClaim from ``storage.claimTemplate`` (None when the run uses an existing claim).

    The garbage collector deletes whatever has an owner reference to a deleted object. The claim holds the
    run's checkpoints, which are worth more than the run object, so it gets an owner reference only when
    the user set ``retainOnDelete: false``; a retained claim keeps its deterministic name, and a run
    re-created under the same name mounts it again and continues from its checkpoints.
    """
    storage = run.spec.storage
    template = storage.claim_template
    if template is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": list(template.access_modes),
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": template.size}},
    }
    if template.storage_class_name is not None:
        claim_spec["storageClassName"] = template.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            run, claim_name(run.metadata.name), "storage", owned=not storage.retain_on_delete
        ),
        "spec": claim_spec,
    }
